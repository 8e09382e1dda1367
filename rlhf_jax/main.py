"""Entry point: ``python -m rlhf_jax.main --config configs/<name>.py:<arg> --workdir DIR``.

Flags (big_vision / flax-examples style):

* ``--config path/to/config.py[:arg]`` — a Python file with ``get_config(arg=None)`` returning a
  ``ml_collections.ConfigDict``; ``:arg`` is passed to ``get_config``.
* ``--config.<field>=<value>`` — override any field (``--config.ppo.kl_target=3``); the value is
  parsed with the type of the existing field.
* ``--workdir DIR`` — run directory (checkpoints, metrics, plots, ``config.json``).

The console script ``rlhf-jax`` (``pyproject.toml``) runs the same :func:`run`.

Config keys read here and not passed to trainers:

* ``task`` (str, required): a key of :data:`TASKS`, or a module path ``package.module`` of a
  trainer outside this package.
* ``compilation_cache_dir`` (str, optional): persistent XLA compilation cache directory;
  ``$RLHF_JAX_COMPILATION_CACHE`` is used when unset.
* ``distributed`` (ConfigDict, optional): arguments of
  :func:`rlhf_jax.distributed.maybe_initialize` (``coordinator_address``, ``num_processes``,
  ``process_id``, ``local_device_ids``, ``auto``).

Everything else is validated against the trainer's ``Config`` dataclass
(:func:`rlhf_jax.config_schema.from_config`) and the trainer's ``run(cfg, workdir) -> dict`` is
called. A trainer module is any module with a frozen dataclass ``Config`` and that ``run``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any, Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

__all__ = ["TASKS", "ENTRY_POINT_KEYS", "main", "run", "run_task", "enable_compilation_cache",
           "load_task"]

# Task name -> trainer module (exposes ``Config`` and ``run(cfg, workdir) -> dict``).
TASKS: dict[str, str] = {
    "sft": "rlhf_jax.train.sft",
    "reward": "rlhf_jax.train.reward",
    "ppo": "rlhf_jax.train.ppo",
    "pipeline": "rlhf_jax.train.pipeline",
    "overoptimization": "rlhf_jax.train.overoptimization",
}

# Config keys consumed by the entry point itself.
ENTRY_POINT_KEYS = ("task", "compilation_cache_dir", "distributed")

_DISTRIBUTED_ARGS = ("coordinator_address", "num_processes", "process_id", "local_device_ids",
                     "auto", "initialization_timeout")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: path/to/config.py[:arg] with get_config(arg=None).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")

_log = logging.getLogger(__name__)


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in ``directory`` for every compiled program.

  Minimum compile time and entry size are 0, so even small programs are cached: a second
  process (resume, another pipeline stage) loads them in ~0.2-0.5 s instead of recompiling.
  """
  import jax
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _log.info("persistent compilation cache: %s", directory)


def load_task(task: str):
  """Imports the trainer module for ``task`` and checks that it has ``Config`` and ``run``.

  Raises:
    ValueError: unknown task (lists the known ones) or a module without ``Config`` / ``run``.
  """
  if not isinstance(task, str) or not task:
    raise ValueError(f"config.task: expected a task name, one of {sorted(TASKS)}, got {task!r}")
  module_name = TASKS.get(task)
  if module_name is None:
    if "." not in task:
      raise ValueError(f"config.task: unknown task {task!r}; known tasks: "
                       f"{', '.join(sorted(TASKS))} (or a module path 'package.module')")
    module_name = task
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is not None and module_name.startswith(e.name):
      raise ValueError(f"config.task={task!r}: module {module_name!r} not found; known tasks: "
                       f"{', '.join(sorted(TASKS))}") from e
    raise
  missing = [a for a in ("Config", "run") if not hasattr(module, a)]
  if missing:
    raise ValueError(f"config.task={task!r}: module {module_name!r} has no "
                     f"{' / '.join(missing)} (a trainer defines a dataclass Config and "
                     "run(cfg, workdir) -> dict)")
  return module


def _to_plain(config: Any) -> dict:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return dict(config)


def run_task(config: Any, workdir: str) -> dict:
  """Everything :func:`main` does after flag parsing; usable from Python and tests.

  Args:
    config: ``ml_collections.ConfigDict`` (or a dict) with ``task`` and the trainer's fields.
    workdir: run directory; created if missing.

  Returns:
    The trainer's result dict.
  """
  from rlhf_jax import config_schema, distributed

  plain = _to_plain(config)
  if "task" not in plain:
    raise ValueError(f"config.task: missing; set it to one of {', '.join(sorted(TASKS))}")

  # 1. Multi-process runtime, before anything touches devices.
  dist = plain.get("distributed") or {}
  if not isinstance(dist, Mapping):
    raise ValueError(f"config.distributed: expected a dict of {', '.join(_DISTRIBUTED_ARGS)}, "
                     f"got {dist!r}")
  unknown = sorted(set(dist) - set(_DISTRIBUTED_ARGS))
  if unknown:
    raise ValueError(f"config.distributed.{unknown[0]}: unknown field; expected "
                     f"{', '.join(_DISTRIBUTED_ARGS)}")
  distributed.maybe_initialize(**{k: v for k, v in dist.items() if v is not None})

  # 2. Persistent compilation cache.
  cache_dir = plain.get("compilation_cache_dir") or os.environ.get("RLHF_JAX_COMPILATION_CACHE")
  if cache_dir:
    enable_compilation_cache(os.path.expanduser(cache_dir))

  # 3. Validate the trainer config (fails before anything is written).
  module = load_task(plain["task"])
  trainer_fields = {k: v for k, v in plain.items() if k not in ENTRY_POINT_KEYS}
  cfg = config_schema.from_config(module.Config, trainer_fields)

  # 4. Log + snapshot.
  import jax
  _log.info("task %s (%s), workdir %s", plain["task"], module.__name__, workdir)
  _log.info("config:\n%s", config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    snapshot = {k: plain[k] for k in ENTRY_POINT_KEYS if k in plain}
    snapshot.update(config_schema.to_dict(cfg))
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(snapshot, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(workdir, "config.json"))

  # 5. Train.
  result = module.run(cfg, workdir)
  _log.info("result: %s", result)
  return result


def main(argv: Sequence[str]) -> None:
  """absl main: ``--config`` and ``--workdir`` are read from the parsed flags.

  Returns ``None`` (``absl.app.run`` turns a return value into the exit status).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (path/to/config.py[:arg])")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  run_task(_CONFIG.value, _WORKDIR.value)


def run() -> None:
  """Console-script entry point (``rlhf-jax``)."""
  app.run(main)


if __name__ == "__main__":
  run()
