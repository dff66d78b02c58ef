"""The `entrenar` command line (click).

User errors (`aprender.errors.AprenderError`, which `EntrenarError` extends) print one line and exit
with code 2; `--debug` re-raises them with the traceback.
"""

from __future__ import annotations

import click

from entrenar import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="entrenar")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune a model on your data and publish it to the Hugging Face Hub."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    """Console-script entry point."""
    cli(obj={})
