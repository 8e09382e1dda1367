"""Atomic file writes: a failed write never leaves a partial file behind.

Every writer in the data and feedback layers goes through these helpers: the content is written to
a temporary file in the destination's own folder, flushed to disk, and then moved over the
destination with `os.replace` (atomic on POSIX). A reader therefore sees either the old file or
the complete new one, never a prefix, and an exception during writing leaves the destination as it
was.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
  "atomic_write_bytes",
  "atomic_write_text",
  "atomic_write_json",
  "atomic_write_jsonl",
  "atomic_directory",
  "read_jsonl",
]


def _current_umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# Files get the permissions a plain `open(path, "w")` would give (mkstemp alone makes them 0600).
_FILE_MODE = 0o666 & ~_current_umask()
_DIR_MODE = 0o777 & ~_current_umask()


def _fsync_dir(path: pathlib.Path) -> None:
  """Flush a directory entry (a rename) to disk; a no-op where the OS does not allow it."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
      os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  tmp = pathlib.Path(tmp_name)
  try:
    encoding = None if "b" in mode else "utf-8"
    with os.fdopen(fd, mode, encoding=encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> pathlib.Path:
  """Write `data` to `path` atomically (temp file in the same folder, then rename)."""
  with _atomic_file(path, "wb") as f:
    f.write(data)
  return pathlib.Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> pathlib.Path:
  """Write UTF-8 `text` to `path` atomically."""
  with _atomic_file(path, "w") as f:
    f.write(text)
  return pathlib.Path(path)


def atomic_write_json(
  path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2
) -> pathlib.Path:
  """Serialise `obj` as JSON (UTF-8, non-ASCII kept) and write it atomically."""
  return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def atomic_write_jsonl(
  path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]
) -> pathlib.Path:
  """Write one JSON object per line atomically. `rows` may be a generator: if it raises, the
  destination is left untouched."""
  with _atomic_file(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False))
      f.write("\n")
  return pathlib.Path(path)


@contextlib.contextmanager
def atomic_directory(
  path: str | os.PathLike[str], *, overwrite: bool = False
) -> Iterator[pathlib.Path]:
  """Build a directory in a temporary sibling and move it to `path` when the block succeeds.

  Yields the temporary directory to fill. On an exception the temporary directory is removed and
  `path` is untouched. With `overwrite=True` an existing `path` is replaced (the old one is moved
  aside first and deleted after the new one is in place); otherwise an existing `path` raises
  `FileExistsError` before anything is written.
  """
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
  try:
    os.chmod(tmp, _DIR_MODE)
    yield tmp
    old = None
    if path.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
      old.rmdir()
      os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_jsonl(
  path: str | os.PathLike, error: type[Exception] = ValueError
) -> Iterator[tuple[str, Any]]:
  """``(location, record)`` for each non-blank line of a JSONL file, ``location`` being
  ``"path:line"``; a line that is not JSON raises ``error`` naming that location.

  Callers validate the records' fields and name the same location in their own errors.
  """
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      loc = f"{os.fspath(path)}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{loc}: invalid JSON ({e.msg} at column {e.colno})") from None
      yield loc, record
