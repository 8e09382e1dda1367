"""Device mesh, logical-axis rules and shardings for params, optimizer state and batches.

The mesh has three axes, ``('data', 'fsdp', 'tensor')``. Params carry logical axis names
(``embed``, ``vocab``, ``heads``, ``kv_heads``, ``mlp``, ``layers``); the rules below map
them onto mesh axes. Batches are split over ``('data', 'fsdp')``. The same code runs on one
CPU, on simulated CPU devices, and on multi-host TPU/GPU meshes after
``jax.distributed.initialize()`` — every function here works on global arrays.

A dimension that is not divisible by the mesh axes it maps to is replicated instead of
failing (e.g. a 50-token vocabulary on a 4-way tensor axis), so tiny test models and odd
vocabularies still shard everything else.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  "MESH_AXES",
  "BATCH_AXES",
  "DEFAULT_RULES",
  "make_mesh",
  "logical_shardings",
  "params_shardings",
  "init_sharded",
  "batch_sharding",
  "replicated",
  "shard_batch",
  "process_rows",
  "shard_rows",
  "shard_global_batch",
  "to_host",
  "shard_tree",
  "commit",
  "jit_step",
]

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axes. Weights are split over 'fsdp' on the model width and over
# 'tensor' on heads / MLP width / vocabulary (Megatron-style column/row parallel pairs).
DEFAULT_RULES = (
  ("batch", BATCH_AXES),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("layers", None),
)


def make_mesh(
  data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Optional[Sequence[jax.Device]] = None
) -> Mesh:
  """A ``('data', 'fsdp', 'tensor')`` mesh with ``AxisType.Auto`` axes.

  One size may be -1: it takes all remaining devices. Raises ``ValueError`` naming the
  sizes when they do not multiply to the device count.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
  for k, v in sizes.items():
    if v != -1 and v < 1:
      raise ValueError(f"mesh.{k}={v}: sizes must be positive or -1")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if n % fixed:
      raise ValueError(f"mesh: {n} devices are not divisible by the fixed axes {sizes}")
    sizes[free[0]] = n // fixed
  if math.prod(sizes.values()) != n:
    raise ValueError(
      f"mesh: sizes {sizes} multiply to {math.prod(sizes.values())}, but there are {n} devices"
    )
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drop mesh axes from dimensions they do not divide (those dims are replicated)."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for dim, axes in zip(shape, entries):
    fitted.append(axes if dim % _mesh_axes_size(mesh, axes) == 0 else None)
  return P(*fitted)


def logical_shardings(
  logical_specs: Any, shapes: Any, mesh: Mesh, rules: Sequence = DEFAULT_RULES
) -> Any:
  """Map a pytree of logical ``PartitionSpec`` (+ matching shapes) to ``NamedSharding``."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)

  def one(spec, shape):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _fit_spec(spec, shape.shape, mesh))

  return jax.tree.map(one, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def params_shardings(init_fn, *args, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """Shardings of the params that ``init_fn(*args)`` would create (boxed flax variables).

  ``init_fn`` returns flax params whose leaves are ``nn.LogicallyPartitioned`` boxes (the
  output of ``module.init(...)['params']``). Nothing is allocated: shapes come from
  ``jax.eval_shape``.
  """
  boxed = jax.eval_shape(init_fn, *args)
  logical = nn.get_partition_spec(boxed)
  shapes = nn.meta.unbox(boxed)
  return logical_shardings(logical, shapes, mesh, rules)


def init_sharded(init_fn, *args, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """Run ``init_fn(*args)`` under ``jit`` so params are created already sharded.

  Returns ``(params, shardings)`` with plain (unboxed) arrays.
  """
  shardings = params_shardings(init_fn, *args, mesh=mesh, rules=rules)

  def unboxed(*a):
    return nn.meta.unbox(init_fn(*a))

  params = jax.jit(unboxed, out_shardings=shardings)(*args)
  return params, shardings


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension split over ``('data', 'fsdp')``; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Place a host batch (pytree of arrays with a leading batch dim) on the mesh.

  Single-process: the arrays are the global batch. Multi-process: each process passes
  its own slice, and the global array is assembled from the process-local pieces.
  """

  def one(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.device_put(x, replicated(mesh))
    sharding = batch_sharding(mesh, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(one, batch)


def process_rows(
  n_rows: int,
  mesh: Mesh,
  process_index: Optional[int] = None,
  process_of: Optional[Callable[[jax.Device], int]] = None,
) -> np.ndarray:
  """Positions (ascending) of the rows of an ``n_rows`` global batch, split as
  :func:`batch_sharding`, that the devices of one process hold: the rows it reads.

  Processes whose devices split the batch get disjoint sets; processes whose devices hold
  replicas of the same rows (a batch axis of size 1 across processes, e.g. a mesh of only
  ``tensor``) get the same set. The positions come from the mesh's own device-to-index map,
  so any device order is handled, and they are in the order in which
  ``jax.make_array_from_process_local_data`` places a process's data on its devices (the
  sorted union of its devices' row blocks).

  Args:
    n_rows: the global batch size (divisible by the ``data x fsdp`` size).
    mesh: the mesh.
    process_index: defaults to ``jax.process_index()``.
    process_of: which process holds a device (default ``device.process_index``); simulated
      processes on one host's devices pass their own assignment.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_of = process_of or (lambda d: d.process_index)
  held = np.zeros(n_rows, bool)
  for device, (rows, *_) in batch_sharding(mesh, 1).devices_indices_map((n_rows,)).items():
    if process_of(device) == process_index:
      held[rows] = True
  return np.flatnonzero(held)


@functools.lru_cache(maxsize=32)
def _own_rows(n_rows: int, mesh: Mesh, process_index: int) -> np.ndarray:
  """:func:`process_rows` of this process, computed once per (batch size, mesh): the
  training loops ask for it every step."""
  return process_rows(n_rows, mesh, process_index)


def shard_rows(data: Mapping[str, Any], rows: np.ndarray, mesh: Mesh) -> dict:
  """The global batch ``{k: data[k][rows]}`` on the mesh, each process indexing only its
  own rows of it (:func:`process_rows` of ``len(rows)``): per-process, disjoint,
  deterministic reads assembled into global arrays.

  Every process passes the same ``rows`` (positions into ``data``, drawn from a shared
  seed), so the global batch is the one a single process builds, whatever the number of
  processes, and a run's trajectory does not depend on it. ``data`` may be any row-indexable
  source (arrays ``[N, ...]``, a memory-mapped file); only the selected rows are read.
  """
  rows = np.asarray(rows)
  if jax.process_count() == 1:
    return shard_batch({k: np.asarray(v[rows]) for k, v in data.items()}, mesh)
  mine = rows[_own_rows(len(rows), mesh, jax.process_index())]
  out = {}
  for key, v in data.items():
    x = np.asarray(v[mine])
    out[key] = jax.make_array_from_process_local_data(
      batch_sharding(mesh, x.ndim), x, (len(rows),) + x.shape[1:]
    )
  return out


def shard_global_batch(batch: Any, mesh: Mesh) -> Any:
  """Place a host batch that every process holds in full (the same global rows everywhere)
  on the mesh, each process transferring only the rows its devices own.

  For batches that every process has built in full anyway: the small sampling and
  evaluation batches (prompts for reward normalisation or evaluation samples, pairs to
  score), and text each process decoded. Training loops read their batches with
  :func:`shard_rows`, each process reading only its own rows. Either way the global batch is
  the same as one process would build, whatever the number of processes. Scalars are
  replicated. Single-process it equals :func:`shard_batch`.
  """

  def one(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.device_put(x, replicated(mesh))
    sharding = batch_sharding(mesh, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, batch)


def to_host(tree: Any) -> Any:
  """Every leaf as a numpy array of its global value, in every process.

  ``np.asarray`` of an array sharded over several processes fails (some shards live
  elsewhere); this gathers them (a collective: every process must call it) and is a plain
  fetch single-process.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils

  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def shard_tree(tree: Any, shardings: Any) -> Any:
  """``device_put`` a pytree onto matching shardings (e.g. restored or converted params)."""
  return jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), tree, shardings)


def commit(tree: Any, mesh: Mesh) -> Any:
  """Place every leaf that is not yet on ``mesh`` there, replicated.

  A freshly initialised training state mixes params sharded on the mesh with scalars
  (step, RNG, KL coefficient) on one device; a jitted step returns all of them on the mesh,
  so without this the second call would see new input shardings and compile again.
  """

  def one(x):
    s = getattr(x, "sharding", None)
    if isinstance(s, NamedSharding) and s.mesh == mesh:
      return x
    return jax.device_put(x, replicated(mesh))

  return jax.tree.map(one, tree)


def jit_step(fn, state: Any, mesh: Mesh, donate: bool = True):
  """``jax.jit(fn)`` for ``fn(state, *args) -> (state, metrics)`` whose state keeps the
  shardings of ``state`` (already committed with :func:`commit`) and whose metrics are
  replicated: one compilation, and the state is donated."""
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(
    fn, donate_argnums=0 if donate else (), out_shardings=(state_shardings, replicated(mesh))
  )
