"""A dense matmul in a narrower operand dtype with float32 accumulation, forward and backward.

``mixed_matmul(x_ND, w_DF, "bfloat16")`` multiplies bf16 copies of its operands and
accumulates in float32: ``y = (bf16(x) @ bf16(w))`` with f32 sums, returned in ``x``'s dtype.
Its gradient is written by hand (``jax.custom_vjp``) so that the two backward matmuls are
bf16 x bf16 with f32 accumulation as well:

  ``dx = bf16(g) @ bf16(w)^T``,   ``dw = bf16(x)^T @ bf16(g)``   (f32 sums, f32 results)

Left to autodiff, ``dot(bf16(x), bf16(w), preferred_element_type=f32)`` transposes into
matmuls of an f32 cotangent against a bf16 operand: mixed-dtype matmuls that do not run on
bf16 units (0.8x of this one's rate measured on an AVX512-BF16 CPU, docs/performance.md). On such
CPUs and on TPU/GPU the hand-written gradient keeps every matmul of the step in bf16. The weight gradient is
float32 (params are float32); the residuals saved for the backward pass are the bf16 copies,
half the memory of f32 activations.

``mixed_dot_general(dtype)`` wraps it as the ``dot_general`` of a ``flax.linen.Dense``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["mixed_matmul", "mixed_dot_general"]


@functools.lru_cache(maxsize=None)
def _make(compute: str, x_dtype: str, w_dtype: str):
  """The custom-gradient matmul for one (operand, input, weight) dtype combination."""
  c = jnp.dtype(compute)

  def mm(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)

  @jax.custom_vjp
  def f(x, w):
    return mm(x.astype(c), w.astype(c)).astype(x_dtype)

  def fwd(x, w):
    xc, wc = x.astype(c), w.astype(c)
    return mm(xc, wc).astype(x_dtype), (xc, wc)

  def bwd(res, g):
    xc, wc = res
    gc = g.astype(c)
    dx = mm(gc, wc.T).astype(x_dtype)
    d, f_ = wc.shape
    dw = mm(xc.reshape(-1, d).T, gc.reshape(-1, f_)).astype(w_dtype)
    return dx, dw

  f.defvjp(fwd, bwd)
  return f


def mixed_matmul(x_ND: jax.Array, w_DF: jax.Array, compute_dtype) -> jax.Array:
  """``x @ w`` over the last axis of ``x`` (any leading shape) and the first of ``w`` (2-D),
  operands cast to ``compute_dtype``, sums in float32, result in ``x``'s dtype; gradients
  as in the module docstring."""
  if w_DF.ndim != 2 or x_ND.shape[-1] != w_DF.shape[0]:
    raise ValueError(
      f"mixed_matmul: expected x[..., D] and w[D, F], got {x_ND.shape} and {w_DF.shape}"
    )
  return _make(jnp.dtype(compute_dtype).name, x_ND.dtype.name, w_DF.dtype.name)(x_ND, w_DF)


def mixed_dot_general(compute_dtype):
  """A ``dot_general`` for ``flax.linen.Dense(dot_general=...)`` that runs
  :func:`mixed_matmul` (Dense contracts the input's last axis with the kernel's first)."""
  name = jnp.dtype(compute_dtype).name
  return functools.partial(_dense_dot_general, compute_dtype=name)


def _dense_dot_general(
  lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *, compute_dtype
):
  del precision, preferred_element_type
  (lc, rc), (lb, rb) = dimension_numbers
  if tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or lb or rb or rhs.ndim != 2:
    raise ValueError(
      f"mixed_dot_general supports Dense's contraction only, got {dimension_numbers}"
    )
  return mixed_matmul(lhs, rhs, compute_dtype)
