"""KL estimators between the policy and the reference model, and KL-coefficient controllers.

Estimators follow Schulman's "Approximating KL divergence" note. With samples from the policy π
and ``log ρ = log π_ref - log π`` per token:

* ``k1 = -log ρ`` — unbiased, high variance, can be negative per token;
* ``k2 = ½ (log ρ)²`` — biased, low variance, ≥ 0;
* ``k3 = (ρ - 1) - log ρ`` — unbiased, low variance, ≥ 0.

The controllers are pure: a ``KLControllerState`` pytree and an update function with the same
signature for the adaptive and the fixed rule, so a training step can carry either.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from rlhf_jax.ops import acc_dtype, masked_sum

__all__ = [
  "ESTIMATORS",
  "K3_LOG_RATIO_CLAMP",
  "K3_VALUE_CLAMP",
  "kl_penalty",
  "sequence_kl",
  "KLControllerState",
  "adaptive_kl_init",
  "adaptive_kl_update",
  "fixed_kl_init",
  "fixed_kl_update",
]

ESTIMATORS = ("k1", "k2", "k3")
K3_LOG_RATIO_CLAMP = 20.0
"""k3 clamps ``log ρ`` to ``±20`` before ``exp`` (verl's convention)."""
K3_VALUE_CLAMP = 10.0
"""k3's value is clamped to ``±10`` (verl's convention)."""


def kl_penalty(logp, logp_ref, estimator="k1", mask=None):
  """Per-token KL estimate ``k(t)`` from the sampled tokens' log-probs.

  ``log ρ = logp_ref - logp``;
  ``k1 = -log ρ``; ``k2 = ½ (log ρ)²``;
  ``k3 = clip((ρ' - 1) - log ρ', -10, 10)`` with ``log ρ' = clip(log ρ, -20, 20)``.

  The clamps (verl's convention) keep k3 and its gradient finite however far the policy
  drifts; outside them k3 is constant and its gradient 0. k1 and k2 are not clamped.
  No reduction; gradients flow into both arguments (stop them in the caller if wanted).

  Args:
      logp: ``[B, T]`` (any shape) log-probs of the sampled tokens under the policy.
      logp_ref: same shape, under the reference model.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (static).
      mask: optional, same shape; masked-out positions return 0 (garbage there is ignored).

  Returns:
      ``kl_BT`` in the accumulation dtype.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"kl_penalty: estimator must be one of {ESTIMATORS}, got {estimator!r}.")
  logp, logp_ref = jnp.asarray(logp), jnp.asarray(logp_ref)
  chex.assert_equal_shape([logp, logp_ref])
  dtype = acc_dtype(logp, logp_ref)
  log_ratio = logp_ref.astype(dtype) - logp.astype(dtype)
  if mask is not None:
    valid = jnp.broadcast_to(jnp.asarray(mask), log_ratio.shape) != 0
    log_ratio = jnp.where(valid, log_ratio, 0)
  if estimator == "k1":
    kl = -log_ratio
  elif estimator == "k2":
    kl = 0.5 * jnp.square(log_ratio)
  else:
    log_ratio = jnp.clip(log_ratio, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    kl = jnp.clip(jnp.expm1(log_ratio) - log_ratio, -K3_VALUE_CLAMP, K3_VALUE_CLAMP)
  return kl


def sequence_kl(logp_BT, logp_ref_BT, mask_BT, estimator="k1"):
  """Per-sequence KL: the masked sum over time of :func:`kl_penalty`.

  ``KL_b = Σ_t m_{b,t} k(t)``. With ``estimator="k1"`` its batch mean is the quantity OAI's
  adaptive controller observes (see :func:`adaptive_kl_update`).

  Args:
      logp_BT: ``[..., T]`` policy log-probs.
      logp_ref_BT: same shape, reference log-probs.
      mask_BT: same shape.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

  Returns:
      ``kl_B`` of shape ``logp.shape[:-1]``.
  """
  kl_BT = kl_penalty(logp_BT, logp_ref_BT, estimator, mask=mask_BT)
  return masked_sum(kl_BT, mask_BT, axis=-1)


class KLControllerState(NamedTuple):
  """State of a KL-coefficient controller: the current coefficient ``beta`` (scalar array)."""

  beta: jax.Array


def adaptive_kl_init(init_beta):
  """Initial state of the adaptive controller: ``β = init_beta`` (e.g. 0.15 in OAI)."""
  init_beta = jnp.asarray(init_beta)
  return KLControllerState(beta=init_beta.astype(acc_dtype(init_beta)))


def adaptive_kl_update(state, observed_kl, n_steps, target, horizon):
  """One step of OAI's proportional KL controller (Ziegler et al. 2019).

  ``e = clip(KL / target - 1, -0.2, 0.2)``;  ``β ← β · (1 + e · n_steps / horizon)``.

  ``observed_kl`` must be the **batch mean of the per-sequence sum** of k1 (nats per
  response): ``jnp.mean(sequence_kl(logp, logp_ref, mask))``, and ``target`` is in the same
  units (OAI: 6 nats). verl instead feeds a per-token mean; such a target is not
  interchangeable with ours (it is ours divided by the response length).

  Args:
      state: ``KLControllerState``.
      observed_kl: scalar, see above.
      n_steps: number of samples in the rollout batch (may be traced).
      target: target KL (may be traced).
      horizon: controller horizon, e.g. 10 000 (may be traced).

  Returns:
      The new ``KLControllerState``.
  """
  dtype = state.beta.dtype
  observed_kl = jnp.asarray(observed_kl, dtype)
  chex.assert_rank(observed_kl, 0)
  error = jnp.clip(observed_kl / jnp.asarray(target, dtype) - 1, -0.2, 0.2)
  mult = 1 + error * jnp.asarray(n_steps, dtype) / jnp.asarray(horizon, dtype)
  return KLControllerState(beta=state.beta * mult)


def fixed_kl_init(beta):
  """Initial state of the fixed controller: ``β = beta`` forever."""
  return adaptive_kl_init(beta)


def fixed_kl_update(state, observed_kl, n_steps, target, horizon):
  """Fixed controller: returns ``state`` unchanged (same signature as ``adaptive_kl_update``)."""
  del observed_kl, n_steps, target, horizon
  return state
