"""`mambava bench NAME [OPTIONS]`: run the benchmark module mambava/benchmarks/NAME.py (its `main(argv)`).

Any module in mambava.benchmarks with a `main(argv)` function is a benchmark; `mambava bench` lists them and
`mambava bench NAME --help` shows a benchmark's own options.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from mambava.core.errors import MambavaError


def available() -> dict[str, str]:
    """Benchmark name -> first line of its docstring."""
    import mambava.benchmarks as package

    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mambava.benchmarks.{info.name}")
        if callable(getattr(module, "main", None)):
            found[info.name] = ((module.__doc__ or "").strip().splitlines() or [""])[0]
    return found


def run(name: str, argv: list[str]) -> int:
    benchmarks = available()
    if name not in benchmarks:
        raise MambavaError(f"no benchmark named {name!r}; available: {', '.join(benchmarks) or 'none'}")
    result = importlib.import_module(f"mambava.benchmarks.{name}").main(list(argv))
    # a benchmark's main may return its results (a dict or list, for Python callers) instead of an exit code
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def register(app: typer.Typer) -> None:
    @app.command(
        "bench",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )
    def bench(
        ctx: typer.Context,
        name: str = typer.Argument(None, help="benchmark to run; none: list them"),
    ) -> None:
        """Run a benchmark (mambava/benchmarks/NAME.py); `mambava bench` lists them, NAME --help its options."""
        if name in (None, "--help", "-h", "list", "--list"):
            typer.echo("usage: mambava bench NAME [OPTIONS]   (NAME --help for a benchmark's options)\n")
            typer.echo("benchmarks:")
            for bench_name, summary in available().items():
                typer.echo(f"  {bench_name:<12} {summary}")
            return
        code = run(name, ctx.args)
        if code:
            raise typer.Exit(code)
