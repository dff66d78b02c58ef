"""The `entrenar` command-line entry point."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import entrenar
from entrenar.cli import cli


def test_version_flag_prints_package_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"entrenar, version {entrenar.__version__}"


def test_console_script_runs_help() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from entrenar.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Fine-tune a model on your data" in out.stdout
