"""Progress bars, drawn with rich, in one place: `ProgressBar` for long library calls that report through a
`progress(done, total, name)` callback (the synthetic-data generator, `mambava.synth.generate` and
`generate_stills`); `track_items` for a loop over items; `rate_progress` for stages that count frames.

    with ProgressBar("generate", enabled=not quiet) as progress:   # progress is None when disabled
        generate(out, cfg, progress=progress)

It lives in the library, not in `cli/`, so that library code (the demo) and the commands share it without the
library importing a command module.
"""

from __future__ import annotations

from typing import Any, Iterable


class ProgressBar:
    """A rich progress bar (description, bar, done/total, elapsed time, the last item's name) fed by
    progress(done, total, name) calls. As a context manager it yields itself, the callback, or None when
    disabled, so that the callee skips its reporting altogether. `console`: a rich Console (rich's default,
    stdout, when None)."""

    def __init__(self, description: str, enabled: bool = True, console: Any = None):
        self.description = description
        self.enabled = enabled
        self.console = console
        self.bar = None
        self.task = None

    def __enter__(self) -> "ProgressBar | None":
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[name]}"),
            transient=False,
            console=self.console,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(self.description, total=None, name="")
        return self

    def __call__(self, done: int, total: int, name: str) -> None:
        self.bar.update(self.task, completed=done, total=total, name=name)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def track_items(items: Iterable, description: str, total: int | None = None, enabled: bool = True) -> Iterable:
    """`items`, with a transient rich bar on stderr while they are consumed (none when not `enabled`): for loops
    over videos or frames whose results go elsewhere (stdout stays clean for tables and CSV)."""
    if not enabled:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description=description, transient=True, console=Console(stderr=True))


def rate_progress(enabled: bool = True, unit: str = "frames"):
    """A rich Progress on stderr with a units-per-second column (for the stages that count frames: extraction,
    the faces stage), disabled (drawing nothing, still accepting tasks and updates) when not `enabled`. Use it as
    a context manager; `add_task`, `advance`, `update` as rich's."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:6.1f} {unit}/s" if task.speed else f"   ... {unit}/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
