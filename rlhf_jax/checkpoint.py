"""Checkpoints: orbax ``CheckpointManager`` (asynchronous, keeps the last N) + preemption guard.

There is no checkpointer object with hidden state: :func:`open_manager` returns a plain
``orbax.checkpoint.CheckpointManager`` and the functions below take it as their first argument::

    manager = open_manager(f"{workdir}/ckpt", max_to_keep=3)
    abstract = jax.eval_shape(init_state)                     # + shardings, see below
    if latest_step(manager) is not None:
      state, extra = restore(manager, abstract)
    with PreemptionGuard() as guard:
      for step in range(start, num_steps):
        state, metrics = train_step(state, batch)
        stop = guard.should_stop()           # collective in multi-process runs
        if step % save_every == 0 or stop:
          save(manager, step, state, extra={"data_position": pos}, force=stop, wait=stop)
        if stop:
          break
    manager.wait_until_finished()
    manager.close()

On-disk layout of one step ``<directory>/<step>/``:

* ``state/`` — the array pytree (orbax ``StandardSave``, OCDBT/Tensorstore). The pytree is
  stored as a nested dict keyed by the pytree's key path (``params/dense/kernel``,
  ``opt_state/0/mu/...``), so any pytree (dicts, flax ``struct`` dataclasses, NamedTuples such
  as optax states, tuples) round-trips and a structural mismatch can be reported by key.
* ``extra/`` — a JSON dict (data-iterator position, config snapshot, metrics, ...).
* ``meta/`` — JSON written by this module: the PRNG implementation of every typed key leaf and
  a checksum of every array (two position-weighted wrap-around sums of its bit patterns,
  independent of the sharding), verified on restore so flipped bytes stop the run instead of
  poisoning it. A state with non-finite floating-point values is never saved.

Typed PRNG keys (``jax.random.key``) are supported: they are stored as their raw ``uint32``
key data (``jax.random.key_data``) and re-wrapped (``jax.random.wrap_key_data``) on restore
when the abstract leaf has a key dtype. Raw ``uint32`` keys (``jax.random.PRNGKey``) are
ordinary arrays and need nothing special.

Preemption: :class:`PreemptionGuard` turns SIGTERM into a stop flag; a loop that stopped for it
saves and raises :class:`Preempted`, and the entry point exits with :data:`EXIT_PREEMPTED`
(75, ``EX_TEMPFAIL``: "temporary failure, rerun me"), never 0. The signal is also recorded for
the whole process, so an orchestrating loop (the pipeline) can stop at its next stage boundary
with :func:`check_preemption`.

Writes are atomic: orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it
only after every item is complete, so a failed or interrupted save never touches the steps
already written and is never listed by :func:`latest_step`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
  "EXIT_PREEMPTED",
  "Preempted",
  "CheckpointError",
  "open_manager",
  "save",
  "latest_step",
  "all_steps",
  "restore",
  "abstract_like",
  "PreemptionGuard",
  "preemption_requested",
  "check_preemption",
  "clear_preemption",
]

_log = logging.getLogger(__name__)

_FORMAT = "rlhf_jax.checkpoint/1"
_ITEMS = ("state", "extra", "meta")


# Exit status of a run stopped by SIGTERM after saving what it needs to resume (sysexits.h
# EX_TEMPFAIL). Launchers treat it as "preempted: rerun the same command".
EXIT_PREEMPTED = 75


class CheckpointError(ValueError):
  """A checkpoint cannot be read, is corrupt, or does not match the expected state structure;
  or a state with non-finite values was about to be saved."""


class Preempted(Exception):
  """A stop signal ended the run early; what is needed to resume has been saved."""


# ----------------------------------------------------------------------------- manager


def _is_local(directory: str) -> bool:
  return "://" not in directory


def open_manager(
  directory: str | os.PathLike,
  max_to_keep: Optional[int] = 3,
  async_save: bool = True,
  *,
  create: bool = True,
) -> ocp.CheckpointManager:
  """Opens (and by default creates) a checkpoint directory.

  Args:
    directory: local path or a URL orbax understands (``gs://...``).
    max_to_keep: number of most recent steps kept on disk (``None`` keeps all).
    async_save: write in a background thread; ``save`` returns once arrays are copied to host.
    create: create the directory if missing; with ``False`` a missing directory is an error.

  Returns:
    An ``orbax.checkpoint.CheckpointManager``. Call ``manager.close()`` (which waits for pending
    writes) when done.

  Raises:
    NotADirectoryError: the path exists and is not a directory.
    FileNotFoundError: ``create=False`` and the directory does not exist.
  """
  directory = os.fspath(directory)
  if _is_local(directory):
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
      raise NotADirectoryError(f"checkpoint directory {directory!r} exists and is not a directory")
    if not create and not os.path.isdir(directory):
      raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(
    directory,
    options=options,
    item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "extra": ocp.JsonCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
    },
  )


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
  """The newest completely written step, or ``None`` when there is none."""
  return manager.latest_step()


def all_steps(manager: ocp.CheckpointManager) -> list[int]:
  """All completely written steps, ascending."""
  return sorted(manager.all_steps())


# ----------------------------------------------------------------------------- pytree <-> dict


def _key_name(k) -> str:
  if isinstance(k, jax.tree_util.DictKey):
    return str(k.key)
  if isinstance(k, jax.tree_util.GetAttrKey):
    return k.name
  if isinstance(k, jax.tree_util.SequenceKey):
    return str(k.idx)
  if isinstance(k, jax.tree_util.FlattenedIndexKey):
    return str(k.key)
  return str(k)


def _flatten(tree: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
  """Leaves of ``tree`` with their key paths as tuples of strings, plus the treedef."""
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [tuple(_key_name(k) for k in p) for p, _ in path_leaves]
  leaves = [leaf for _, leaf in path_leaves]
  return paths, leaves, treedef


def _nest(paths: list[tuple[str, ...]], leaves: list[Any]) -> dict:
  """``{('a', 'b'): x}`` -> ``{'a': {'b': x}}``; raises on ambiguous key paths."""
  root: dict = {}
  for path, leaf in zip(paths, leaves):
    if not path:
      raise ValueError(
        "checkpoint state must be a container (dict, dataclass, tuple, ...), not a single array"
      )
    node = root
    for i, name in enumerate(path[:-1]):
      child = node.setdefault(name, {})
      if not isinstance(child, dict):
        raise ValueError(
          f"checkpoint state: key path {'/'.join(path[: i + 1])!r} is both a leaf and a container"
        )
      node = child
    if path[-1] in node:
      raise ValueError(
        f"checkpoint state: key path {'/'.join(path)!r} occurs twice (e.g. "
        "keys 0 and '0' in one dict)"
      )
    node[path[-1]] = leaf
  return root


def _walk(nested: Any, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
  if isinstance(nested, dict):
    for k, v in nested.items():
      yield from _walk(v, prefix + (str(k),))
  else:
    yield prefix, nested


def _is_key_dtype(dtype) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


# ----------------------------------------------------------------------------- checksums

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _leaf_digest(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(checksum uint32[2], all_finite bool)`` of one array, independent of its sharding.

  The checksum is two wrap-around sums of the elements' bit patterns, the second weighted by
  the (odd) flat position, so a flipped bit or swapped elements change it.
  """
  x = jnp.asarray(x)
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size in _UINT:
    bits = jax.lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32)
  else:  # 8-byte types (x64): two uint32 words per element
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = bits.reshape(-1)
  pos = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * pos, dtype=jnp.uint32)]), finite


@jax.jit
def _digests(leaves: list) -> tuple[list, list]:
  out = [_leaf_digest(x) for x in leaves]
  return [d for d, _ in out], [f for _, f in out]


def _host_digests(leaves: list) -> tuple[list[list[int]], list[bool]]:
  sums, finite = jax.device_get(_digests(list(leaves)))
  return [[int(v) for v in np.asarray(d)] for d in sums], [bool(f) for f in finite]


# ----------------------------------------------------------------------------- save


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  extra: Optional[dict] = None,
  force: bool = False,
  wait: bool = False,
) -> bool:
  """Saves ``state`` (a pytree of arrays) and ``extra`` (a JSON-able dict) as ``step``.

  Must be called by every process (orbax saves are collective). With an asynchronous
  manager, device arrays are copied to host before this returns, so ``state`` may be donated
  to the next step right away.

  Args:
    manager: from :func:`open_manager`.
    step: training step (an int; the checkpoint's name).
    state: pytree of ``jax.Array`` / numpy arrays / Python scalars. Typed PRNG keys are stored
      as their key data.
    extra: JSON-serialisable dict (data position, config snapshot, metrics); ``None`` -> ``{}``.
    force: save even if the manager's save policy would skip this step.
    wait: block until the write is finished (e.g. before exiting on preemption).

  Returns:
    Whether a checkpoint was started for this step.

  Raises:
    CheckpointError: a floating-point leaf holds NaN or inf (nothing is written).
  """
  extra = {} if extra is None else extra
  if not isinstance(extra, dict):
    raise TypeError(f"checkpoint extra must be a dict, got {type(extra).__name__}")
  try:
    json.dumps(extra)
  except (TypeError, ValueError) as e:
    raise TypeError(f"checkpoint extra for step {step} is not JSON-serialisable: {e}") from e

  paths, leaves, _ = _flatten(state)
  if not leaves:
    raise ValueError("checkpoint state has no array leaves")
  prng_impls = {}
  stored = []
  for path, leaf in zip(paths, leaves):
    if hasattr(leaf, "dtype") and _is_key_dtype(leaf.dtype):
      prng_impls["/".join(path)] = str(jax.random.key_impl(leaf))
      leaf = jax.random.key_data(leaf)
    stored.append(leaf)
  names = ["/".join(p) for p in paths]
  checksums, finite = _host_digests(stored)
  bad = [name for name, ok in zip(names, finite) if not ok]
  if bad:
    raise CheckpointError(
      f"refusing to save step {step} in {os.fspath(manager.directory)!r}: "
      f"non-finite values in {bad[0]!r} ({len(bad)} of {len(names)} arrays);"
      " the training has diverged"
    )
  meta = {"format": _FORMAT, "prng_impls": prng_impls, "checksums": dict(zip(names, checksums))}
  saved = manager.save(
    int(step),
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(_nest(paths, stored)),
      extra=ocp.args.JsonSave(extra),
      meta=ocp.args.JsonSave(meta),
    ),
    force=force,
  )
  if wait:
    manager.wait_until_finished()
  return bool(saved)


# ----------------------------------------------------------------------------- restore


def _default_sharding():
  if jax.process_count() > 1:
    return None
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct`` (with sharding) for every array leaf of ``tree``.

  Accepts concrete arrays (their sharding is kept) or ``ShapeDtypeStruct`` leaves. Leaves
  without a sharding are placed on the first local device (single-process only).
  """

  def one(x):
    sharding = getattr(x, "sharding", None)
    if sharding is None:
      sharding = _default_sharding()
    if sharding is None:
      raise ValueError(
        "abstract state leaf without a sharding: in multi-process runs every "
        "leaf needs one (e.g. jax.ShapeDtypeStruct(shape, dtype, sharding=...))"
      )
    return jax.ShapeDtypeStruct(
      np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype, sharding=sharding
    )

  return jax.tree.map(one, tree)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(os.fspath(manager.directory), str(step))


def restore(
  manager: ocp.CheckpointManager, abstract_state: Any, step: Optional[int] = None
) -> tuple[Any, dict]:
  """Restores ``(state, extra)`` for ``step`` (default: the latest).

  Args:
    manager: from :func:`open_manager`.
    abstract_state: pytree with the structure of the saved state whose leaves are
      ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` (or concrete arrays). The shardings
      decide where the restored arrays live, so a checkpoint written on one mesh restores onto
      any other mesh or a single device. Leaves with a PRNG key dtype are re-wrapped as typed
      keys. Dtypes may differ from the saved ones (orbax casts).
    step: step to restore; ``None`` means :func:`latest_step`.

  Returns:
    ``(state, extra)``: ``state`` has ``abstract_state``'s tree structure, ``extra`` is the dict
    given to :func:`save`.

  Raises:
    FileNotFoundError: no checkpoint (at that step) in the directory.
    CheckpointError: the checkpoint cannot be read, is corrupt (an array's checksum differs
      from the one stored at save time, or it holds non-finite values), or its structure /
      shapes differ from ``abstract_state`` (the message names the step directory and key).
  """
  directory = os.fspath(manager.directory)
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {directory!r}")
  step = int(step)
  if step not in manager.all_steps():
    raise FileNotFoundError(
      f"no checkpoint for step {step} in {directory!r}; available steps: "
      f"{sorted(manager.all_steps())}"
    )
  step_dir = _step_dir(manager, step)

  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved_tree = manager.item_metadata(step)["state"]
    saved_tree = getattr(saved_tree, "tree", saved_tree)
  except Exception as e:  # orbax raises many exception types for unreadable files
    raise CheckpointError(
      f"{step_dir}: cannot read checkpoint metadata: {type(e).__name__}: {e}"
    ) from e
  if not isinstance(saved_tree, dict) or not isinstance(meta, dict):
    raise CheckpointError(
      f"{step_dir}: not a checkpoint written by rlhf_jax.checkpoint (format {_FORMAT})"
    )
  prng_impls = meta.get("prng_impls", {})

  paths, leaves, treedef = _flatten(abstract_like(abstract_state))
  saved = {"/".join(p): m for p, m in _walk(saved_tree)}
  wanted = ["/".join(p) for p in paths]
  missing = [k for k in wanted if k not in saved]
  if missing:
    raise CheckpointError(
      f"{step_dir}: state structure mismatch: key {missing[0]!r} expected by "
      f"the abstract state is not in the checkpoint ({len(missing)} missing "
      f"keys)"
    )
  unexpected = sorted(set(saved) - set(wanted))
  if unexpected:
    raise CheckpointError(
      f"{step_dir}: state structure mismatch: checkpoint key "
      f"{unexpected[0]!r} is not in the abstract state ({len(unexpected)} "
      f"unexpected keys)"
    )

  targets = []
  for name, leaf in zip(wanted, leaves):
    is_key = _is_key_dtype(leaf.dtype)
    if is_key:
      if name not in prng_impls:
        raise CheckpointError(
          f"{step_dir}: key {name!r} is a typed PRNG key in the abstract "
          "state but was saved as a plain array"
        )
      leaf = jax.ShapeDtypeStruct(
        jax.eval_shape(jax.random.key_data, leaf).shape, np.uint32, sharding=leaf.sharding
      )
    saved_shape = tuple(getattr(saved[name], "shape", ()) or ())
    if tuple(leaf.shape) != saved_shape:
      raise CheckpointError(
        f"{step_dir}: shape mismatch at key {name!r}: checkpoint has "
        f"{saved_shape}, abstract state expects {tuple(leaf.shape)}"
        + (" (as key data)" if is_key else "")
      )
    targets.append(leaf)

  try:
    out = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_nest(paths, targets)), extra=ocp.args.JsonRestore()
      ),
    )
  except Exception as e:
    raise CheckpointError(f"{step_dir}: cannot read checkpoint: {type(e).__name__}: {e}") from e

  flat = {"/".join(p): v for p, v in _walk(out["state"])}
  checksums = meta.get("checksums") or {}
  values = [flat[name] for name in wanted]
  got, finite = _host_digests(values)
  for name, value, digest, ok in zip(wanted, values, got, finite):
    want = checksums.get(name)
    same_dtype = np.dtype(value.dtype) == np.dtype(getattr(saved[name], "dtype", value.dtype))
    if (want is not None and same_dtype and list(want) != digest) or not ok:
      what = "checksum mismatch" if ok else "non-finite values"
      raise CheckpointError(
        f"{step_dir}: the checkpoint of step {step} is corrupt ({what} in "
        f"{name!r}); delete {step_dir} to resume from an earlier step, or "
        "start a new workdir"
      )
  restored = []
  for name, leaf in zip(wanted, leaves):
    value = flat[name]
    if _is_key_dtype(leaf.dtype):
      value = jax.random.wrap_key_data(value, impl=prng_impls[name])
    restored.append(value)
  extra = out["extra"] if out["extra"] is not None else {}
  return jax.tree_util.tree_unflatten(treedef, restored), extra


# ----------------------------------------------------------------------------- preemption

# Signals received by any PreemptionGuard of this process (signal handlers are process-wide,
# so this record is too): an orchestrating loop checks it at its stage boundaries.
_RECEIVED: list[int] = []


def preemption_requested() -> bool:
  """Whether this process received a stop signal under a :class:`PreemptionGuard`."""
  return bool(_RECEIVED)


def clear_preemption() -> None:
  """Forgets received stop signals (a new run in the same process)."""
  _RECEIVED.clear()


def check_preemption(where: str) -> None:
  """Raises :class:`Preempted` when a stop signal was received (by any process: collective
  when ``jax.process_count() > 1``, so every process must call it at the same points)."""
  flag = preemption_requested()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
  if flag:
    raise Preempted(
      f"stopped by a signal before {where}; finished stages and checkpoints are "
      "kept: rerun the same command to resume"
    )


class PreemptionGuard:
  """Turns SIGTERM (TPU/GCE preemption, SLURM ``scancel``, k8s eviction) into a stop flag.

  Use as a context manager around the training loop; on exit the previous handlers are put
  back. The handler only sets a flag — the loop decides when to save and stop::

      with PreemptionGuard() as guard:
        for step in ...:
          ...
          if guard.should_stop():        # collective in multi-process runs
            save(manager, step, state, extra, force=True, wait=True)
            break

  ``should_stop()`` is a collective when ``jax.process_count() > 1`` (the flags of all
  processes are OR-ed with ``multihost_utils.process_allgather``), so every process must call it
  at the same steps; all of them then get the same answer. In a single process it only reads the
  flag (no device sync).

  Args:
    handle_sigint: also catch SIGINT (Ctrl-C). A second SIGINT raises ``KeyboardInterrupt``.
  """

  def __init__(self, handle_sigint: bool = False):
    self._signals = (signal.SIGTERM, signal.SIGINT) if handle_sigint else (signal.SIGTERM,)
    self._previous: dict[int, Any] = {}
    self._flag = False
    self.signal_received: Optional[int] = None

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._flag:
      raise KeyboardInterrupt
    self._flag = True
    self.signal_received = signum
    _RECEIVED.append(signum)
    _log.warning("received signal %s: will stop at the next check", signal.Signals(signum).name)

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError(
        "PreemptionGuard must be entered in the main thread (Python only delivers signals there)"
      )
    for sig in self._signals:
      self._previous[sig] = signal.getsignal(sig)
      signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, prev in self._previous.items():
      signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    self._previous.clear()

  def request_stop(self) -> None:
    """Sets the stop flag from code (same effect as receiving the signal)."""
    self._flag = True

  @property
  def stop_requested(self) -> bool:
    """This process's own flag (no synchronisation)."""
    return self._flag

  def should_stop(self) -> bool:
    """Whether any process received a stop signal. Collective when ``process_count() > 1``."""
    if jax.process_count() == 1:
      return self._flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
    return bool(np.any(flags))
