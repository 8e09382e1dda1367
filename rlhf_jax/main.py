"""Entry point: ``python -m rlhf_jax.main --config configs/<name>.py:<arg> --workdir DIR``.

Flags (big_vision / flax-examples style):

* ``--config path/to/config.py[:arg]`` — a Python file with ``get_config(arg=None)`` returning a
  ``ml_collections.ConfigDict``; ``:arg`` is passed to ``get_config``.
* ``--config.<field>=<value>`` — override any field (``--config.ppo.kl_target=3``); the value is
  parsed with the type of the existing field.
* ``--workdir DIR`` — run directory (checkpoints, metrics, plots, ``config.json``). A workdir
  keeps the result-affecting config that made it: rerunning it resumes, rerunning it with
  other values is refused (listing the changed fields); fields that cannot change results
  (a trainer's ``RESULT_NEUTRAL_FIELDS``: logging, progress, report sample counts, the mesh)
  may change, and so may a study's list of runs (``RUN_LIST_FIELDS``: arms, seeds, biases,
  KL coefficients; each run folder is checked on its own) — :mod:`rlhf_jax.workdir`.
* ``--verbosity`` (``-v``) — ``warning`` (default: progress lines and warnings; library INFO
  logs and TFDS progress bars silenced), ``info`` (library INFO logs too), ``debug`` (and
  tracebacks of user errors); absl's integer levels are accepted as well.

Exit status: 0 finished; 2 a user error (config field, input file, workdir), printed as one
message without a traceback; 1 the run failed (diverged training, corrupt checkpoint, a bug);
:data:`EXIT_PREEMPTED` (75) stopped by SIGTERM after saving what it needs: rerun the same
command to resume.

The console script ``rlhf-jax`` (``pyproject.toml``) runs the same :func:`run`;
``rlhf-jax annotate COMMAND`` runs the annotation app (:mod:`rlhf_jax.annotate.cli`);
``rlhf-jax convert SRC DST`` writes a checkpoint as a Hugging Face directory
(:mod:`rlhf_jax.models.convert`).

Config keys read here and not passed to trainers:

* ``task`` (str, required): a key of :data:`TASKS`, or a module path ``package.module`` of a
  trainer outside this package.
* ``compilation_cache_dir`` (str, optional): persistent XLA compilation cache directory;
  ``$RLHF_JAX_COMPILATION_CACHE`` is used when unset.
* ``distributed`` (ConfigDict, optional): arguments of
  :func:`rlhf_jax.distributed.maybe_initialize` (``coordinator_address``, ``num_processes``,
  ``process_id``, ``local_device_ids``, ``auto``, ``initialization_timeout``,
  ``heartbeat_timeout_seconds``: how soon a dead peer ends the other processes).

Everything else is validated against the trainer's ``Config`` dataclass
(:func:`rlhf_jax.config_schema.from_config`) and its ``check_config(cfg)`` if it has one, and the
trainer's ``run(cfg, workdir) -> dict`` is called. A trainer module is any module with a frozen
dataclass ``Config`` and that ``run``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import traceback
from typing import Any, Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.workdir import UsageError

__all__ = [
  "TASKS",
  "ENTRY_POINT_KEYS",
  "EXIT_USER_ERROR",
  "EXIT_FAILED",
  "EXIT_PREEMPTED",
  "UsageError",
  "main",
  "run",
  "run_task",
  "validate",
  "load_config_file",
  "enable_compilation_cache",
  "load_task",
  "configure_logging",
]

# Task name -> trainer module (exposes ``Config`` and ``run(cfg, workdir) -> dict``).
TASKS: dict[str, str] = {
  "sft": "rlhf_jax.train.sft",
  "reward": "rlhf_jax.train.reward",
  "ppo": "rlhf_jax.train.ppo",
  "pipeline": "rlhf_jax.train.pipeline",
  "overoptimization": "rlhf_jax.train.overoptimization",
  "compare": "rlhf_jax.train.compare",
  "sycophancy": "rlhf_jax.train.sycophancy",
}

# Config keys consumed by the entry point itself.
ENTRY_POINT_KEYS = ("task", "compilation_cache_dir", "distributed")

# Exit statuses (EXIT_PREEMPTED is rlhf_jax.checkpoint.EXIT_PREEMPTED, sysexits EX_TEMPFAIL).
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75


_DISTRIBUTED_ARGS = (
  "coordinator_address",
  "num_processes",
  "process_id",
  "local_device_ids",
  "auto",
  "initialization_timeout",
  "heartbeat_timeout_seconds",
)

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file: path/to/config.py[:arg] with get_config(arg=None).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")

_log = logging.getLogger(__name__)

# --verbosity: absl defines it (an integer level, -v); it also takes these names here.
_VERBOSITY_NAMES = {"debug": 1, "info": 0, "warning": -1, "error": -2}


class _VerbosityParser(flags.IntegerParser):
  def parse(self, argument):
    if isinstance(argument, str) and argument.strip().lower() in _VERBOSITY_NAMES:
      return _VERBOSITY_NAMES[argument.strip().lower()]
    return super().parse(argument)

  def flag_type(self):
    return "warning | info | debug (or an absl integer level)"


if "verbosity" in flags.FLAGS:
  flags.FLAGS["verbosity"].parser = _VerbosityParser()
  flags.FLAGS["verbosity"].help = (
    "warning (default): progress lines and warnings, library INFO logs and TFDS progress "
    "bars silenced; info: library INFO logs too; debug: also tracebacks of user errors."
  )


def configure_logging(level: int) -> None:
  """Log levels for an absl verbosity ``level`` (1 debug, 0 info, -1 warning, -2 error).

  Warning (the default): this package's INFO lines (stage progress) and everyone's warnings;
  the INFO logs of absl, orbax, TFDS and JAX and TFDS's progress bars are silenced.
  """
  std = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}.get(
    max(min(level, 1), -2), logging.ERROR
  )
  logging.root.setLevel(logging.INFO if std == logging.DEBUG else std)
  logging.getLogger("absl").setLevel(logging.NOTSET)  # absl, orbax, TFDS: the root's level
  ours = logging.getLogger("rlhf_jax")
  ours.setLevel(std if std in (logging.DEBUG, logging.ERROR) else logging.INFO)
  if std >= logging.WARNING and importlib.util.find_spec("tensorflow_datasets") is not None:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


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
      raise ValueError(
        f"config.task: unknown task {task!r}; known tasks: "
        f"{', '.join(sorted(TASKS))} (or a module path 'package.module')"
      )
    module_name = task
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is not None and module_name.startswith(e.name):
      raise ValueError(
        f"config.task={task!r}: module {module_name!r} not found; known tasks: "
        f"{', '.join(sorted(TASKS))}"
      ) from e
    raise
  missing = [a for a in ("Config", "run") if not hasattr(module, a)]
  if missing:
    raise ValueError(
      f"config.task={task!r}: module {module_name!r} has no "
      f"{' / '.join(missing)} (a trainer defines a dataclass Config and "
      "run(cfg, workdir) -> dict)"
    )
  return module


def _to_plain(config: Any) -> dict:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return dict(config)


def validate(config: Any):
  """``(trainer module, validated Config)`` for a config, without touching devices or files:
  the task is resolved, every field is checked against the trainer's ``Config`` dataclass
  and, if the trainer has one, its ``check_config(cfg)`` (sizes, ranges, combinations).

  Raises:
    ValueError / ConfigError: naming the config field.
  """
  from rlhf_jax import config_schema

  plain = _to_plain(config)
  if "task" not in plain:
    raise ValueError(f"config.task: missing; set it to one of {', '.join(sorted(TASKS))}")
  module = load_task(plain["task"])
  trainer_fields = {k: v for k, v in plain.items() if k not in ENTRY_POINT_KEYS}
  cfg = config_schema.from_config(module.Config, trainer_fields)
  check = getattr(module, "check_config", None)
  if check is not None:
    check(cfg)
  return module, cfg


def run_task(config: Any, workdir: str) -> dict:
  """Everything :func:`main` does after flag parsing; usable from Python and tests.

  Args:
    config: ``ml_collections.ConfigDict`` (or a dict) with ``task`` and the trainer's fields.
    workdir: run directory; created if missing.

  Returns:
    The trainer's result dict.

  Raises:
    rlhf_jax.checkpoint.Preempted: SIGTERM stopped the run after it saved what it needs to
      resume (:func:`main` exits with :data:`EXIT_PREEMPTED`).
  """
  from rlhf_jax import checkpoint, config_schema, distributed
  from rlhf_jax import workdir as workdir_lib

  plain = _to_plain(config)
  if "task" not in plain:
    raise ValueError(f"config.task: missing; set it to one of {', '.join(sorted(TASKS))}")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir} exists and is not a directory")

  # 1. Multi-process runtime, before anything touches devices.
  dist = plain.get("distributed") or {}
  if not isinstance(dist, Mapping):
    raise ValueError(
      f"config.distributed: expected a dict of {', '.join(_DISTRIBUTED_ARGS)}, got {dist!r}"
    )
  unknown = sorted(set(dist) - set(_DISTRIBUTED_ARGS))
  if unknown:
    raise ValueError(
      f"config.distributed.{unknown[0]}: unknown field; expected {', '.join(_DISTRIBUTED_ARGS)}"
    )
  distributed.maybe_initialize(**{k: v for k, v in dist.items() if v is not None})

  # 2. Persistent compilation cache.
  cache_dir = plain.get("compilation_cache_dir") or os.environ.get("RLHF_JAX_COMPILATION_CACHE")
  if cache_dir:
    enable_compilation_cache(os.path.expanduser(cache_dir))

  # 3. Validate the trainer config (fails before anything is written).
  module, cfg = validate(plain)

  # 4. Log + snapshot; a workdir made by another config is refused.
  _log.info("task %s (%s), workdir %s", plain["task"], module.__name__, workdir)
  _log.debug("config:\n%s", config)
  snapshot = {k: plain[k] for k in ENTRY_POINT_KEYS if k in plain}
  snapshot.update(config_schema.to_dict(cfg))

  distributed.lead_only(  # a refusal is raised in every process
    lambda: workdir_lib.record_config(workdir, snapshot, module), "workdir: config.json"
  )

  # 5. Train; SIGTERM anywhere stops at the next checkpoint or stage boundary (Preempted).
  checkpoint.clear_preemption()
  with checkpoint.PreemptionGuard():
    result = module.run(cfg, workdir)
  _log.info("result: %s", result)
  return result


def load_config_file(spec: str):
  """The ConfigDict of ``path/to/config.py[:arg]`` (``get_config(arg)``), as ``--config`` loads
  it. Raises :class:`UsageError` naming the file: missing, no ``get_config``, or
  ``get_config`` refusing the argument (an unknown variant)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config={spec}: no such config file {path!r}")
  loader = importlib.util.spec_from_file_location("_rlhf_jax_config_check", path)
  module = importlib.util.module_from_spec(loader)
  try:
    loader.loader.exec_module(module)
  except Exception as e:  # any error in a user's config file
    raise UsageError(f"--config={spec}: {type(e).__name__} while loading {path}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config={spec}: {path} defines no get_config(arg=None)")
  try:
    return module.get_config(*([arg] if ":" in spec else []))
  except Exception as e:  # unknown variant, or a bug in the config file
    raise UsageError(f"--config={spec}: {e}") from e


def _config_paths(node, prefix: str = "") -> list:
  out = []
  for key in node.keys():
    path = f"{prefix}{key}"
    out.append(path)
    child = node[key]
    if hasattr(child, "keys") and callable(child.keys):
      out.extend(_config_paths(child, path + "."))
  return out


def _check_overrides(argv: Sequence[str]) -> None:
  """``--config.x.y=v`` overrides name existing fields; else a :class:`UsageError` with the
  nearest valid path (``config.ppo.kl_targt`` -> ``config.ppo.hparams.kl_target``)."""
  from rlhf_jax import config_schema

  spec, overrides = None, []
  args = list(argv[1:])
  for i, a in enumerate(args):
    if a == "--":
      break
    name, eq, value = a.lstrip("-").partition("=")
    if not a.startswith("-"):
      continue
    if name == "config":
      spec = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    elif name.startswith(("config.", "noconfig.")):
      overrides.append(name.split(".", 1)[1])
  if spec is None:
    return
  config = load_config_file(spec)
  paths = _config_paths(config)
  for field in overrides:
    if field in paths:
      continue
    near = config_schema.nearest_path(field, paths)
    hint = f"; did you mean config.{near}?" if near else ""
    raise UsageError(f"config.{field}: unknown field{hint} (--config.{field} on {spec})")


def _debug_requested(argv: Sequence[str]) -> bool:
  for i, a in enumerate(argv):
    for flag in ("--verbosity", "-verbosity", "-v", "--v"):
      if a.startswith(flag + "="):
        value = a.split("=", 1)[1]
      elif a == flag and i + 1 < len(argv):
        value = argv[i + 1]
      else:
        continue
      value = value.strip().lower()
      return value == "debug" or (value.lstrip("-").isdigit() and int(value) >= 1)
  return False


def _fail(e: BaseException, status: int, debug: bool) -> None:
  if debug:
    traceback.print_exception(e)
  message = str(e) or type(e).__name__
  sys.stderr.write(f"error: {message}\n")
  if not debug:
    sys.stderr.write("(run with --verbosity=debug for the traceback)\n")
  sys.stderr.flush()
  sys.exit(status)


def _parse_flags(argv: Sequence[str]):
  """absl flag parsing, with user errors (unknown override fields, a config file refusing its
  argument, ill-typed values) as one message and exit status 2."""
  try:
    _check_overrides(argv)
    return flags.FLAGS(list(argv))
  except (UsageError, flags.Error, ValueError, TypeError, AttributeError, KeyError, OSError) as e:
    _fail(e, EXIT_USER_ERROR, _debug_requested(argv))


def main(argv: Sequence[str]) -> None:
  """absl main: ``--config`` and ``--workdir`` are read from the parsed flags.

  Exits with 0 when the run finished, :data:`EXIT_USER_ERROR` on a user error (one message,
  a traceback only with ``--verbosity=debug``), :data:`EXIT_FAILED` when the run failed and
  :data:`EXIT_PREEMPTED` when SIGTERM stopped it after saving what it needs to resume.
  """
  from rlhf_jax import checkpoint
  from rlhf_jax.train import common

  level = flags.FLAGS["verbosity"].value if flags.FLAGS["verbosity"].present else -1
  configure_logging(level)
  debug = level >= 1
  try:
    if len(argv) > 1:
      raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
      raise UsageError("--config is required (path/to/config.py[:arg])")
    if not _WORKDIR.value:
      raise UsageError("--workdir is required")
    run_task(_CONFIG.value, _WORKDIR.value)
  except checkpoint.Preempted as e:
    sys.stderr.write(
      f"preempted: {e}\nexit status {EXIT_PREEMPTED}: rerun the same command to resume\n"
    )
    sys.exit(EXIT_PREEMPTED)
  except (common.DivergenceError, checkpoint.CheckpointError) as e:
    _fail(e, EXIT_FAILED, debug)
  except (ValueError, OSError) as e:  # config fields, input files, workdir: user errors
    _fail(e, EXIT_USER_ERROR, debug)


def run() -> None:
  """Console-script entry point (``rlhf-jax``); ``rlhf-jax annotate ...`` runs the annotation
  app's command line (:mod:`rlhf_jax.annotate.cli`) and ``rlhf-jax convert ...`` the checkpoint
  converter (:mod:`rlhf_jax.models.convert`) instead of a training task."""
  if len(sys.argv) > 1 and sys.argv[1] == "annotate":
    from rlhf_jax.annotate.cli import main as annotate_main

    sys.exit(annotate_main(sys.argv[2:]))
  if len(sys.argv) > 1 and sys.argv[1] == "convert":
    from rlhf_jax.models.convert import main as convert_main

    sys.exit(convert_main(sys.argv[2:]))
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  # `python -m rlhf_jax.main`: trainers that import this module (the compare task loads its
  # arms' configs through it) must get this instance, not a second one redefining the flags.
  sys.modules.setdefault("rlhf_jax.main", sys.modules[__name__])
  run()
