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
