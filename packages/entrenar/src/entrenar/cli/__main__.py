"""`python -m entrenar.cli ...` runs the same CLI as the `entrenar` console script."""

from entrenar.cli import main

main()
