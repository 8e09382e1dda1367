"""LM (pretrain / SFT) step: loss against a numpy oracle, target masking, learning."""

import jax
import numpy as np
import optax

from rlhf_jax import sft
from rlhf_jax.models import Transformer, TransformerConfig, init_params

CFG = TransformerConfig(vocab_size=12, d_model=32, n_layers=1, n_heads=2, max_len=16)
MODEL = Transformer(CFG)


def _numpy_nll(logits, ids, mask, loss_mask):
  logits = np.asarray(logits, np.float64)
  total, n = 0.0, 0
  for b in range(ids.shape[0]):
    for t in range(ids.shape[1] - 1):
      if mask[b, t + 1] and loss_mask[b, t + 1]:
        z = logits[b, t]
        total -= z[ids[b, t + 1]] - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
        n += 1
  return total / n, n


def test_lm_loss_matches_numpy_oracle_and_respects_masks():
  params = init_params(MODEL, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 12, (3, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, 7:] = 0
  loss_mask = mask.copy()
  loss_mask[:, :4] = 0  # prompt tokens are not targets (SFT)
  batch = dict(ids=ids, mask=mask, loss_mask=loss_mask)
  loss, n = sft.lm_loss(MODEL, params, batch)
  logits = MODEL.apply({"params": params}, ids, mask)
  want, want_n = _numpy_nll(logits, ids, mask, loss_mask)
  assert int(n) == want_n
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # Garbage after the padding boundary changes nothing.
  ids2 = ids.copy()
  ids2[0, 7:] = 5
  loss2, _ = sft.lm_loss(MODEL, params, dict(batch, ids=ids2))
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def test_lm_step_learns_a_repeating_sequence():
  opt = optax.adam(1e-2)
  state = sft.init_lm_state(init_params(MODEL, jax.random.PRNGKey(0)), opt)
  step = jax.jit(sft.make_lm_step(MODEL, opt), donate_argnums=0)
  ids = np.tile(np.arange(8, dtype=np.int32), (4, 2))[:, :12]
  batch = dict(ids=ids, mask=np.ones_like(ids), loss_mask=np.ones_like(ids))
  losses = []
  for _ in range(40):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.1 * losses[0]
  assert int(m["skipped_updates"]) == 0
