"""Masked reductions and per-token log-prob / entropy primitives.

Conventions shared by every function here:

* A ``mask`` is boolean or numeric and broadcastable to the data. Non-zero entries count (numeric
    masks act as weights ``m``); zero entries are excluded with ``jnp.where``, so garbage (even NaN
    or inf) stored under the mask never reaches a result or a gradient.
* Arithmetic is done in ``promote_types(dtype, float32)``: bfloat16/float16 inputs are upcast and
    accumulated in float32, float64 inputs (under ``jax.enable_x64``) stay float64. Results are
    returned in that accumulation dtype.
* A reduction over an empty mask returns 0 rather than NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
  "acc_dtype",
  "masked_sum",
  "masked_mean",
  "masked_var",
  "whiten",
  "token_logprobs",
  "token_entropy",
  "explained_variance",
]


def acc_dtype(*arrays) -> jnp.dtype:
  """Accumulation dtype: the promoted dtype of ``arrays``, at least float32."""
  dtype = jnp.dtype(jnp.float32)
  for a in arrays:
    dtype = jnp.promote_types(dtype, jnp.asarray(a).dtype)
  return dtype


def _prepare(x, mask):
  """Returns ``(x, weights, valid)``: ``x`` zeroed where masked, in the accumulation dtype."""
  x = jnp.asarray(x)
  dtype = acc_dtype(x)
  mask = jnp.broadcast_to(jnp.asarray(mask), x.shape)
  valid = mask != 0
  weights = jnp.where(valid, mask.astype(dtype), 0)
  return jnp.where(valid, x.astype(dtype), 0), weights, valid


def _safe_div(num, den):
  """``num / den`` where ``den > 0``, else 0 (gradient-safe)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def masked_sum(x, mask, axis=None):
  """Sum of the masked entries: ``Σ_i m_i x_i``.

  Args:
      x: array of any shape, e.g. ``x_BT``.
      mask: broadcastable to ``x``; zero entries are excluded (even if ``x`` there is NaN).
      axis: axes to reduce; ``None`` reduces everything.

  Returns:
      The sum over ``axis`` in the accumulation dtype (float32 for bf16/f32 input).
  """
  x, w, valid = _prepare(x, mask)
  return jnp.sum(x * w, axis=axis)


def masked_mean(x, mask, axis=None):
  """Mean of the masked entries: ``Σ m x / Σ m``.

  Args:
      x: array of any shape, e.g. ``x_BT``.
      mask: broadcastable to ``x``; zero entries are excluded.
      axis: axes to reduce; ``None`` gives the token-mean over every masked entry.

  Returns:
      The mean over ``axis``; 0 where the mask has no non-zero entry.
  """
  x, w, valid = _prepare(x, mask)
  total = jnp.sum(x * w, axis=axis)
  count = jnp.sum(w, axis=axis)
  return _safe_div(total, count)


def masked_var(x, mask, unbiased=False, axis=None):
  """Variance of the masked entries.

  ``μ = Σ m x / Σ m``;  ``σ² = Σ m (x-μ)² / Σ m`` (biased, OAI), multiplied by
  ``n / (n-1)`` with ``n = Σ m`` when ``unbiased`` (Bessel's correction, TRL).

  Args:
      x: array of any shape.
      mask: broadcastable to ``x``; zero entries are excluded.
      unbiased: apply Bessel's correction (a Python bool).
      axis: axes to reduce; ``None`` reduces everything.

  Returns:
      The variance over ``axis``; 0 when ``Σ m`` is 0 (or ``≤ 1`` with ``unbiased``).
  """
  x, w, valid = _prepare(x, mask)
  count = jnp.sum(w, axis=axis, keepdims=True)
  mean = _safe_div(jnp.sum(x * w, axis=axis, keepdims=True), count)
  sq = w * jnp.square(x - mean)
  count = jnp.squeeze(count, axis=axis) if axis is not None else jnp.reshape(count, ())
  var = _safe_div(jnp.sum(sq, axis=axis), count)
  if unbiased:
    var = _safe_div(var * count, count - 1)
  return var


def whiten(x, mask, shift_mean=True, unbiased=False, eps=1e-8):
  """Normalises ``x`` by statistics of its masked entries.

  ``y = (x - μ) / sqrt(σ² + eps)`` with ``μ, σ²`` from :func:`masked_mean` /
  :func:`masked_var` over *all* masked entries (one scalar each, e.g. over a whole batch of
  tokens). With ``shift_mean=False`` the mean is added back:
  ``y = (x - μ) / sqrt(σ² + eps) + μ``
  (OAI/TRL reward whitening). Masked-out entries of ``y`` are set to 0.

  Args:
      x: array of any shape, e.g. ``advantages_BT``.
      mask: broadcastable to ``x``.
      shift_mean: whether the output is centred (advantages) or keeps ``μ`` (rewards).
      unbiased: Bessel-corrected variance (TRL) instead of the biased one (OAI).
      eps: added to the variance.

  Returns:
      ``y`` with the shape of ``x`` in the accumulation dtype.
  """
  xf, _, valid = _prepare(x, mask)
  mean = masked_mean(xf, mask)
  var = masked_var(xf, mask, unbiased=unbiased)
  y = (xf - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    y = y + mean
  return jnp.where(valid, y, 0)


def token_logprobs(logits_BTV, tokens_BT, temperature=1.0):
  """Log-probability of the chosen tokens under ``softmax(logits / temperature)``.

  ``log p(tok) = z[tok] - logsumexp(z)`` with ``z = logits / temperature``. The chosen logit is
  gathered and the normaliser reduced directly; no softmax or full log-softmax array is built
  (under ``jit`` the float32 upcast fuses into the reduction).

  Args:
      logits_BTV: ``[..., V]`` logits of any float dtype.
      tokens_BT: ``[...]`` integer token ids, ``tokens.shape == logits.shape[:-1]``.
      temperature: scalar (may be a traced array); the sampling temperature.

  Returns:
      ``logp_BT`` of shape ``tokens.shape`` in the accumulation dtype (float32 for bf16 logits).
  """
  logits_BTV = jnp.asarray(logits_BTV)
  tokens_BT = jnp.asarray(tokens_BT)
  if tokens_BT.shape != logits_BTV.shape[:-1]:
    raise ValueError(
      f"token_logprobs: tokens shape {tokens_BT.shape} must equal logits shape "
      f"without the vocabulary axis {logits_BTV.shape[:-1]}."
    )
  dtype = acc_dtype(logits_BTV)
  temperature = jnp.asarray(temperature, dtype)
  chosen_BT = jnp.take_along_axis(logits_BTV, tokens_BT[..., None], axis=-1)[..., 0]
  chosen_BT = chosen_BT.astype(dtype) / temperature
  lse_BT = jax.nn.logsumexp(logits_BTV.astype(dtype) / temperature, axis=-1)
  return chosen_BT - lse_BT


def token_entropy(logits_BTV, temperature=1.0):
  """Per-token entropy of ``softmax(logits / temperature)``.

  ``H = logsumexp(z) - Σ_v softmax(z)_v z_v``, evaluated as ``Σ_v p_v (logsumexp(z') - z'_v)``
  with ``z' = z - max(z)`` so near-deterministic rows keep their relative precision. Entries
  with ``z = -inf`` (banned tokens) contribute 0.

  Args:
      logits_BTV: ``[..., V]`` logits of any float dtype.
      temperature: scalar (may be traced).

  Returns:
      ``entropy_BT`` of shape ``logits.shape[:-1]`` in the accumulation dtype.
  """
  logits_BTV = jnp.asarray(logits_BTV)
  dtype = acc_dtype(logits_BTV)
  z_BTV = logits_BTV.astype(dtype) / jnp.asarray(temperature, dtype)
  z_BTV = z_BTV - jax.lax.stop_gradient(jnp.max(z_BTV, axis=-1, keepdims=True))
  lse_BT1 = jax.nn.logsumexp(z_BTV, axis=-1, keepdims=True)
  p_BTV = jnp.exp(z_BTV - lse_BT1)
  neg_logp_BTV = jnp.where(jnp.isfinite(z_BTV), lse_BT1 - z_BTV, 0)
  return jnp.sum(p_BTV * neg_logp_BTV, axis=-1)


def explained_variance(pred, target, mask):
  """Fraction of the target's variance explained by ``pred`` over the masked entries.

  ``EV = 1 - Var[target - pred] / Var[target]`` (biased masked variances, one scalar over all
  masked entries). 1 is perfect, 0 is no better than a constant, negative is worse. Returns 0
  when ``Var[target]`` is 0 (undefined there).

  Args:
      pred: e.g. ``values_BT``.
      target: e.g. ``returns_BT``, same shape as ``pred``.
      mask: broadcastable to ``pred``.

  Returns:
      A scalar in the accumulation dtype.
  """
  pred = jnp.asarray(pred)
  target = jnp.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"explained_variance: pred shape {pred.shape} != target shape {target.shape}.")
  dtype = acc_dtype(pred, target)
  pred, target = pred.astype(dtype), target.astype(dtype)
  var_target = masked_var(target, mask)
  var_resid = masked_var(target - pred, mask)
  return jnp.where(var_target > 0, 1 - _safe_div(var_resid, var_target), 0)
