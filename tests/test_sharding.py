"""Sharded forward passes on 8 simulated CPU devices equal the single-device result."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from rlhf_jax import sharding
from rlhf_jax.models import RopeScaling, Transformer, TransformerConfig

GPT2 = TransformerConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, max_len=32)
LLAMA = TransformerConfig(
  vocab_size=100,
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  norm="rmsnorm",
  mlp="swiglu",
  activation="silu",
  position="rope",
  qkv_bias=False,
  out_bias=False,
  mlp_bias=False,
  tie_embeddings=False,
  head="both",
  rope_scaling=RopeScaling(original_max_position_embeddings=16),
)
MESHES = [(1, 8, 1), (2, 2, 2), (1, 2, 4), (8, 1, 1)]


def _batch(seed=0, b=8, t=12, vocab=96):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  for row in range(b):
    mask[row, : row % 4] = 0  # left padding of varying length
  return ids, mask


def test_make_mesh_sizes_and_errors():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(data=2, fsdp=-1, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="multiply to"):
    sharding.make_mesh(data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.make_mesh(data=3, fsdp=-1)


# The default suite: both families on the mixed 2x2x2 mesh (every axis split); the other
# meshes run in the slow suite (the trainers' tests run on 8-way data meshes anyway).
FORWARD_CASES = [
  pytest.param(
    cfg,
    shape,
    id=f"{'x'.join(map(str, shape))}-{name}",
    marks=[] if shape == (2, 2, 2) else [pytest.mark.slow],
  )
  for shape in MESHES
  for name, cfg in (("gpt2", GPT2), ("llama", LLAMA))
]


@pytest.mark.parametrize("cfg, shape", FORWARD_CASES)
def test_sharded_forward_equals_single_device(cfg, shape):
  model = Transformer(cfg)
  ids, mask = _batch(vocab=cfg.vocab_size)
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  rng = jax.random.PRNGKey(0)
  ref_params = jax.jit(lambda r: nn.meta.unbox(init(r)))(rng)
  ref = model.apply({"params": ref_params}, ids, mask)

  mesh = sharding.make_mesh(*shape)
  params, shardings = sharding.init_sharded(init, rng, mesh=mesh)
  # Params really are split: the q kernel's head axis over 'tensor', width over 'fsdp'.
  q_spec = shardings["layers"]["attn"]["q"]["kernel"].spec
  assert tuple(q_spec) == (None, "fsdp", "tensor")
  assert params["layers"]["attn"]["q"]["kernel"].sharding.is_equivalent_to(
    shardings["layers"]["attn"]["q"]["kernel"], 3
  )
  batch = sharding.shard_batch({"ids": ids, "mask": mask}, mesh)
  out = jax.jit(lambda p, b: model.apply({"params": p}, b["ids"], b["mask"]))(params, batch)
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_indivisible_dims_are_replicated():
  mesh = sharding.make_mesh(1, 1, 8)
  cfg = GPT2.replace(vocab_size=50)  # 50 % 8 != 0
  model = Transformer(cfg)
  init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  shardings = sharding.params_shardings(init, jax.random.PRNGKey(0), mesh=mesh)
  assert tuple(shardings["embed"]["embedding"].spec)[0] is None  # vocab axis replicated
  assert tuple(shardings["layers"]["mlp"]["up"]["kernel"].spec) == (None, "fsdp", "tensor")
  assert isinstance(shardings["norm_final"]["scale"], NamedSharding)


# -------------------------------------------------------------- per-process rows of a batch
def _simulated_local_shards(global_BX, mesh, n_proc):
  """What ``jax.make_array_from_process_local_data`` puts on each device when the 8 devices
  belong to ``n_proc`` simulated processes (device id // (8 / n_proc)), each passing the rows
  :func:`sharding.process_rows` names: a process's devices take, in the order of their blocks'
  first rows, consecutive blocks of its local data."""
  process_of = lambda d: d.id // (8 // n_proc)  # noqa: E731
  n = len(global_BX)
  index = sharding.batch_sharding(mesh, 2).devices_indices_map(global_BX.shape)
  shards = {}
  for p in range(n_proc):
    local = global_BX[sharding.process_rows(n, mesh, p, process_of)]
    own = {d: ix[0] for d, ix in index.items() if process_of(d) == p}
    starts = sorted({s.start or 0 for s in own.values()})
    for d, s in own.items():
      size = len(range(*s.indices(n)))
      k = starts.index(s.start or 0) if len(local) < n else (s.start or 0) // size
      shards[d] = local[k * size : (k + 1) * size]
  return shards


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 4, 2), (1, 2, 4), (2, 2, 2), (1, 1, 8)])
@pytest.mark.parametrize("n_proc", [2, 4])
def test_process_rows_assemble_the_global_batch(shape, n_proc):
  mesh = sharding.make_mesh(*shape)
  n = 16
  global_BX = np.arange(n * 3).reshape(n, 3)
  # every device gets exactly the rows the whole batch would give it
  placed = sharding.shard_global_batch(global_BX, mesh)
  expected = {s.device: np.asarray(s.data) for s in placed.addressable_shards}
  got = _simulated_local_shards(global_BX, mesh, n_proc)
  assert set(got) == set(expected)
  for d in expected:
    np.testing.assert_array_equal(got[d], expected[d])
  # together the processes read every row; two processes read the same rows (replicas: fewer
  # batch shards than processes) or disjoint ones; with a shard per process, each row once
  process_of = lambda d: d.id // (8 // n_proc)  # noqa: E731
  parts = [set(sharding.process_rows(n, mesh, p, process_of).tolist()) for p in range(n_proc)]
  assert set().union(*parts) == set(range(n))
  assert all(a == b or not a & b for a in parts for b in parts)
  n_batch_shards = shape[0] * shape[1]
  if n_batch_shards >= n_proc:
    assert sum(map(len, parts)) == n
  if n_batch_shards == 1:
    assert all(part == set(range(n)) for part in parts)


def test_process_rows_by_hand():
  mesh = sharding.make_mesh(2, 4, 1)  # batch shards 0..7 on devices 0..7, 2 rows each
  by_half = lambda d: d.id // 4  # noqa: E731
  np.testing.assert_array_equal(sharding.process_rows(16, mesh, 1, by_half), np.arange(8, 16))
  # processes holding every other device read interleaved rows
  by_parity = lambda d: d.id % 2  # noqa: E731
  np.testing.assert_array_equal(
    sharding.process_rows(16, mesh, 0, by_parity), [0, 1, 4, 5, 8, 9, 12, 13]
  )
  # a mesh whose device order is reversed gives process 0 (devices 0-3) the second half
  flipped = sharding.make_mesh(2, 4, 1, devices=jax.devices()[::-1])
  np.testing.assert_array_equal(sharding.process_rows(16, flipped, 0, by_half), np.arange(8, 16))
  # one process holds all of it
  np.testing.assert_array_equal(sharding.process_rows(16, mesh), np.arange(16))


def test_shard_rows_is_the_indexed_global_batch():
  mesh = sharding.make_mesh(2, 4, 1)
  data = {"ids": np.arange(40 * 3).reshape(40, 3), "label": np.arange(40) % 3}
  rows = np.random.default_rng(0).permutation(40)[:16]
  got = sharding.shard_rows(data, rows, mesh)
  for k, v in data.items():
    np.testing.assert_array_equal(np.asarray(got[k]), v[rows])
    assert got[k].sharding == sharding.batch_sharding(mesh, v.ndim)
