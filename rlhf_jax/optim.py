"""TensorFlow-style Adam as an optax ``GradientTransformation``.

OAI's lm-human-preferences trains with ``tf.train.AdamOptimizer``, which places ε outside the
bias correction:

    ``m_t = b1 m + (1-b1) g``,  ``v_t = b2 v + (1-b2) g²``,
    ``lr_t = lr · √(1 - b2^t) / (1 - b1^t)``,  ``Δθ = -lr_t · m_t / (√v_t + ε)``.

``optax.adam`` (like PyTorch) uses ``Δθ = -lr · m̂ / (√v̂ + ε)`` with ``m̂ = m/(1-b1^t)``,
``v̂ = v/(1-b2^t)``, which equals the TF form with ``ε_TF = ε · √(1 - b2^t)``: early in
training (small t) the TF form's effective ε is larger by ``1/√(1-b2^t)`` (≈ 31.6× at t = 1
for b2 = 0.999), so its first updates are smaller when gradients are tiny. With ε = 0 the two
agree.

For the linear learning-rate anneal to 0 use ``optax.linear_schedule(lr, 0.0, total_steps)`` as
``learning_rate``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["ScaleByTFAdamState", "scale_by_tf_adam", "tf_adam"]


class ScaleByTFAdamState(NamedTuple):
  """State of :func:`scale_by_tf_adam`: step count and the first/second moment pytrees."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _one_minus_power(b, t):
  """``1 - b^t`` as ``-expm1(t log b)``, with ``log b`` taken in float64 for Python floats.

  Avoids the float32 cancellation of ``1 - 0.999^t`` (a 1e-5 relative error at t = 1).
  """
  if isinstance(b, (int, float)):
    log_b = math.log(b) if b > 0 else -math.inf
  else:
    log_b = jnp.log(jnp.asarray(b, jnp.float32))
  return -jnp.expm1(t * log_b)


def scale_by_tf_adam(b1=0.9, b2=0.999, eps=1e-5):
  """Rescales updates by TensorFlow's Adam rule (without the learning rate).

  ``u_t = √(1 - b2^t) / (1 - b1^t) · m_t / (√v_t + ε)`` with ``m_t, v_t`` the exponential
  moving averages of ``g`` and ``g²`` (ε outside the bias correction). Moments are kept in the
  parameters' dtype promoted to at least float32.

  Args:
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to ``√v_t`` (TF's ``epsilon``; OAI uses 1e-5).

  Returns:
      An ``optax.GradientTransformation``.
  """

  def init_fn(params):
    def zeros(p):
      return jnp.zeros_like(p, dtype=jnp.promote_types(jnp.asarray(p).dtype, jnp.float32))

    return ScaleByTFAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(zeros, params),
      nu=jax.tree.map(zeros, params),
    )

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(m.dtype), state.mu, updates)
    nu = jax.tree.map(
      lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(v.dtype)), state.nu, updates
    )
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    step_scale = jnp.sqrt(_one_minus_power(b2, t)) / _one_minus_power(b1, t)
    new_updates = jax.tree.map(
      lambda g, m, v: (step_scale.astype(m.dtype) * m / (jnp.sqrt(v) + eps)).astype(g.dtype),
      updates,
      mu,
      nu,
    )
    return new_updates, ScaleByTFAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def tf_adam(learning_rate, b1=0.9, b2=0.999, eps=1e-5):
  """Adam with TensorFlow's ε placement (OAI's optimizer); see :func:`scale_by_tf_adam`.

  ``Δθ = -lr · √(1 - b2^t) / (1 - b1^t) · m_t / (√v_t + ε)``.

  Args:
      learning_rate: a float, a (traced) scalar array or an ``optax.Schedule`` of the step count.
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: TF's ε, outside the bias correction.

  Returns:
      An ``optax.GradientTransformation``.
  """
  return optax.chain(
    scale_by_tf_adam(b1=b1, b2=b2, eps=eps),
    optax.scale_by_learning_rate(learning_rate),
  )
