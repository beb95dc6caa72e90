"""One file format for every set of weights mambava writes, and one report of what a load found.

A mambava checkpoint is a safetensors file (tensors only: nothing in it can run code) whose metadata holds

    format          "<name>/<version>", e.g. "mambava.temporal/1", "mambava.vit_encoder/1"
    config          the JSON of the config that rebuilds the module
    weights_sha256  a hash of the tensors' bytes in state-dict order: which weights these are, wherever the file
                    lies (a file retrained in place is other weights)
    ...             a format's own keys (a temporal model's `kind`)

Written atomically (temporary file, fsync, rename), so a crash never leaves half a checkpoint. Pickled torch
files (a run's Lightning `.ckpt`, the authors' `.pth`, MAE's and timm's `.pth`) are read by `load_torch_file`
alone, with `weights_only=True`: tensors, containers and numbers, never code. Files written
before this module used the tags in `LEGACY_TAGS` and no hash; they read as version 1. Every reader goes
through `load_checkpoint`, so a foreign, truncated or mislabelled file is the same one-line `CheckpointError`
everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mambava.core.errors import MambavaError, torch_load_reason
from mambava.core.fileio import atomic_path

# Tags of files written before one module wrote them all: tag -> (format name, version).
LEGACY_TAGS = {
    "mambava.vit_encoder": ("mambava.vit_encoder", 1),
    "mambava-landmark-refiner": ("mambava.landmark_refiner", 1),
}
HEADER_LIMIT = 100_000_000  # safetensors' own bound on the JSON header


class CheckpointError(MambavaError):
    """A checkpoint file that cannot be used: missing, foreign, truncated, or of another format. `reason` is
    the cause alone (without the path), for messages that add their own advice."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


@dataclass
class Checkpoint:
    """A loaded checkpoint. `format` and `version` are None for an untagged safetensors file (timm's, Hugging
    Face's, MTCNN's shipped weights); `config` is the decoded config (None when the file has none)."""

    path: Path
    format: str | None
    version: int | None
    config: dict | None
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]


@dataclass
class LoadReport:
    """What loading weights into a module found, by key name: keys the module wanted and the file lacked
    (`missing`), the reverse (`unexpected`), keys left out on purpose (`dropped`: an MAE decoder, the
    reference's duplicate `TemporalBlock.net.*` entries) and notes on conversions."""

    path: str = ""
    format: str = ""
    config: Any = None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing keys: " + name_list(self.missing))
        if self.unexpected:
            parts.append("unexpected keys: " + name_list(self.unexpected))
        return "; ".join(parts) or "all keys matched"

    def summary(self) -> str:
        """One line: the file, its format, the notes, and every key left out or unmatched (by name)."""
        described = getattr(self.config, "describe", None)
        config = described() if callable(described) else self.config
        parts = [f"{self.path}: {self.format} checkpoint" + (f", {config}" if config is not None else "")]
        parts += self.notes
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} keys not part of the model ({name_list(self.dropped)})")
        if not self.ok:
            parts.append(str(self))
        return "; ".join(parts)


def name_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def weights_sha256(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in the order given (a state dict's values)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(
            tensor.detach().cpu().contiguous().numpy().tobytes()
            if tensor.dtype != torch.bfloat16
            else tensor.detach().cpu().contiguous().view(torch.int16).numpy().tobytes()
        )
    return digest.hexdigest()


def format_tag(name: str, version: int = 1) -> str:
    return f"{name}/{version}"


def parse_tag(tag: str | None) -> tuple[str | None, int | None]:
    """(format name, version) of a metadata `format` value; (None, None) for a file without one."""
    if not tag:
        return None, None
    if tag in LEGACY_TAGS:
        return LEGACY_TAGS[tag]
    name, _, version = tag.rpartition("/")
    if name and version.isdigit():
        return name, int(version)
    return tag, None


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when the file starts like safetensors (an 8-byte header length, then the JSON header)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len < HEADER_LIMIT


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    format: str,
    config: Mapping,
    version: int = 1,
    **extra: str,
) -> Path:
    """Write `tensors` with the format tag, the config (JSON) and the weights' hash, atomically.

    Args:
        path: the file to write (its folder must exist).
        tensors: a state dict; tensors are detached and made contiguous.
        format: the format's name, e.g. "mambava.temporal".
        config: what rebuilds the module, JSON-serialisable.
        version: the format's version.
        **extra: more metadata strings (a temporal model's `kind`).

    Returns:
        The path written.
    """
    path = Path(path)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": format_tag(format, version),
        "config": json.dumps(dict(config)),
        "weights_sha256": weights_sha256(tensors.values()),
        **extra,
    }

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file without reading its tensors (CheckpointError if it is none)."""
    path = _existing(path)

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for a foreign or truncated file
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None


def load_checkpoint(
    path: str | os.PathLike, format: str | None = None, device: str | torch.device = "cpu", what: str | None = None
) -> Checkpoint:
    """Read a checkpoint (tensors, metadata, config).

    Args:
        path: a safetensors file.
        format: the format name the caller needs; a file of another (or no) format is a CheckpointError
            saying what it is instead. None accepts any safetensors file.
        device: where the tensors go.
        what: how the error names the expected file ("a landmark refiner (made by `mambava train-landmarks`)").

    Returns:
        The Checkpoint.
    """
    path = _existing(path)

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
    name, version = parse_tag(metadata.get("format"))
    if format is not None and name != format:
        found = f"a {name} file" if name else "a safetensors file without a mambava format tag"
        raise CheckpointError(f"{path}: {found}, not {what or 'a ' + format + ' checkpoint'}")
    config = None
    if "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except ValueError as error:
            raise CheckpointError(f"{path}: bad config in the checkpoint metadata ({error})") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: bad config in the checkpoint metadata (not a JSON object)")
    elif format is not None:
        raise CheckpointError(f"{path}: a {name} file without its config")
    return Checkpoint(path, name, version, config, metadata, tensors)


def load_torch_file(
    path: str | os.PathLike, map_location="cpu", what: str = "a PyTorch weights file", mmap: bool = False
) -> Any:
    """A pickled torch file loaded with `weights_only=True` (tensors, containers, numbers: never code).

    Args:
        path: the file.
        map_location: where tensors go.
        what: how the error names what the file should have been.
        mmap: memory-map the tensors (zip files only; a legacy file is read whole).

    Returns:
        The loaded object; CheckpointError (one line, without torch's advice to load unsafely) otherwise.
    """
    path = _existing(path)
    try:
        try:
            return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not mmap or "mmap" not in str(error):
                raise
            return torch.load(str(path), map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # a bad pickle, a truncated zip (RuntimeError), a foreign global (UnpicklingError)
        reason = torch_load_reason(error)
        raise CheckpointError(f"{path}: cannot be read as {what} ({reason})", reason) from None


def load_lightning_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A run's Lightning checkpoint (`.ckpt`) as a dict, read with `weights_only=True` (Lightning's own loader
    is never asked: a planted last.ckpt must not run its pickled code)."""
    checkpoint = load_torch_file(path, map_location, what="a training checkpoint")
    if not isinstance(checkpoint, dict):
        reason = f"holds a {type(checkpoint).__name__}, not a checkpoint dict"
        raise CheckpointError(f"{path}: cannot be read as a training checkpoint ({reason})", reason)
    return checkpoint


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
