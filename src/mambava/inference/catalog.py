"""Local model names: checkpoints (temporal models and backbones) kept in a user cache folder under a name,
with their SHA-256 and what they were trained on, so that `predict -c NAME -b NAME` finds them. Nothing is
ever downloaded: a name only exists after `mambava models add NAME FILE`, except the built-in ones (`BUILTIN`),
which need no file:

- `expression-va` (temporal): the FER2013 expressions mapped onto the circumplex and smoothed
  (`mambava.temporal.expression_va`); what predict, stream and serve use without --checkpoint. Not Mamba-VA.
- `expression` (backbone): the expression net's features (`mambava.faces.expression`), shipped with the package.

The folder is `$MAMBAVA_HOME/models` when MAMBAVA_HOME is set, else the platform's user cache folder:
`$XDG_CACHE_HOME/mambava` or `~/.cache/mambava` (Linux), `~/Library/Caches/mambava` (macOS),
`%LOCALAPPDATA%\\mambava\\Cache` (Windows). `index.json` there maps each name to its file (a copy, named
`<name><suffix>`), kind (`temporal` or `backbone`), `sha256`, `size`, `trained_on`, `source` (the path it was
added from) and `added` (UTC). A file whose hash no longer matches the index is an error, not a silent load.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from mambava.backbone import load_encoder
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, atomic_path
from mambava.faces.expression import ExpressionRecognizer
from mambava.temporal import load_temporal_model
from mambava.temporal.expression_va import MODEL_NAME as EXPRESSION_VA
from mambava.temporal.expression_va import ExpressionVA

KINDS = ("temporal", "backbone")
# Names that need no file: {name: kind} (see the module doc).
BUILTIN = {EXPRESSION_VA: "temporal", "expression": "backbone"}
DEFAULT_MODEL = EXPRESSION_VA  # the temporal model of predict, stream and serve without --checkpoint
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def home() -> Path:
    """The mambava user folder (see the module doc)."""
    if os.environ.get("MAMBAVA_HOME"):
        return Path(os.environ["MAMBAVA_HOME"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "mambava" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mambava"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mambava"


def models_dir() -> Path:
    return home() / "models"


def _index_path() -> Path:
    return models_dir() / "index.json"


def read_index() -> dict[str, dict]:
    path = _index_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MambavaError(f"{path}: unreadable model index ({error})") from None
    if not isinstance(data, dict):
        raise MambavaError(f"{path}: the model index is not a JSON object")
    return data


def _write_index(index: dict) -> None:
    with atomic_open(_index_path()) as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def guess_kind(path: Path) -> tuple[str, str]:
    """(kind, what it was trained on as far as the file says) of a checkpoint: a temporal model when
    `mambava.temporal.load_temporal_model` reads it, else a backbone when `mambava.backbone.load_encoder` does.
    A model with NaN or infinite weights (a diverged run) is a MambavaError: it could only give NaN."""

    try:
        loaded = load_temporal_model(path)
    except Exception:  # noqa: BLE001 - not a temporal model; try the backbone reader
        pass
    else:
        check_finite(loaded.model, path)
        data = (loaded.run_config or {}).get("data") or {}
        said = ", ".join(f"{k} {data[k]}" for k in ("features", "labels", "fold") if data.get(k) is not None)
        return "temporal", said

    try:
        encoder = load_encoder(path)
    except Exception as error:  # noqa: BLE001
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise MambavaError(f"{path}: neither a temporal model nor a backbone checkpoint ({first})") from None
    check_finite(encoder, path)
    return "backbone", ""


def check_finite(model, path: str | os.PathLike) -> None:
    """MambavaError naming the first tensor of `model`'s weights with NaN or infinite values, and how many.

    Args:
        model: a torch module (its state_dict is read).
        path: the file it was loaded from, for the message.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise MambavaError(
                    f"{path}: {bad} of {tensor.numel()} weights of {name} are NaN or infinite (a diverged "
                    "model): not added"
                )


def _cached_file(name: str, entry) -> Path | None:
    """The registry's file of an index entry, or None when the entry names anything but a plain file name in
    the registry's folder (`../../x`, an absolute path): an index edited by hand, or planted, is never
    followed out of the folder."""
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file:
        return None
    return models_dir() / file


def add(
    name: str, file: str | os.PathLike, kind: str | None = None, trained_on: str | None = None, replace: bool = False
) -> dict:
    """Copy `file` into the cache under `name`; returns its index entry."""
    if not _NAME.match(name):
        raise MambavaError(
            f"{name!r}: a model name is letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    source = Path(file)
    if not source.is_file():
        raise MambavaError(f"{source}: no such file")
    if kind is not None and kind not in KINDS:
        raise MambavaError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if name in BUILTIN:
        raise MambavaError(f"{name!r} is a built-in model name; choose another")
    index = read_index()
    if name in index and not replace:
        raise MambavaError(f"{name}: already a model name ({index[name]['file']}); remove it first or pass --replace")
    guessed, said = guess_kind(source)
    if kind is not None and kind != guessed:
        raise MambavaError(f"{source}: reads as a {guessed} checkpoint, not a {kind} one")
    target = models_dir() / f"{name}{''.join(source.suffixes[-1:])}"

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    entry = {
        "file": target.name,
        "kind": guessed,
        "sha256": sha256(target),
        "size": target.stat().st_size,
        "trained_on": trained_on if trained_on is not None else said,
        "source": str(source.resolve()),
        "added": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    old = index.get(name)
    index[name] = entry
    _write_index(index)
    stale = _cached_file(name, old) if old else None
    if stale is not None and stale.name != entry["file"]:
        stale.unlink(missing_ok=True)
    return entry


def remove(name: str) -> dict:
    """Forget `name` and delete its cached file; returns its index entry, with "deleted": False when the entry
    named no file of the registry (nothing outside the registry's folder is ever deleted)."""
    index = read_index()
    if name not in index:
        raise MambavaError(f"{name}: no such model name ({models_dir()})")
    entry = index.pop(name)
    _write_index(index)
    cached = _cached_file(name, entry)
    if cached is not None:
        cached.unlink(missing_ok=True)
    return {**(entry if isinstance(entry, dict) else {"file": entry}), "deleted": cached is not None}


def path_of(name: str, kind: str | None = None) -> Path:
    """The cached file of `name`, its SHA-256 checked against the index."""
    index = read_index()
    if name not in index:
        known = ", ".join(sorted(index)) or "none"
        raise MambavaError(f"{name}: no such file, nor a model name (names: {known}; see `mambava models add`)")
    entry = index[name]
    path = _cached_file(name, entry)
    if path is None:
        raise MambavaError(f"{name}: its index entry names no file of {models_dir()}; remove it and add it again")
    if kind is not None and entry.get("kind") != kind:
        raise MambavaError(f"{name}: a {entry.get('kind')} checkpoint, not a {kind} one")
    if not path.is_file():
        raise MambavaError(f"{path}: the file of model {name!r} is missing; add it again")
    if sha256(path) != entry["sha256"]:
        raise MambavaError(
            f"{path}: SHA-256 differs from the one recorded for {name!r}; the file changed, add it again"
        )
    return path


def resolve_model(value, kind: str | None = None):
    """A checkpoint argument as given: an existing path (or None, or a model object) stays as it is; a
    string that is no file but a model name becomes that model's cached file; a built-in name (`BUILTIN`)
    stays a name (str), which `builtin_model` builds."""
    if value is None or not isinstance(value, (str, os.PathLike)):
        return value
    path = Path(value)
    if path.exists() or len(path.parts) != 1 or not _NAME.match(str(value)):
        return value
    if str(value) in BUILTIN:
        if kind is not None and BUILTIN[str(value)] != kind:
            raise MambavaError(f"{value}: the built-in {BUILTIN[str(value)]} model, not a {kind} one")
        return str(value)
    return path_of(str(value), kind)


def is_builtin(value, kind: str | None = None) -> bool:
    """Whether `value` names a built-in model (of `kind`) rather than a file."""
    return (
        isinstance(value, (str, os.PathLike))
        and str(value) in BUILTIN
        and (kind is None or BUILTIN[str(value)] == kind)
        and not Path(value).exists()
    )


def builtin_model(name: str, **options):
    """The built-in model `name`: `ExpressionVA()` for expression-va, `ExpressionRecognizer(**options)`
    (batch_size, device) for expression."""
    if name == EXPRESSION_VA:
        return ExpressionVA()
    if name == "expression":
        return ExpressionRecognizer(**options)
    raise MambavaError(f"{name}: not a built-in model (built in: {', '.join(BUILTIN)})")


__all__ = [
    "BUILTIN",
    "DEFAULT_MODEL",
    "builtin_model",
    "is_builtin",
    "KINDS",
    "home",
    "models_dir",
    "read_index",
    "add",
    "remove",
    "path_of",
    "resolve_model",
    "sha256",
]
