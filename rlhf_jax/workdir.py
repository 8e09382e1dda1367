"""A run directory's record of the config that made it, and the check that keeps it true.

A workdir holds ``config.json``: the result-affecting config that made it. Rerunning the
workdir resumes it; rerunning it with other values is refused, naming the fields, before
anything is written — otherwise its finished stages would be read as the new config's
results. The entry point (:mod:`rlhf_jax.main`) checks and records every workdir this way,
and the studies (:mod:`rlhf_jax.train.compare`, :mod:`rlhf_jax.train.sycophancy`) every run
folder they make.

What a trainer module may declare (both optional tuples of dotted field paths):

* ``RESULT_NEUTRAL_FIELDS``: fields that cannot change results (logging, progress, report
  sample counts, the mesh); a rerun may change them.
* ``RUN_LIST_FIELDS``: fields of a study that list its runs (arms, seeds, biases, KL
  coefficients). A rerun may grow or shrink them — the study then runs the new runs and
  reads the finished ones — because each run folder is checked against its own config.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

__all__ = ["UsageError", "check_config", "record_config", "NEUTRAL_ENTRY_POINT_KEYS"]

# Entry-point keys that cannot change results (a rerun may change them).
NEUTRAL_ENTRY_POINT_KEYS = ("compilation_cache_dir", "distributed")


class UsageError(ValueError):
  """A user error found before anything runs (flags, config file, workdir)."""


def _plain(x: Any) -> Any:
  """``x`` as ``config.json`` holds it (tuples as lists, other objects as strings)."""
  return json.loads(json.dumps(x, default=str))


def check_config(workdir: str | os.PathLike, snapshot: Mapping, module) -> None:
  """Refuses (:class:`UsageError`) to rerun ``workdir`` with result-affecting values other
  than those that made it.

  Args:
    workdir: the run directory; a missing one, or one holding nothing but its
      ``config.json`` (an attempt that failed its start-up checks), passes.
    snapshot: the new config as ``config.json`` records it.
    module: the trainer's module: its ``Config`` defaults, ``RESULT_NEUTRAL_FIELDS`` and
      ``RUN_LIST_FIELDS``. A field the workdir's ``config.json`` lacks (added to the code
      since) passes only at its default.
  """
  from rlhf_jax import config_schema

  workdir = os.fspath(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  if not set(os.listdir(workdir)) - {"config.json", "config.json.tmp"}:
    return  # nothing was made yet
  try:
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UsageError(
      f"{path}: unreadable ({e}); it records the config that made this "
      "workdir: restore it, or pass a new --workdir"
    ) from None
  ignore = (
    NEUTRAL_ENTRY_POINT_KEYS
    + tuple(getattr(module, "RESULT_NEUTRAL_FIELDS", ()))
    + tuple(getattr(module, "RUN_LIST_FIELDS", ()))
  )
  defaults = _plain(config_schema.to_dict(module.Config()))
  changed = config_schema.diff(old, _plain(snapshot), ignore, defaults=defaults)
  if changed:
    raise UsageError(
      f"--workdir={workdir} was made by a different config; these fields differ "
      f"(workdir -> now):\n  " + "\n  ".join(changed) + "\nRerun with the workdir's "
      f"values ({path}) to resume it, or pass a new --workdir (or delete {workdir}) to start "
      "a new run."
    )


def record_config(workdir: str | os.PathLike, snapshot: Mapping, module) -> None:
  """:func:`check_config`, then ``workdir/config.json`` := ``snapshot`` (written atomically;
  ``workdir`` created if missing)."""
  check_config(workdir, snapshot, module)
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "config.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(snapshot, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, os.path.join(workdir, "config.json"))
