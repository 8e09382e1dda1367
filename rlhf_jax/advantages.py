"""Reward shaping, generalised advantage estimation, group advantages and reward normalisation.

Arrays are batch-major: ``[B, T]`` with time on the last axis, ``mask_BT`` marking response
tokens. Responses are right-padded after their stop token, so each row's mask is ones then zeros;
the functions below only rely on "the last position with mask 1 ends the response" and skip
masked positions, so padding (with any garbage values) never changes a result.

The critic-free group advantages (:func:`grpo_advantages`, :func:`rloo_advantages`) take one
score per sampled response, ``scores_B``, with the ``G = group_size`` samples of one prompt in
consecutive rows: rows ``g·G … g·G + G - 1`` form group ``g``. They return one advantage per
response (``[B]``), broadcast over its tokens by :func:`rlhf_jax.losses.ppo_policy_loss`.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from rlhf_jax.kl import kl_penalty
from rlhf_jax.ops import acc_dtype

__all__ = [
  "ShapedRewards",
  "shape_rewards",
  "last_token_index",
  "gae",
  "grpo_advantages",
  "rloo_advantages",
  "fit_reward_normalization",
  "apply_reward_normalization",
]

_MISSING_STOP = ("none", "replace", "penalty")


class ShapedRewards(NamedTuple):
  """Output of :func:`shape_rewards`.

  Attributes:
      rewards: ``[B, T]`` per-token rewards (0 on masked positions).
      kl: ``[B, T]`` per-token KL estimate ``k(t)`` (0 on masked positions), for logging.
      scores: ``[B]`` scores actually added, after the missing-stop rule.
  """

  rewards: jax.Array
  kl: jax.Array
  scores: jax.Array


def last_token_index(mask_BT):
  """Index of the last position with a non-zero mask in each row.

  Args:
      mask_BT: ``[B, T]`` (any leading shape).

  Returns:
      ``(index_B, nonempty_B)``: int32 indices (``T-1`` for an all-zero row) and whether the
      row has any non-zero entry.
  """
  valid_BT = jnp.asarray(mask_BT) != 0
  T = valid_BT.shape[-1]
  index_B = T - 1 - jnp.argmax(valid_BT[..., ::-1], axis=-1).astype(jnp.int32)
  return index_B, jnp.any(valid_BT, axis=-1)


def shape_rewards(
  scores_B,
  logp_BT,
  logp_ref_BT,
  mask_BT,
  beta,
  estimator="k1",
  has_stop_B=None,
  missing_stop="none",
  missing_stop_value=None,
):
  """Per-token RLHF rewards: KL penalty on every response token plus the score at the end.

  ``r_{b,t} = -β · k_{b,t} · m_{b,t} + [t = last_b] · s_b`` where ``k`` is
  :func:`rlhf_jax.kl.kl_penalty` (``log ρ = logp_ref - logp``) and ``last_b`` is the last
  position with mask 1 (the last real response token of a right-padded row). A row with an
  all-zero mask gets no score and all-zero rewards.

  Missing stop token (responses truncated without EOS), selected by ``missing_stop``:

  * ``"none"``: the score is used as is;
  * ``"replace"`` (OAI): ``s_b = missing_stop_value`` (e.g. -1) where ``has_stop_B`` is False;
  * ``"penalty"`` (TRL ``missing_eos_penalty``): ``s_b = s_b - missing_stop_value``.

  Args:
      scores_B: ``[B]`` (normalised) reward-model scores.
      logp_BT: ``[B, T]`` policy log-probs of the sampled response tokens.
      logp_ref_BT: ``[B, T]`` reference-model log-probs.
      mask_BT: ``[B, T]`` response mask (ones then zeros).
      beta: KL coefficient (scalar, may be traced; e.g. ``KLControllerState.beta``).
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (static).
      has_stop_B: ``[B]`` bool, whether each response contains the stop token; required
          unless ``missing_stop="none"``.
      missing_stop: ``"none"``, ``"replace"`` or ``"penalty"`` (static).
      missing_stop_value: replacement score or penalty (may be traced).

  Returns:
      ``ShapedRewards(rewards, kl, scores)`` in the accumulation dtype.
  """
  if missing_stop not in _MISSING_STOP:
    raise ValueError(
      f"shape_rewards: missing_stop must be one of {_MISSING_STOP}, got {missing_stop!r}."
    )
  scores_B, logp_BT, logp_ref_BT, mask_BT = (
    jnp.asarray(a) for a in (scores_B, logp_BT, logp_ref_BT, mask_BT)
  )
  chex.assert_rank([scores_B, logp_BT], [1, 2])
  chex.assert_equal_shape([logp_BT, logp_ref_BT, mask_BT])
  chex.assert_equal_shape_prefix([logp_BT, scores_B], 1)
  dtype = acc_dtype(scores_B, logp_BT, logp_ref_BT)
  scores_B = scores_B.astype(dtype)
  if missing_stop != "none":
    if has_stop_B is None or missing_stop_value is None:
      raise ValueError(
        f"shape_rewards: missing_stop={missing_stop!r} needs has_stop_B and missing_stop_value."
      )
    has_stop_B = jnp.asarray(has_stop_B)
    chex.assert_equal_shape([has_stop_B, scores_B])
    value = jnp.asarray(missing_stop_value, dtype)
    fallback_B = value if missing_stop == "replace" else scores_B - value
    scores_B = jnp.where(has_stop_B, scores_B, fallback_B)
  kl_BT = kl_penalty(logp_BT, logp_ref_BT, estimator, mask=mask_BT)
  last_B, nonempty_B = last_token_index(mask_BT)
  T = mask_BT.shape[-1]
  at_last_BT = (jnp.arange(T)[None, :] == last_B[:, None]) & nonempty_B[:, None]
  rewards_BT = -jnp.asarray(beta, dtype) * kl_BT + jnp.where(at_last_BT, scores_B[:, None], 0)
  return ShapedRewards(rewards=rewards_BT, kl=kl_BT, scores=scores_B)


def gae(rewards_BT, values_BT, mask_BT, gamma, lam):
  """Generalised advantage estimation (Schulman et al. 2016) as a reverse ``lax.scan``.

  ``δ_t = r_t + γ V_{t+1} - V_t``;  ``A_t = δ_t + γ λ A_{t+1}``;  ``R_t = A_t + V_t``, with
  ``V`` and ``A`` after the last real token taken as 0. Time runs over the positions with
  mask 1 only: masked positions are skipped (their reward and value are ignored, and
  ``V_{t+1}``/``A_{t+1}`` come from the next *unmasked* position), so a right-padded row gives
  exactly the advantages of the unpadded row. Masked outputs are 0. Returns are computed from
  the raw advantages; whiten advantages afterwards (:func:`rlhf_jax.ops.whiten`).

  Args:
      rewards_BT: ``[B, T]`` per-token rewards (e.g. :func:`shape_rewards`).
      values_BT: ``[B, T]`` value predictions of the rollout.
      mask_BT: ``[B, T]`` response mask.
      gamma: discount γ (may be traced).
      lam: GAE λ (may be traced).

  Returns:
      ``(advantages_BT, returns_BT)`` in the accumulation dtype.
  """
  rewards_BT, values_BT, mask_BT = (jnp.asarray(a) for a in (rewards_BT, values_BT, mask_BT))
  chex.assert_rank(rewards_BT, 2)
  chex.assert_equal_shape([rewards_BT, values_BT, mask_BT])
  dtype = acc_dtype(rewards_BT, values_BT)
  valid_BT = mask_BT != 0
  rewards_BT = jnp.where(valid_BT, rewards_BT.astype(dtype), 0)
  values_BT = jnp.where(valid_BT, values_BT.astype(dtype), 0)
  gamma = jnp.asarray(gamma, dtype)
  discount = gamma * jnp.asarray(lam, dtype)

  def step(carry, x):
    next_value_B, next_adv_B = carry
    reward_B, value_B, valid_B = x
    delta_B = reward_B + gamma * next_value_B - value_B
    adv_B = delta_B + discount * next_adv_B
    carry = (jnp.where(valid_B, value_B, next_value_B), jnp.where(valid_B, adv_B, next_adv_B))
    return carry, jnp.where(valid_B, adv_B, 0)

  B = rewards_BT.shape[0]
  init = (jnp.zeros((B,), dtype), jnp.zeros((B,), dtype))
  _, adv_TB = jax.lax.scan(step, init, (rewards_BT.T, values_BT.T, valid_BT.T), reverse=True)
  advantages_BT = adv_TB.T
  returns_BT = jnp.where(valid_BT, advantages_BT + values_BT, 0)
  return advantages_BT, returns_BT


def _grouped_scores(scores_B, group_size, fn_name):
  """Checks the group layout and returns ``(centred_NG, dtype)``.

  ``centred_NG = r - mean_g`` per group, set to exactly 0 in a group whose scores are all
  equal (rounding of the mean would otherwise leave ``±1 ulp``, which ``1 / (std + eps)``
  amplifies).
  """
  try:
    G = operator.index(group_size)
  except TypeError:
    raise ValueError(
      f"{fn_name}: group_size must be a Python int (static), got {group_size!r}."
    ) from None
  if G < 2:
    raise ValueError(
      f"{fn_name}: group_size must be >= 2, got {G}: a group of one sample has no baseline "
      "but itself (its advantage would be 0 or, with the unbiased std, undefined)."
    )
  scores_B = jnp.asarray(scores_B)
  chex.assert_rank(scores_B, 1)
  B = scores_B.shape[0]
  if B % G:
    raise ValueError(
      f"{fn_name}: the batch of {B} scores is not a whole number of groups of "
      f"group_size={G}; expected B = num_prompts * group_size."
    )
  dtype = acc_dtype(scores_B)
  r_NG = scores_B.astype(dtype).reshape(B // G, G)
  constant_N1 = jnp.all(r_NG == r_NG[:, :1], axis=1, keepdims=True)
  centred_NG = jnp.where(constant_N1, 0, r_NG - jnp.mean(r_NG, axis=1, keepdims=True))
  return centred_NG, dtype


def grpo_advantages(scores_B, group_size, scale_by_std=True, eps=1e-4):
  """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath) and Dr.GRPO.

  For the ``G`` samples of one prompt with scores ``r_1 … r_G``:
  ``A_i = (r_i - mean_g) / (std_g + eps)`` with the unbiased std
  ``std_g = sqrt(Σ_j (r_j - mean_g)² / (G - 1))`` (as DeepSeekMath and TRL);
  ``scale_by_std=False`` gives ``A_i = r_i - mean_g`` (Dr.GRPO, Liu et al. 2025, which drops
  the std because it up-weights too easy or too hard prompts). A group whose scores are all
  equal gets advantage exactly 0 (it carries no signal).

  Args:
      scores_B: ``[B]`` one score per response, ``B = num_prompts · G``, groups consecutive.
      group_size: ``G``, a Python int ``>= 2`` (static). ``G = 1`` is rejected for both
          variants: the unbiased std is undefined, and without it every advantage is 0.
      scale_by_std: divide by ``std_g + eps`` (a Python bool, static).
      eps: added to the std (may be traced).

  Returns:
      ``advantages_B`` in the accumulation dtype.

  Raises:
      ValueError: ``group_size`` is not an int ``>= 2``, or ``B`` is not a multiple of it.
  """
  centred_NG, dtype = _grouped_scores(scores_B, group_size, "grpo_advantages")
  if scale_by_std:
    G = centred_NG.shape[1]
    std_N1 = jnp.sqrt(jnp.sum(jnp.square(centred_NG), axis=1, keepdims=True) / (G - 1))
    centred_NG = centred_NG / (std_N1 + jnp.asarray(eps, dtype))
  return centred_NG.reshape(-1)


def rloo_advantages(scores_B, group_size):
  """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

  Each sample's baseline is the mean score of the other ``G - 1`` samples of its prompt:
  ``A_i = r_i - (Σ_g r - r_i) / (G - 1)``, computed as the identical
  ``G / (G - 1) · (r_i - mean_g)`` (no cancellation against a large sum). A group whose
  scores are all equal gets advantage exactly 0.

  Args:
      scores_B: ``[B]`` one score per response, ``B = num_prompts · G``, groups consecutive.
      group_size: ``G``, a Python int ``>= 2`` (static).

  Returns:
      ``advantages_B`` in the accumulation dtype.

  Raises:
      ValueError: ``group_size`` is not an int ``>= 2``, or ``B`` is not a multiple of it.
  """
  centred_NG, dtype = _grouped_scores(scores_B, group_size, "rloo_advantages")
  G = centred_NG.shape[1]
  return (jnp.asarray(G / (G - 1), dtype) * centred_NG).reshape(-1)


def fit_reward_normalization(scores, target_mean=0.0, target_std=1.0):
  """Gain and bias that map ``scores`` to the target mean and standard deviation (OAI).

  ``μ, σ`` = mean and (biased) std of all entries of ``scores``;
  ``g = σ_target / σ``, ``b = μ_target - g μ``, so ``g · scores + b`` has mean
  ``μ_target`` and std ``σ_target``. Fit on scores of responses sampled from the reference
  policy. ``σ = 0`` gives an infinite gain.

  Args:
      scores: ``[N]`` (any shape) reward-model scores.
      target_mean: μ_target (may be traced).
      target_std: σ_target (may be traced).

  Returns:
      ``(gain, bias)`` scalars in the accumulation dtype.
  """
  scores = jnp.asarray(scores)
  dtype = acc_dtype(scores)
  scores = scores.astype(dtype)
  mean = jnp.mean(scores)
  std = jnp.sqrt(jnp.mean(jnp.square(scores - mean)))
  gain = jnp.asarray(target_std, dtype) / std
  bias = jnp.asarray(target_mean, dtype) - gain * mean
  return gain, bias


def apply_reward_normalization(scores, gain, bias):
  """Normalised scores ``g · scores + b`` (see :func:`fit_reward_normalization`)."""
  scores = jnp.asarray(scores)
  dtype = acc_dtype(scores)
  return jnp.asarray(gain, dtype) * scores.astype(dtype) + jnp.asarray(bias, dtype)
