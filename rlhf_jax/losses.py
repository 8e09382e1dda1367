"""Reward-model, direct-preference and PPO-family losses.

Preference losses (:func:`bradley_terry_loss`, :func:`reward_centering_loss`,
:func:`preference_loss`, :func:`dpo_loss`) return one value per pair, unreduced: the caller
takes the mean. PPO losses (:func:`ppo_policy_loss`, :func:`ppo_value_loss`) and
:func:`entropy_from_logits` return the token-mean over every masked token of the batch
(``Σ m ℓ / Σ m``) plus logging info; :func:`ppo_policy_loss` can instead reduce per sequence
(GRPO) or by a constant (Dr.GRPO).

Inputs may be float32 or bfloat16 (or float64 under ``jax.enable_x64``); everything is computed
in ``promote_types(dtype, float32)``. Hyper-parameters (``margin``, ``clip_eps``, ``tie_param``,
``coef``, ``beta``, ``label_smoothing``) may be traced arrays, so changing them does not
recompile. Gradients never flow into ``logp_old``, ``advantages``, ``values_old``, ``returns``
or the reference log-probs of :func:`dpo_loss` (they are data).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from rlhf_jax.labels import LABEL_A, LABEL_B, LABEL_TIE
from rlhf_jax.ops import acc_dtype, masked_mean, masked_sum, token_entropy

__all__ = [
  "LABEL_A",
  "LABEL_B",
  "LABEL_TIE",
  "bradley_terry_loss",
  "reward_centering_loss",
  "rao_kupper_theta",
  "davidson_nu",
  "preference_log_probs",
  "preference_probs",
  "preference_loss",
  "fit_tie_parameter",
  "dpo_loss",
  "DPO_LOSS_TYPES",
  "PolicyLossInfo",
  "POLICY_LOSS_REDUCTIONS",
  "ppo_policy_loss",
  "ValueLossInfo",
  "ppo_value_loss",
  "entropy_from_logits",
]

# The label codes (0 = a preferred, 1 = b preferred, 2 = tie), from the one codec.

_TIE_MODELS = ("bradley_terry", "rao_kupper", "davidson")


def _cast_pair(r_a, r_b):
  r_a, r_b = jnp.asarray(r_a), jnp.asarray(r_b)
  chex.assert_equal_shape([r_a, r_b])
  dtype = acc_dtype(r_a, r_b)
  return r_a.astype(dtype), r_b.astype(dtype), dtype


def bradley_terry_loss(r_chosen, r_rejected, margin=0.0):
  """Per-pair Bradley-Terry negative log-likelihood.

  ``ℓ = -log σ(r_chosen - r_rejected - margin)``, computed with ``log_sigmoid`` (stable for any
  reward gap). Unreduced: take the mean over pairs for the usual reward-model loss.

  Args:
      r_chosen: ``[B]`` (any shape) rewards of the preferred responses.
      r_rejected: rewards of the rejected responses, same shape.
      margin: scalar or per-pair margin (may be traced).

  Returns:
      ``loss_B`` in the accumulation dtype.
  """
  r_c, r_r, dtype = _cast_pair(r_chosen, r_rejected)
  return -jax.nn.log_sigmoid(r_c - r_r - jnp.asarray(margin, dtype))


def reward_centering_loss(r_chosen, r_rejected, coef):
  """Per-pair reward-centring penalty ``coef · (r_chosen + r_rejected)²``.

  Pushes the reward model's outputs towards zero mean (Eisenstein et al. 2023; TRL's
  ``center_rewards_coefficient``, typically 0.01). Unreduced; add its mean to the BT loss.

  Args:
      r_chosen: ``[B]`` rewards of the preferred responses.
      r_rejected: ``[B]`` rewards of the rejected responses.
      coef: scalar coefficient (may be traced).

  Returns:
      ``penalty_B`` in the accumulation dtype.
  """
  r_c, r_r, dtype = _cast_pair(r_chosen, r_rejected)
  return jnp.asarray(coef, dtype) * jnp.square(r_c + r_r)


def rao_kupper_theta(raw):
  """Maps an unconstrained parameter to a valid Rao-Kupper ``θ = exp(softplus(raw)) ≥ 1``."""
  return jnp.exp(jax.nn.softplus(raw))


def davidson_nu(raw):
  """Maps an unconstrained parameter to a valid Davidson ``ν = exp(raw) > 0``."""
  return jnp.exp(raw)


def _safe_log(x):
  """``log x`` for ``x > 0`` and ``-inf`` for ``x ≤ 0``, with finite gradients elsewhere."""
  pos = x > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, x, 1)), -jnp.inf)


def _normalise_tie_model(tie_model, tie_param):
  if tie_model == "none":
    tie_model = "bradley_terry"
  if tie_model not in _TIE_MODELS:
    raise ValueError(f"tie_model must be one of {_TIE_MODELS + ('none',)}, got {tie_model!r}.")
  if tie_model != "bradley_terry" and tie_param is None:
    raise ValueError(
      f"tie_model={tie_model!r} needs tie_param (θ ≥ 1 for rao_kupper, ν ≥ 0 for davidson)."
    )
  return tie_model


def preference_log_probs(r_a, r_b, tie_model="bradley_terry", tie_param=None):
  """Log-probabilities ``(log P(a≻b), log P(b≻a), log P(tie))`` of a preference model.

  With ``Δ = r_a - r_b``:

  * ``"bradley_terry"`` (alias ``"none"``): ``P(a) = σ(Δ)``, ``P(b) = σ(-Δ)``, ``P(tie) = 0``.
  * ``"rao_kupper"``, ``tie_param = θ ≥ 1``, ``c = log θ``: ``P(a) = σ(Δ - c)``,
    ``P(b) = σ(-Δ - c)``, ``P(tie) = 1 - P(a) - P(b)``. The tie term uses the closed form
    ``P(tie) = e^{-|Δ|}(θ - 1/θ) / ((1 + θ e^{-|Δ|})(1 + e^{-|Δ|}/θ))`` evaluated in log
    space, so it never subtracts nearly equal probabilities.
  * ``"davidson"``, ``tie_param = ν ≥ 0``: ``P(a) = e^{r_a} / Z``, ``P(b) = e^{r_b} / Z``,
    ``P(tie) = ν e^{(r_a+r_b)/2} / Z`` with ``Z = e^{r_a} + e^{r_b} + ν e^{(r_a+r_b)/2}``;
    ``log Z - (r_a+r_b)/2 = |Δ|/2 + log1p(e^{-|Δ|} + ν e^{-|Δ|/2})`` is used.

  θ = 1 (Rao-Kupper) and ν = 0 (Davidson) reduce both to Bradley-Terry, with
  ``log P(tie) = -inf``. The constraints θ ≥ 1 and ν ≥ 0 are not checked (they may be
  traced); :func:`rao_kupper_theta` and :func:`davidson_nu` map unconstrained (learnable)
  parameters to valid values. Stable for any finite ``Δ``.

  Args:
      r_a: ``[B]`` (any shape) rewards of the first responses.
      r_b: rewards of the second responses, same shape.
      tie_model: ``"bradley_terry"``/``"none"``, ``"rao_kupper"`` or ``"davidson"`` (static).
      tie_param: θ or ν, scalar or broadcastable to ``r_a`` (may be traced); ignored for BT.

  Returns:
      Three arrays shaped like ``r_a`` in the accumulation dtype.
  """
  tie_model = _normalise_tie_model(tie_model, tie_param)
  r_a, r_b, dtype = _cast_pair(r_a, r_b)
  delta = r_a - r_b
  abs_delta = jnp.abs(delta)
  if tie_model == "bradley_terry":
    return (jax.nn.log_sigmoid(delta), jax.nn.log_sigmoid(-delta), jnp.full_like(delta, -jnp.inf))
  if tie_model == "rao_kupper":
    c = jnp.log(jnp.asarray(tie_param, dtype))
    c_pos = c > 0
    c_safe = jnp.where(c_pos, c, 1)
    log_theta_minus_inv = jnp.where(c_pos, c_safe + jnp.log(-jnp.expm1(-2 * c_safe)), -jnp.inf)
    logp_tie = (
      -abs_delta
      + log_theta_minus_inv
      - jax.nn.softplus(c - abs_delta)
      - jax.nn.softplus(-c - abs_delta)
    )
    return jax.nn.log_sigmoid(delta - c), jax.nn.log_sigmoid(-delta - c), logp_tie
  nu = jnp.asarray(tie_param, dtype)
  log_z = 0.5 * abs_delta + jnp.log1p(jnp.exp(-abs_delta) + nu * jnp.exp(-0.5 * abs_delta))
  return 0.5 * delta - log_z, -0.5 * delta - log_z, _safe_log(nu) - log_z


def preference_probs(r_a, r_b, tie_model="bradley_terry", tie_param=None):
  """Probabilities ``(P(a≻b), P(b≻a), P(tie))``; ``exp`` of :func:`preference_log_probs`.

  The three sum to 1 for every tie model (for valid θ ≥ 1, ν ≥ 0); see
  :func:`preference_log_probs` for the formulas and arguments.

  Returns:
      Three arrays shaped like ``r_a`` (e.g. ``[B]``) in the accumulation dtype.
  """
  return tuple(jnp.exp(lp) for lp in preference_log_probs(r_a, r_b, tie_model, tie_param))


def preference_loss(r_a, r_b, label, tie_model="bradley_terry", tie_param=None):
  """Per-pair negative log-likelihood of a preference label, with optional ties.

  ``ℓ = -log P(label)`` with the probabilities of :func:`preference_log_probs`. Labels are
  :data:`LABEL_A` (a preferred), :data:`LABEL_B` (b preferred), :data:`LABEL_TIE`.

  * With ``tie_model="bradley_terry"`` (``"none"``) a tie cannot be modelled; its label is
    treated as a half-win for each side: ``ℓ_tie = -½ (log σ(Δ) + log σ(-Δ))``
    (minimised at ``Δ = 0``), the usual soft-label convention.
  * Without tie labels, ``LABEL_A`` gives exactly :func:`bradley_terry_loss` ``(r_a, r_b)``.
  * Any other label value gives NaN, so label bugs are not silently trained on.

  Unreduced: take the mean over pairs.

  Args:
      r_a: ``[B]`` rewards of the first responses.
      r_b: ``[B]`` rewards of the second responses.
      label: ``[B]`` integer labels.
      tie_model: see :func:`preference_log_probs` (static).
      tie_param: θ or ν (may be traced, e.g. from :func:`rao_kupper_theta`).

  Returns:
      ``loss_B`` in the accumulation dtype.
  """
  tie_model = _normalise_tie_model(tie_model, tie_param)
  label = jnp.asarray(label)
  chex.assert_equal_shape([jnp.asarray(r_a), label])
  logp_a, logp_b, logp_tie = preference_log_probs(r_a, r_b, tie_model, tie_param)
  if tie_model == "bradley_terry":
    logp_tie = 0.5 * (logp_a + logp_b)
  return jnp.where(
    label == LABEL_A,
    -logp_a,
    jnp.where(label == LABEL_B, -logp_b, jnp.where(label == LABEL_TIE, -logp_tie, jnp.nan)),
  )


def fit_tie_parameter(r_a, r_b, label, tie_model, iters=64):
  """Maximum-likelihood tie parameter for fixed rewards: θ (Rao-Kupper) or ν (Davidson).

  Minimises the mean :func:`preference_loss` over the pairs as a function of the tie
  parameter alone, by golden-section search on ``log θ ∈ [0, 8]`` (Rao-Kupper, ``θ ≥ 1``)
  or ``log ν ∈ [-8, 8]`` (Davidson). The mean negative log-likelihood is convex in
  ``log ν`` for Davidson and unimodal in ``log θ`` for Rao-Kupper, so the search finds the
  optimum to ``8 · 0.618^iters``. Used after reward-model training: the tie parameter then
  matches the rate at which the labels tie at the scores the model actually produces
  (a tie parameter learned by gradient at the trunk's learning rate barely moves).

  Args:
      r_a, r_b: ``[B]`` rewards of the two responses.
      label: ``[B]`` int labels (``LABEL_A``, ``LABEL_B``, ``LABEL_TIE``).
      tie_model: ``"rao_kupper"`` or ``"davidson"`` (static).
      iters: golden-section iterations (static).

  Returns:
      The fitted θ or ν, a float32 scalar (jit-compatible).
  """
  if tie_model not in ("rao_kupper", "davidson"):
    raise ValueError(
      f"fit_tie_parameter: tie_model must be 'rao_kupper' or 'davidson', got {tie_model!r}"
    )
  r_a, r_b, dtype = _cast_pair(r_a, r_b)
  label = jnp.asarray(label)
  lo, hi = (0.0, 8.0) if tie_model == "rao_kupper" else (-8.0, 8.0)

  def nll(log_param):
    return jnp.mean(preference_loss(r_a, r_b, label, tie_model, jnp.exp(log_param)))

  inv_phi = (5**0.5 - 1) / 2

  def body(_, bounds):
    a, b = bounds
    c = b - inv_phi * (b - a)
    d = a + inv_phi * (b - a)
    left = nll(c) < nll(d)
    return jnp.where(left, a, c), jnp.where(left, d, b)

  a, b = jax.lax.fori_loop(0, iters, body, (jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)))
  return jnp.exp((a + b) / 2)


DPO_LOSS_TYPES = ("sigmoid", "ipo")


def _is_static_zero(x):
  return isinstance(x, (int, float)) and x == 0


def dpo_loss(
  logp_a,
  logp_b,
  ref_logp_a,
  ref_logp_b,
  label,
  beta,
  loss_type="sigmoid",
  tie_model="bradley_terry",
  tie_param=None,
  label_smoothing=0.0,
):
  """Per-pair direct preference optimisation loss: DPO (with ties) or IPO.

  ``logp_*`` are the summed log-probs of each response under the policy, ``ref_logp_*``
  under the frozen reference; ``h = (logp_a - ref_logp_a) - (logp_b - ref_logp_b)``.

  * ``"sigmoid"``, DPO (Rafailov et al. 2023): the implicit rewards
    ``r_a = β (logp_a - ref_logp_a)``, ``r_b = β (logp_b - ref_logp_b)`` go through
    :func:`preference_loss` ``(r_a, r_b, label, tie_model, tie_param)``. With
    ``"bradley_terry"`` and label A this is ``-log σ(β h)``; a tie is half a win each way
    (minimised at ``h = 0``); ``"rao_kupper"`` / ``"davidson"`` give DPO with ties, the
    likelihood of a tie being maximal at ``h = 0``. ``label_smoothing`` ε is conservative
    DPO (Mitchell 2023): ``(1 - ε) ℓ(label) + ε ℓ(swapped label)`` for A/B pairs; ties are
    unchanged (the swapped tie is a tie).
  * ``"ipo"``, IPO (Azar et al. 2023): ``(h - 1/(2β))²`` for label A, ``(h + 1/(2β))²`` for
    label B, ``h²`` for a tie. Ties are native, so ``tie_model`` must be left at
    ``"bradley_terry"`` (or ``"none"``) and ``label_smoothing`` at 0; anything else is a
    ValueError rather than silently ignored.

  Any other label value gives NaN. Unreduced: take the mean over pairs.

  Args:
      logp_a: ``[B]`` summed response log-probs of the first responses under the policy.
      logp_b: ``[B]`` same for the second responses.
      ref_logp_a: ``[B]`` reference-model log-probs of the first responses (no gradient).
      ref_logp_b: ``[B]`` same for the second responses (no gradient).
      label: ``[B]`` int labels :data:`LABEL_A`, :data:`LABEL_B`, :data:`LABEL_TIE`.
      beta: β > 0, scalar (may be traced).
      loss_type: ``"sigmoid"`` or ``"ipo"`` (static).
      tie_model: see :func:`preference_log_probs` (static; ``"sigmoid"`` only).
      tie_param: θ or ν (may be traced; ``"sigmoid"`` only).
      label_smoothing: ε in ``[0, ½)`` (may be traced; ``"sigmoid"`` only).

  Returns:
      ``loss_B`` in the accumulation dtype.
  """
  if loss_type not in DPO_LOSS_TYPES:
    raise ValueError(f"dpo_loss: loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}.")
  arrays = [jnp.asarray(a) for a in (logp_a, logp_b, ref_logp_a, ref_logp_b, label)]
  chex.assert_equal_shape(arrays)
  logp_a, logp_b, ref_logp_a, ref_logp_b, label = arrays
  dtype = acc_dtype(logp_a, logp_b, ref_logp_a, ref_logp_b)
  ref_logp_a, ref_logp_b = (
    jax.lax.stop_gradient(x.astype(dtype)) for x in (ref_logp_a, ref_logp_b)
  )
  log_ratio_a = logp_a.astype(dtype) - ref_logp_a
  log_ratio_b = logp_b.astype(dtype) - ref_logp_b
  beta = jnp.asarray(beta, dtype)
  if loss_type == "ipo":
    if tie_model not in ("bradley_terry", "none") or tie_param is not None:
      raise ValueError(
        f"dpo_loss: loss_type='ipo' models ties itself (h² for a tie); "
        f"leave tie_model='bradley_terry' and tie_param=None, got "
        f"tie_model={tie_model!r}, tie_param={tie_param!r}."
      )
    if not _is_static_zero(label_smoothing):
      raise ValueError(
        f"dpo_loss: label_smoothing applies to loss_type='sigmoid' only; "
        f"expected 0.0 with 'ipo', got {label_smoothing!r}."
      )
    h = log_ratio_a - log_ratio_b
    target = 1 / (2 * beta)
    return jnp.where(
      label == LABEL_A,
      jnp.square(h - target),
      jnp.where(
        label == LABEL_B,
        jnp.square(h + target),
        jnp.where(label == LABEL_TIE, jnp.square(h), jnp.nan),
      ),
    )
  r_a, r_b = beta * log_ratio_a, beta * log_ratio_b
  loss = preference_loss(r_a, r_b, label, tie_model, tie_param)
  if _is_static_zero(label_smoothing):
    return loss
  swapped = jnp.where(label == LABEL_A, LABEL_B, jnp.where(label == LABEL_B, LABEL_A, label))
  loss_swapped = preference_loss(r_a, r_b, swapped, tie_model, tie_param)
  eps = jnp.asarray(label_smoothing, dtype)
  return (1 - eps) * loss + eps * loss_swapped


class PolicyLossInfo(NamedTuple):
  """Logging statistics of :func:`ppo_policy_loss`.

  Always token-means over the mask (``Σ m x / Σ m``), whatever the loss's ``reduction``, so
  they mean the same thing for PPO, GRPO, DAPO and Dr.GRPO runs and can be compared.

  Attributes:
      clip_frac: fraction of tokens where the clipped term is the larger loss (OAI's
          ``pg_clipfrac``), i.e. where clipping removes the gradient (either bound).
      approx_kl: ``½ mean((log π - log π_old)²)``.
      ratio_mean: mean of ``ρ = π / π_old``.
  """

  clip_frac: jax.Array
  approx_kl: jax.Array
  ratio_mean: jax.Array


POLICY_LOSS_REDUCTIONS = ("token", "sequence", "constant")


def ppo_policy_loss(
  logp, logp_old, advantages, mask, clip_eps, clip_eps_high=None, reduction="token"
):
  """PPO clipped surrogate policy loss, with DAPO's asymmetric clip and three reductions.

  ``ρ = exp(log π - log π_old)``,
  ``ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε_high))`` (Schulman et al. 2017; OAI
  lm-human-preferences), with ``ε_high = ε`` by default and ``ε_high > ε`` for DAPO's
  clip-higher (Yu et al. 2025). With ``m`` the mask, ``B`` sequences and ``T`` the last axis:

  * ``"token"``: ``L = Σ m ℓ / Σ m`` over every masked token of the batch (PPO, DAPO;
    the only behaviour before ``reduction`` existed).
  * ``"sequence"``: ``L = mean_b (Σ_t m ℓ / Σ_t m)``, the mean over sequences of each
    sequence's token-mean (GRPO, Shao et al. 2024). Rows with an all-zero mask are padding:
    they are left out of the mean over sequences.
  * ``"constant"``: ``L = Σ m ℓ / (B · T)`` (Dr.GRPO, Liu et al. 2025), ``B · T`` being
    ``logp.size``: the padded length, not the lengths of the responses, normalises, so
    unlike the two others this value changes when the arrays are padded further; pad to the
    generation budget (``max_new_tokens``) for Dr.GRPO's constant.

  Args:
      logp: ``[B, T]`` (any shape) log-probs under the current policy.
      logp_old: log-probs under the rollout policy, same shape (no gradient).
      advantages: same shape as ``logp``, or without its last axis (``[B]``: one advantage
          per sequence, e.g. :func:`rlhf_jax.advantages.grpo_advantages`, broadcast over its
          tokens). No gradient; whiten beforehand if wanted.
      mask: same shape as ``logp``; zeros (padding) never affect the loss, its gradient or
          the info.
      clip_eps: ε, the lower clip ``1 - ε``; scalar (may be traced).
      clip_eps_high: ε_high, the upper clip ``1 + ε_high``; scalar (may be traced) or
          ``None`` for ``ε`` (symmetric PPO clip).
      reduction: ``"token"``, ``"sequence"`` or ``"constant"`` (static).

  Returns:
      ``(loss, PolicyLossInfo)``; scalars in the accumulation dtype. The info is always
      token-means (see :class:`PolicyLossInfo`).
  """
  if reduction not in POLICY_LOSS_REDUCTIONS:
    raise ValueError(
      f"ppo_policy_loss: reduction must be one of {POLICY_LOSS_REDUCTIONS}, got {reduction!r}."
    )
  logp, logp_old, advantages, mask = (jnp.asarray(a) for a in (logp, logp_old, advantages, mask))
  chex.assert_equal_shape([logp, logp_old, mask])
  if advantages.shape != logp.shape:
    if advantages.shape != logp.shape[:-1]:
      raise ValueError(
        f"ppo_policy_loss: advantages must have the shape of logp "
        f"{logp.shape} or that shape without its last (token) axis "
        f"{logp.shape[:-1]}, got {advantages.shape}."
      )
    advantages = jnp.broadcast_to(advantages[..., None], logp.shape)
  dtype = acc_dtype(logp, logp_old, advantages)
  valid = mask != 0
  logp_old = jax.lax.stop_gradient(logp_old)
  advantages = jax.lax.stop_gradient(jnp.where(valid, advantages.astype(dtype), 0))
  log_ratio = jnp.where(valid, logp.astype(dtype) - logp_old.astype(dtype), 0)
  ratio = jnp.exp(log_ratio)
  eps_low = jnp.asarray(clip_eps, dtype)
  eps_high = eps_low if clip_eps_high is None else jnp.asarray(clip_eps_high, dtype)
  loss_unclipped = -advantages * ratio
  loss_clipped = -advantages * jnp.clip(ratio, 1 - eps_low, 1 + eps_high)
  per_token = jnp.maximum(loss_unclipped, loss_clipped)
  if reduction == "token":
    loss = masked_mean(per_token, mask)
  elif reduction == "sequence":
    nonempty = jnp.any(valid, axis=-1)
    loss = masked_mean(masked_mean(per_token, mask, axis=-1), nonempty)
  else:
    loss = masked_sum(per_token, mask) / jnp.asarray(max(per_token.size, 1), dtype)
  info = PolicyLossInfo(
    clip_frac=masked_mean((loss_clipped > loss_unclipped).astype(dtype), mask),
    approx_kl=0.5 * masked_mean(jnp.square(jax.lax.stop_gradient(log_ratio)), mask),
    ratio_mean=masked_mean(jax.lax.stop_gradient(ratio), mask),
  )
  return loss, info


class ValueLossInfo(NamedTuple):
  """Logging statistics of :func:`ppo_value_loss` (token-means over the mask).

  Attributes:
      clip_frac: fraction of tokens where the clipped error is the larger one (OAI's
          ``vf_clipfrac``); 0 when clipping is disabled.
      value_mean: mean predicted value.
      mse: ``mean((V - R)²)`` of the unclipped prediction.
  """

  clip_frac: jax.Array
  value_mean: jax.Array
  mse: jax.Array


def ppo_value_loss(values, values_old, returns, mask, clip_eps):
  """PPO clipped value loss, token-mean over the mask.

  ``V_clip = V_old + clip(V - V_old, -ε, ε)``,
  ``L = ½ Σ_t m_t max((V_t - R_t)², (V_clip,t - R_t)²) / Σ_t m_t``.
  With ``clip_eps=None`` (or ``inf``) this reduces to ``½ mean((V - R)²)``.

  Args:
      values: ``[B, T]`` (any shape) current value predictions.
      values_old: rollout-time values, same shape (no gradient).
      returns: targets ``R = A + V_old``, same shape (no gradient).
      mask: same shape; zeros never affect the loss, its gradient or the info.
      clip_eps: ε_v, scalar (may be traced), or ``None`` to disable clipping.

  Returns:
      ``(loss, ValueLossInfo)``; scalars in the accumulation dtype.
  """
  values, values_old, returns, mask = (jnp.asarray(a) for a in (values, values_old, returns, mask))
  chex.assert_equal_shape([values, values_old, returns, mask])
  dtype = acc_dtype(values, values_old, returns)
  valid = mask != 0
  values = jnp.where(valid, values.astype(dtype), 0)
  values_old = jax.lax.stop_gradient(jnp.where(valid, values_old.astype(dtype), 0))
  returns = jax.lax.stop_gradient(jnp.where(valid, returns.astype(dtype), 0))
  err_unclipped = jnp.square(values - returns)
  if clip_eps is None:
    per_token = err_unclipped
    clip_frac = jnp.zeros((), dtype)
  else:
    eps = jnp.asarray(clip_eps, dtype)
    values_clipped = values_old + jnp.clip(values - values_old, -eps, eps)
    err_clipped = jnp.square(values_clipped - returns)
    per_token = jnp.maximum(err_unclipped, err_clipped)
    clip_frac = masked_mean((err_clipped > err_unclipped).astype(dtype), mask)
  loss = 0.5 * masked_mean(per_token, mask)
  info = ValueLossInfo(
    clip_frac=clip_frac,
    value_mean=masked_mean(jax.lax.stop_gradient(values), mask),
    mse=masked_mean(jax.lax.stop_gradient(err_unclipped), mask),
  )
  return loss, info


def entropy_from_logits(logits_BTV, mask_BT, temperature=1.0):
  """Token-mean entropy of the policy over the mask.

  ``H_t = logsumexp(z_t) - Σ_v softmax(z_t)_v z_{t,v}`` with ``z = logits / temperature``;
  returns ``Σ_t m_t H_t / Σ_t m_t``. Per-token values: :func:`rlhf_jax.ops.token_entropy`.

  Args:
      logits_BTV: ``[B, T, V]`` (any leading shape) logits, float32 or bfloat16.
      mask_BT: ``[B, T]``; logits at masked positions (even NaN) are ignored.
      temperature: scalar (may be traced).

  Returns:
      A scalar in the accumulation dtype.
  """
  logits_BTV, mask_BT = jnp.asarray(logits_BTV), jnp.asarray(mask_BT)
  chex.assert_equal_shape_prefix([logits_BTV, mask_BT], mask_BT.ndim)
  chex.assert_rank(logits_BTV, mask_BT.ndim + 1)
  valid_BT = mask_BT != 0
  logits_BTV = jnp.where(valid_BT[..., None], logits_BTV, jnp.zeros((), logits_BTV.dtype))
  return masked_mean(token_entropy(logits_BTV, temperature), mask_BT)
