"""The library's progress bar (`mambava.core.progress`), fed by progress(done, total, name) callbacks."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from mambava.core.progress import ProgressBar


def test_disabled_progress_bar_gives_no_callback():
    with ProgressBar("generate", enabled=False) as progress:
        assert progress is None


def test_progress_bar_shows_the_counts_and_the_last_name():
    out = StringIO()
    with ProgressBar("synth", console=Console(file=out, width=100, force_terminal=False)) as progress:
        progress(0, 3, "")
        progress(2, 3, "12-30-256x192")
        task = progress.bar.tasks[0]
        assert (task.description, task.completed, task.total, task.fields["name"]) == ("synth", 2, 3, "12-30-256x192")
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("synth") and "2/3" in last and last.endswith("12-30-256x192")
