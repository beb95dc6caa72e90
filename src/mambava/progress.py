"""Progress bars for long library calls that report through a `progress(done, total, name)` callback (the
synthetic-data generator, `mambava.synth.generate` and `generate_stills`), drawn with rich.

    with ProgressBar("generate", enabled=not quiet) as progress:   # progress is None when disabled
        generate(out, cfg, progress=progress)

It lives in the library, not in `cli/`, so that library code (the demo) and the commands share it without the
library importing a command module.
"""

from __future__ import annotations

from typing import Any


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

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[name]}"), transient=False, console=self.console)
        self.bar.__enter__()
        self.task = self.bar.add_task(self.description, total=None, name="")
        return self

    def __call__(self, done: int, total: int, name: str) -> None:
        self.bar.update(self.task, completed=done, total=total, name=name)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
