"""bench/_common.py: the benchmark sizes build the models they name, and the FLOP counts the
benchmarks divide by are the models' own matmul weights (counted from the initialised
parameters, not from the formula)."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from rlhf_jax.models import Transformer, init_params

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")


@pytest.fixture()
def common():
  spec = importlib.util.spec_from_file_location("bench_common", os.path.join(BENCH, "_common.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _matmul_weights(params):
  """Scalars in the blocks' matmul kernels (stacked over layers): the dense matmul weights."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params["layers"])[0]:
    if str(getattr(path[-1], "key", path[-1])) == "kernel":
      total += int(np.prod(leaf.shape))
  return total


@pytest.mark.parametrize("size", ["small", "smollm2"])
def test_dense_params_match_the_initialised_model(common, size):
  cfg = common.transformer_config(size, "lm")
  params = jax.eval_shape(lambda: init_params(Transformer(cfg), jax.random.PRNGKey(0)))
  assert _matmul_weights(params) == cfg.n_layers * common.dense_params_per_layer(cfg)


def test_smollm2_is_the_checkpoints_shape(common):
  cfg = common.transformer_config("smollm2", "scalar", scan_unroll=1)
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (30, 576, 9, 3)
  assert (cfg.d_ff, cfg.vocab_size, cfg.mlp, cfg.norm, cfg.position) == (
    1536,
    49152,
    "swiglu",
    "rmsnorm",
    "rope",
  )
  assert cfg.head == "scalar" and cfg.scan_unroll == 1 and cfg.tie_embeddings
  # 134.5 M parameters with the tied embedding, as SmolLM2-135M has.
  params = jax.eval_shape(
    lambda: init_params(Transformer(cfg.replace(head="lm")), jax.random.PRNGKey(0))
  )
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert n == 134_515_008


def test_gpt2_flops_are_the_anchor_formula(common):
  # The GPT-2 sizes' count equals the one the recorded results used: 12 d^2 per layer of
  # weights, attention 2 x d x T multiply-adds per token, forward + backward = 3x.
  cfg = common.transformer_config("medium", "scalar")
  n, d, t, seqs = 8, 512, 64, 64
  old = 6 * 12 * n * d**2 * seqs * t + 12 * n * d * t * seqs * t
  assert common.reward_step_flops(cfg, t, seqs) == old
