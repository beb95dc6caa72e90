"""The `mambava` command line. Each stage keeps its commands in its own module here and exposes
`register(app)`; this file only assembles them and turns a MambavaError, or an OSError that escaped a stage
(an output folder that cannot be created, a file that cannot be read), into a one-line message, exit code 2;
the output folders a failed command made and left empty are removed (`mambava.core.fileio.tidy_folders`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from mambava.core.errors import MambavaError
from mambava.core.errors import error_line as error_line  # (the commands import it from here)
from mambava.core.fileio import tidy_folders

app = typer.Typer(
    name="mambava",
    help="Per-frame valence/arousal from face videos (Mamba-VA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Per-frame valence/arousal from face videos (Mamba-VA)."""


# One module per stage; a stage whose module is not there yet is simply absent from the CLI.
_COMMAND_MODULES = ["demo", "data", "faces", "backbone", "train", "predict", "bench", "analysis", "serve"]


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        module_name = f"mambava.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(app)


_register_all()


@app.command()
def version() -> None:
    """Print the mambava version."""
    from mambava import __version__

    typer.echo(__version__)


def main() -> None:
    try:
        with tidy_folders():  # a failed command leaves no empty output folder behind
            app()
    except (MambavaError, OSError) as error:
        typer.secho(f"error: {error_line(error)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
