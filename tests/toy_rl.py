"""The toy RL setting shared by the critic-free and verifiable-reward tests: a 2-layer model
over a 24-token vocabulary, G = 4 samples for each of B = 4 prompts of P = 5 tokens (two of them
left-padded), N = 6 response tokens, and a GRPO configuration."""

import numpy as np

from rlhf_jax import ppo
from rlhf_jax.models import TransformerConfig

VOCAB = 24
BASE = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_len=32)
G = 4  # samples per prompt
B, P, N = 4, 5, 6  # prompts, prompt length, response length: B * G = 16 rollouts
GRPO = ppo.PPOHparams(
  algorithm="grpo",
  group_size=G,
  response_len=N,
  num_minibatches=2,
  epochs=2,
  temperature=1.0,
  eos_id=0,
  pad_id=1,
  kl_target=1.0,
  kl_horizon=100.0,
)


def toy_prompts(seed: int, avoid: int | None = None):
  """``(ids, mask)`` ``[B, P]``: random ids in [2, VOCAB) (``avoid`` replaced by ``avoid + 1``),
  the first two rows left-padded by two pad (1) tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, VOCAB, (B, P)).astype(np.int32)
  if avoid is not None:
    ids[ids == avoid] = avoid + 1
  mask = np.ones_like(ids)
  mask[:2, :2] = 0
  ids[:2, :2] = 1
  return ids, mask
