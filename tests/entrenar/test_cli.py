"""The `entrenar` command-line entry point: version, help, and how user errors surface."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

import entrenar
from entrenar import cli as cli_module
from entrenar.errors import EntrenarError


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from entrenar.cli import main; main()", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_version_flag_prints_package_version() -> None:
    out = _run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"entrenar, version {entrenar.__version__}"


def test_help_describes_the_tool() -> None:
    out = _run("--help")
    assert out.returncode == 0
    assert "Fine-tune a model on your data" in out.stdout


def test_importing_the_cli_does_not_load_torch() -> None:
    # `entrenar --help` (and every command's options) must not wait on torch's ~1.5 s import: the heavy
    # modules load inside the commands that need them.
    probe = "import sys, entrenar.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert _run("publish", "--help").returncode == 0


def test_unknown_command_is_a_usage_error_with_exit_2() -> None:
    out = _run("no-such-command")
    assert out.returncode == 2
    assert "No such command" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def failing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("explode")
    def explode() -> None:
        raise EntrenarError("config.yaml: lora.rnak: unknown key; did you mean rank?")

    @click.command("interrupt")
    def interrupt() -> None:
        raise click.exceptions.Abort()

    monkeypatch.setitem(cli_module.cli.commands, "explode", explode)
    monkeypatch.setitem(cli_module.cli.commands, "interrupt", interrupt)


@pytest.mark.usefixtures("failing_command")
def test_user_error_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_module.main(["explode"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: config.yaml: lora.rnak: unknown key; did you mean rank?\n"


@pytest.mark.usefixtures("failing_command")
def test_debug_flag_reraises_with_traceback() -> None:
    with pytest.raises(EntrenarError, match=r"lora\.rnak"):
        cli_module.main(["--debug", "explode"])


@pytest.mark.usefixtures("failing_command")
def test_abort_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_module.main(["interrupt"])
    assert exc.value.code == 130
    assert capsys.readouterr().err == "Aborted.\n"


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "entrenar.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"entrenar, version {entrenar.__version__}"
