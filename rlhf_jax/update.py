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


def guarded_update(optimizer: optax.GradientTransformation, params: Any, opt_state: Any,
                   grads: Any, loss: jax.Array) -> Tuple[Any, Any, jax.Array, jax.Array]:
  """One optimizer step that is skipped when the loss or any gradient is non-finite.

  Returns ``(params, opt_state, finite, grad_norm)``. When ``finite`` is False the
  returned params and optimizer state are the inputs, bit for bit: the non-finite values
  never reach them (zeros are fed through the optimizer and its outputs discarded by a
  ``where``), so they cannot reach a checkpoint either. The caller counts the skips.
  """
  finite = jnp.isfinite(loss) & all_finite(grads)
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, new_opt_state = optimizer.update(safe_grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jnp.where(finite, new, old)
  return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state),
          finite, optax.tree.norm(safe_grads))
