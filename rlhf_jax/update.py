"""The optimizer update shared by every trainer, guarded against non-finite values."""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["all_finite", "guarded_update"]


def all_finite(tree: Any) -> jax.Array:
  """True iff every leaf of ``tree`` is finite (a scalar bool array)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def guarded_update(
  optimizer: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any, loss: jax.Array
) -> Tuple[Any, Any, jax.Array, jax.Array]:
  """One optimizer step that is skipped when the loss or any gradient is non-finite.

  Returns ``(params, opt_state, finite, grad_norm)``. When ``finite`` is False the
  returned params and optimizer state are the inputs, bit for bit (``lax.cond`` picks the
  untouched branch), so non-finite values cannot reach a checkpoint either; the reported
  gradient norm is then NaN. The caller counts the skips.
  """
  finite = jnp.isfinite(loss) & all_finite(grads)

  def apply(_):
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt_state

  def skip(_):
    return params, opt_state

  # A conditional, not a select: the common (finite) path costs only the update itself, and
  # the skipped path never evaluates the optimizer on non-finite values.
  new_params, new_opt_state = jax.lax.cond(finite, apply, skip, None)
  grad_norm = jnp.where(finite, optax.tree.norm(grads), jnp.nan)
  return new_params, new_opt_state, finite, grad_norm
