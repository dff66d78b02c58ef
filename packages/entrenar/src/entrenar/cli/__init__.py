"""The `entrenar` command line (click).

Each command lives in its own module in this package and is listed in `_COMMANDS`. User errors
(`aprender.errors.AprenderError`, which `EntrenarError` extends) print ``error: ...`` on stderr, one
line per problem (a config can have several), and exit with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys

import click

from aprender.errors import AprenderError
from entrenar import __version__
from entrenar.cli.distill_cache import distill_cache_command
from entrenar.cli.extract_lora import extract_lora_command
from entrenar.cli.generate import generate_command
from entrenar.cli.info import info_command
from entrenar.cli.init import init
from entrenar.cli.merge import merge_command
from entrenar.cli.monitor import monitor_command
from entrenar.cli.prune import prune_command
from entrenar.cli.publish import publish_command, push_command
from entrenar.cli.quantize import quantize_command
from entrenar.cli.train import train_command
from entrenar.cli.validate import validate_command

USER_ERROR_EXIT_CODE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="entrenar")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune a model on your data and publish it to the Hugging Face Hub."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


_COMMANDS: list[click.Command] = [
    init,
    generate_command,
    publish_command,
    push_command,
    train_command,
    validate_command,
    info_command,
    extract_lora_command,
    merge_command,
    distill_cache_command,
    prune_command,
    quantize_command,
    monitor_command,
]
for _command in _COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning user errors into ``error:`` lines and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="entrenar", standalone_mode=False, obj={})
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(USER_ERROR_EXIT_CODE)
    except AprenderError as exc:
        if debug:
            raise
        for line in str(exc).splitlines() or [""]:
            click.echo(f"error: {line}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
