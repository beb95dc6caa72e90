"""Audio-stage throughput: per-frame audio features in seconds of video per second, against decoding alone.

    mambava bench audio                                   # the real clips in tests/data/media, this CPU
    mambava bench audio --video talk.mp4 --repeats 5 --speech-model wav2vec2_folder/

Per clip it times `decode` (PyAV decode of the sound, resampled to 16 kHz mono: the baseline), then the whole
per-frame path as `frame_features` runs it (decode, the frame grid from the demuxed video packets, the features,
pooling onto the video's frames, the mask) for each feature set alone and for egemaps+logmel, the
default of `mambava extract --audio`; `ssl` with --speech-model. Each figure is the best of `repeats` passes
after one warm-up (openSMILE's and torch's first-call costs are not counted); ratios are against `decode` of the
same clip in the same run. The rate is seconds of video per second of wall time (×N real time).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from mambava.audio import AudioWarning, SpeechModel, decode_audio, frame_features, frame_grid
from mambava.benchmarks import cpu_name, load_average

DEFAULT_MEDIA = Path(__file__).resolve().parents[3] / "tests" / "data" / "media"
DEFAULT_CLIPS = ("single_face.mp4", "face_noface.mov", "no_face.mp4")  # MP3, AAC starting late, AAC


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_clip(path: Path, repeats: int = 3, speech_model: SpeechModel | None = None) -> dict:
    grid = frame_grid(path)
    seconds = float(grid.edges[-1] - grid.edges[0])
    variants = {"decode": lambda: decode_audio(path)}
    for sets in ("logmel", "egemaps", "egemaps+logmel") + (("ssl",) if speech_model is not None else ()):
        variants[sets] = lambda sets=sets: frame_features(path, sets.split("+"), speech_model=speech_model)
    load_before = load_average()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioWarning)  # face_noface.mov's late sound: measured, not reported
        times = {name: _best(fn, repeats) for name, fn in variants.items()}
    rates = {name: seconds / t for name, t in times.items()}
    track = decode_audio(path)
    return {
        "clip": path.name,
        "codec": track.codec if track is not None else "none",
        "frames": grid.n_frames,
        "seconds_of_video": seconds,
        "load_average": (load_before, load_average()),
        "realtime": rates,
        "ratio_vs_decode": {k: v / rates["decode"] for k, v in rates.items()},
    }


def run(videos: list[Path] | None = None, repeats: int = 3, speech_model: SpeechModel | None = None) -> list[dict]:
    videos = videos or [DEFAULT_MEDIA / name for name in DEFAULT_CLIPS]
    return [bench_clip(Path(v), repeats, speech_model) for v in videos]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="mambava bench audio", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video", action="append", type=Path, help="Clip(s) to time (default: the real clips in tests/data/media)."
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speech-model", type=Path, help="A local wav2vec 2.0 / HuBERT folder: adds the ssl row.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for log-mel and ssl (default 1: "
        "on a shared 2-vCPU machine a second thread stalls more than it helps).",
    )
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = SpeechModel(args.speech_model) if args.speech_model else None
    results = run(args.video, args.repeats, model)
    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s); rates in seconds of video per "
        f"second (x real time), best of {args.repeats}"
    )
    for r in results:
        print(
            f"{r['clip']} ({r['codec']}, {r['frames']} frames, {r['seconds_of_video']:.2f} s; load average "
            f"{r['load_average'][0]} → {r['load_average'][1]})"
        )
        for name, rate in r["realtime"].items():
            print(f"  {name:<16} {rate:9.1f} x real time   ×{r['ratio_vs_decode'][name]:.3f} of decode")
    return results


if __name__ == "__main__":
    main()
