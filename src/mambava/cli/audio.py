"""`mambava extract --audio`: a video's sound as per-frame features in a feature store (the options live on
`mambava extract` in cli/backbone.py; this module runs them)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

FEATURES_HELP = (
    "With --audio: feature sets, comma-separated, concatenated in this order: egemaps (25 eGeMAPS "
    "descriptors, opensmile), logmel (64 log-mel energies), ssl (a local speech model, --speech-model)."
)
SPEECH_MODEL_HELP = (
    "With --audio: a local wav2vec 2.0 / HuBERT / WavLM folder in Hugging Face format (needs the "
    "transformers package; nothing is downloaded); adds the ssl feature set."
)


def extract_audio_command(
    source: Path,
    out: Path,
    features: str,
    speech_model: Optional[Path],
    speech_layer: Optional[int],
    dtype: str,
    video: Optional[List[str]],
    overwrite: bool,
    device: str,
    workers: Optional[int],
    ray=None,
) -> None:
    from rich.console import Console

    from mambava.audio import SpeechModel, check_sets, extract_audio
    from mambava.core.progress import ProgressBar
    from mambava.core.runtime import resolve_device

    # with --engine ray the speech model runs in the tasks, on their CPUs
    where = "cpu" if ray is not None else str(resolve_device(device))
    model = SpeechModel(speech_model, speech_layer, where) if speech_model else None
    sets = check_sets(features, model)
    console = Console(stderr=True, soft_wrap=True)  # paths stay whole, to copy

    def on_error(message: str) -> None:
        console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)

    def on_warning(message: str) -> None:
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    if ray is not None:
        from mambava.distributed import extract_audio_ray

        summary, run = extract_audio_ray(
            source,
            out,
            sets,
            speech_model=model,
            dtype=dtype,
            names=video or None,
            overwrite=overwrite,
            on_error=on_error,
            on_warning=on_warning,
            options=ray,
            console=console,
        )
        _report(summary, out, sets, dtype)
        console.print(run.describe(), markup=False, highlight=False)
        if summary.failed:
            typer.secho(f"{len(summary.failed)} of {len(summary.entries)} videos failed", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        return
    with ProgressBar("extract audio", console=console) as progress:
        summary = extract_audio(
            source,
            out,
            sets,
            speech_model=model,
            dtype=dtype,
            names=video or None,
            overwrite=overwrite,
            workers=workers or 0,
            progress=progress,
            on_error=on_error,
            on_warning=on_warning,
        )
    _report(summary, out, sets, dtype)
    if summary.failed:
        typer.secho(f"{len(summary.failed)} of {len(summary.entries)} videos failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


def _report(summary, out: Path, sets, dtype: str) -> None:
    without = f", {len(summary.without_sound)} without sound (masked)" if summary.without_sound else ""
    done = (
        f" ({summary.frames} frames, {summary.seconds_of_video:.1f} s of video at {summary.realtime_factor:.1f}x "
        f"real time{without})"
        if summary.videos
        else ""
    )
    typer.echo(
        f"{len(summary.extracted)} entries from {summary.videos} video(s) extracted{done}, "
        f"{len(summary.skipped)} already in {out}; audio features {'+'.join(sets)} {dtype}"
    )
