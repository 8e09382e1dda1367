"""bench/scale_plan.py: exact state bytes agree with XLA's own argument accounting, the depth
extrapolation and the analytic FLOPs against hand-worked numbers."""

import os
import sys

import jax
import pytest

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
)
import scale_plan  # noqa: E402

from rlhf_jax import sharding  # noqa: E402

TINY = dict(
  n_layers=2,
  d_model=64,
  n_heads=4,
  n_kv_heads=2,
  d_ff=128,
  vocab_size=256,
  tie_embeddings=False,
  qkv_bias=False,
)


@pytest.fixture
def tiny(monkeypatch):
  monkeypatch.setitem(scale_plan.SHAPES, "tiny", TINY)
  return scale_plan.Workload(
    prompt_len=8, response_len=8, rollouts_per_device=2, pairs_per_device=2
  )


@pytest.mark.slow  # one compilation: ~15 s of CPU
def test_reward_step_state_bytes_match_xla(tiny):
  mesh = sharding.make_mesh(1, 8, 1, devices=jax.devices()[:8])
  rec = scale_plan.compile_cell("reward", "tiny", tiny, mesh, None, True)
  sb = rec["state_bytes"]
  # Hand count of the scalar-head model's float32 params: embed 256x64; per layer q 64x64,
  # k/v 64x32, o 64x64, gate/up 64x128, down 128x64 and two norms of 64; final norm 64;
  # score 64x1. Every leaf has the model width (logical axis "embed"), split 8 ways on fsdp;
  # the tie parameter is one replicated float32.
  per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64 * 128 + 128 * 64 + 2 * 64
  model = 4 * (256 * 64 + 2 * per_layer + 64 + 64) // 8
  assert sb["params"] == model + 4
  # Adam's mu and nu for the model and for the tie parameter, plus two int32 step counts.
  assert sb["optimizer"] == 2 * model + 2 * 4 + 2 * 4
  # ids/mask for a and b [16 pairs, 16 tokens] int32 and 16 labels, split 8 ways.
  assert sb["batch"] == (4 * 16 * 16 * 4 + 16 * 4) // 8
  # XLA's own argument accounting is the state (+ step and skip counters) plus the batch.
  assert rec["argument"] == sb["params"] + sb["optimizer"] + sb["batch"] + 2 * 4
  assert rec["temp"] > 0 and rec["rows"] == 16


def test_extrapolate_linear_in_layers():
  at = {"2": {"temp": 100, "output": 7, "alias": 5}, "4": {"temp": 160, "output": 7, "alias": 5}}
  ex = scale_plan.extrapolate(at, 10)
  assert ex == {"temp": 160 + 30 * 6, "temp_per_layer": 30, "non_aliased_output": 2}


def test_forward_flops_hand_count(tiny):
  # One layer's matmul params: q,o 64x64 each, k,v 64x32 each, SwiGLU 3 x 64x128.
  layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
  tokens, seq = 10, 5
  attention = 4 * 2 * 4 * 16 * seq * tokens  # 4 x layers x heads x head_dim x seq x tokens
  assert scale_plan.forward_flops("tiny", tokens, 0, seq, False) == (
    2 * 2 * layer * tokens + attention
  )
  assert scale_plan.forward_flops("tiny", tokens, 3, seq, True) == (
    2 * 2 * layer * tokens + attention + 2 * 64 * 256 * 3
  )
