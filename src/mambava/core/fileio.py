"""Atomic output: write to a temporary file beside the target, fsync, then rename.

A crash, a full disk or a bad input mid-write never leaves a truncated file where a good one was: the target
is either the complete new file or exactly what it was before. An OSError while writing (no space, read-only,
no permission) becomes an `OutputError` naming the target, never the hidden temporary file.

`atomic_group()` extends this to an output made of several files (a CSV and its plots): inside the group each
`atomic_path` writes its temporary file but the renames wait until the group ends without error, so after a
failure every file of the group is still the earlier run's (or absent), never a mix.

Folders: `make_folder` is mkdir -p that remembers what it made while a `tidy_folders()` block is open (the
command line opens one around every command); when the block fails, the folders it made that are still empty
are removed, so a failed command leaves no empty output folder behind (and never removes one it did not make).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

import torch

from mambava.core.errors import OutputError

# errno values that say "this output cannot be written here", whatever call reported them
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}

_GROUP: contextvars.ContextVar[list | None] = contextvars.ContextVar("mambava_atomic_group", default=None)
# The folders make_folder made inside the open tidy_folders() block (None: none open). Process-wide, not a
# ContextVar: a stage may make its folders from a worker thread.
_MADE: list[Path] | None = None
_MADE_LOCK = threading.Lock()


def output_error(error: OSError, target: str | os.PathLike, what: str = "cannot write") -> OutputError:
    """The one-line OutputError for an OSError met while writing `target`."""
    reason = error.strerror or str(error) or type(error).__name__
    return OutputError(f"{target}: {what} ({reason})", path=target)


def _is_about(error: OSError, *paths: Path) -> bool:
    """True when `error` is a failure to write one of `paths` (and not, say, an input read inside the block)."""
    if error.filename is None:
        return error.errno in WRITE_ERRNOS
    return os.fsdecode(error.filename) in {os.fspath(p) for p in paths}


def is_output_failure(error: OSError, folder: str | os.PathLike) -> bool:
    """True when `error` is a failure to write into the output folder `folder` (a file in it, or a write that
    names no file but failed for lack of space or permission)."""
    if error.filename is None:
        return error.errno in WRITE_ERRNOS
    name = Path(os.fsdecode(error.filename)).absolute()
    root = Path(folder).absolute()
    return name == root or root in name.parents


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def make_folder(path: str | os.PathLike) -> Path:
    """mkdir -p, remembering the folders it made for `tidy_folders` (OSError as mkdir raises it).

    Args:
        path: the folder.

    Returns:
        The folder, as a Path.
    """
    path = Path(path)
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    path.mkdir(parents=True, exist_ok=True)
    with _MADE_LOCK:
        if _MADE is not None:
            _MADE.extend(missing)
    return path


@contextlib.contextmanager
def tidy_folders() -> Iterator[None]:
    """Remember the folders `make_folder` makes in the block; should it fail (an exception, or SystemExit with
    a code other than 0), remove those still empty, deepest first. A folder that was there before, or that
    holds anything, is never removed."""
    global _MADE
    with _MADE_LOCK:
        outer, _MADE = _MADE, []
    try:
        yield
    except SystemExit as done:
        if done.code not in (0, None):
            _remove_empty_made()
        raise
    except BaseException:
        _remove_empty_made()
        raise
    finally:
        with _MADE_LOCK:
            made, _MADE = _MADE, outer
            if outer is not None:
                outer.extend(made)


def _remove_empty_made() -> None:
    with _MADE_LOCK:
        made = sorted(set(_MADE or []), key=lambda folder: len(folder.parts), reverse=True)
    for folder in made:
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success fsync it and rename it over the target.

    The file gets the permissions a plain open() would give (0666 minus the umask), also when the writer
    replaced the temporary file (safetensors does). OutputError naming `target` on an OSError writing it."""
    target = Path(target)
    try:
        make_folder(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as error:
        raise output_error(error, target) from None
    tmp_path = Path(tmp)
    try:
        mode = _umask_mode()
        os.chmod(tmp_path, mode)
        try:
            yield tmp_path
            os.chmod(tmp_path, mode)  # (again: a writer may have replaced the file with a 0600 one)
            with open(tmp_path, "rb") as handle:
                os.fsync(handle.fileno())
        except OSError as error:
            if _is_about(error, tmp_path, target):
                raise output_error(error, target) from None
            raise
        group = _GROUP.get()
        if group is not None:
            group.append((tmp_path, target))
            return
        try:
            os.replace(tmp_path, target)
        except OSError as error:
            raise output_error(error, target) from None
        fsync_dir(target.parent)
    finally:
        group = _GROUP.get()
        if tmp_path.exists() and not (group is not None and (tmp_path, target) in group):
            tmp_path.unlink()


def remove_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an `atomic_path` of `target` left when its process was killed (a normal exit,
    an exception or Ctrl-C removes its own); returns them."""
    target = Path(target)
    found = sorted(target.parent.glob(f".{target.name}.*.tmp")) if target.parent.is_dir() else []
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """open() that only replaces `target` once the block finishes without error."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_torch_save(obj, target: str | os.PathLike) -> Path:
    """torch.save, atomically. Serialised in memory first: torch's own file writer reports a full disk as a
    RuntimeError ("unexpected pos"), Python's file write as the OSError that becomes an OutputError."""

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
    return Path(target)


@contextlib.contextmanager
def atomic_group() -> Iterator[list[tuple[Path, Path]]]:
    """Several outputs that appear together: the `atomic_path`s inside the block are renamed into place only
    when the block ends without error; on an error their temporary files are removed and the earlier files
    stay. Yields the pending (temporary, target) pairs."""
    pending: list[tuple[Path, Path]] = []
    token = _GROUP.set(pending)
    try:
        yield pending
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.reset(token)
    done = 0
    try:
        for tmp, target in pending:
            os.replace(tmp, target)
            done += 1
    except OSError as error:
        for tmp, _ in pending[done:]:
            tmp.unlink(missing_ok=True)
        new = ", ".join(str(t) for _, t in pending[:done]) or "none"
        raise output_error(error, pending[done][1], f"cannot write (new: {new}; the others are from before)") from None
    for folder in {target.parent for _, target in pending}:
        fsync_dir(folder)
