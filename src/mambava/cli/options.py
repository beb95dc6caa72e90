"""Command-line options that several commands share, spelled once.

`--precision` has one vocabulary in every command: `auto` (bf16 where the hardware runs it fast: CUDA with bf16,
a CPU with AMX or AVX-512 BF16; else fp32), `bf16` or `fp32`. The commands that train or evaluate on Lightning
map it to Lightning's strings inside (`lightning_precision`: fp32 -> "32", bf16 -> "bf16-mixed"). The older
spellings stay accepted as aliases (`32`, `32-true`, `bf16-mixed`), and `16-mixed` (fp16 mixed precision on a
GPU, which has no short name) where Lightning runs the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambava.core.errors import MambavaError

PRECISIONS = ("auto", "bf16", "fp32")
PRECISION_ALIASES = {"32": "fp32", "32-true": "fp32", "bf16-mixed": "bf16"}
LIGHTNING_ONLY = ("16-mixed",)
_LIGHTNING = {"fp32": "32", "bf16": "bf16-mixed"}
_AUTO_HELP = "auto (bf16 where fast: CUDA, CPU AMX/AVX512-BF16, else fp32), bf16 or fp32"


def canonical_precision(value: Optional[str], lightning: bool = False) -> Optional[str]:
    """auto, bf16 or fp32 for a --precision value (an old spelling is mapped; `16-mixed` kept where `lightning`);
    None stays None (the config's own value). MambavaError naming the accepted values otherwise."""
    if value is None:
        return None
    key = value.strip().lower()
    key = PRECISION_ALIASES.get(key, key)
    if key in PRECISIONS or (lightning and key in LIGHTNING_ONLY):
        return key
    accepted = PRECISIONS + tuple(PRECISION_ALIASES) + (LIGHTNING_ONLY if lightning else ())
    raise MambavaError(f"--precision {value!r}: expected one of {', '.join(accepted)}")


def lightning_precision(value: Optional[str], device: str = "auto") -> Optional[str]:
    """Lightning's string for a --precision value: fp32 -> "32", bf16 -> "bf16-mixed", auto -> "bf16-mixed" where
    bf16 runs fast on `device` (a torch device name, "auto", or a Lightning accelerator: cpu, gpu, cuda), else "32";
    `16-mixed` as is; None stays None."""
    key = canonical_precision(value, lightning=True)
    if key is None or key in LIGHTNING_ONLY:
        return key
    if key == "auto":
        from mambava.backbone import bf16_supported
        from mambava.core.runtime import resolve_device

        device = {"gpu": "cuda"}.get(device, device)  # Lightning's accelerator name for CUDA
        key = "bf16" if bf16_supported(resolve_device(device)) else "fp32"
    return _LIGHTNING[key]


def _check(lightning: bool):
    def callback(value: Optional[str]) -> Optional[str]:
        return canonical_precision(value, lightning)

    return callback


def precision_option(default: Optional[str], lightning: bool = False, what: str = "") -> typer.Option:
    """The --precision option: `default` in the one vocabulary (None: the config's value); `lightning` also
    accepts 16-mixed. The command receives auto, bf16, fp32 (or 16-mixed) whatever spelling was typed."""
    old = "32, bf16-mixed" + (", 16-mixed on a GPU" if lightning else "")
    return typer.Option(
        default, "--precision", callback=_check(lightning), help=f"{what}{_AUTO_HELP} (also accepted: {old})."
    )


def landmarks_option() -> typer.Option:
    """--landmarks FILE: a learned landmark refiner for the detector's 5 points (`mambava train-landmarks`)."""
    return typer.Option(
        None,
        "--landmarks",
        help="A landmark refiner (mambava train-landmarks) that moves the "
        "detector's 5 points: the one the model's training crops were "
        "made with (mambava faces --dataset --landmarks).",
    )


def landmark_source(landmarks: Optional[Path]) -> str | None:
    """`--landmarks` as PredictConfig takes it: a registered source's name or a refiner file's path."""
    return None if landmarks is None else str(landmarks)


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
