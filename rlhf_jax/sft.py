"""Causal language-model training (pretraining and supervised fine-tuning) as pure functions.

Batches are dicts of ``[B, T]`` arrays: ``ids``, ``mask`` (attention: 1 = real token) and
``loss_mask`` (1 where the token is a training target). Pretraining on packed text sets
``loss_mask = mask``; SFT on prompt→response pairs sets it only on response tokens. Loss is
the token-mean negative log-likelihood over target tokens (position t predicts token t+1).

``LMState.params`` is the trainable pytree: the model's params, or LoRA adapters
(:class:`rlhf_jax.lora.LoraParams`) whose frozen base is the step's third argument.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import ops
from rlhf_jax.lora import factored_params
from rlhf_jax.models import Transformer
from rlhf_jax.update import guarded_update

__all__ = ["LMState", "init_lm_state", "lm_loss", "make_lm_step", "make_lm_eval"]


class LMState(flax.struct.PyTreeNode):
  params: Any
  opt_state: Any
  step: jax.Array
  skipped_updates: jax.Array


def init_lm_state(params, optimizer: optax.GradientTransformation) -> LMState:
  return LMState(
    params=params,
    opt_state=optimizer.init(params),
    step=jnp.zeros((), jnp.int32),
    skipped_updates=jnp.zeros((), jnp.int32),
  )


def lm_loss(model: Transformer, params, batch) -> tuple:
  """``(mean NLL over targets, number of target tokens)``; target t+1 is read at position t."""
  # The LM head runs on positions 0..T-2 only: slicing [B, T, V] logits afterwards would
  # cost a copy forward and a padded copy of the logits' gradient backward.
  t = batch["ids"].shape[1]
  logits = model.apply({"params": params}, batch["ids"], batch["mask"], head_slice=(0, t - 1))
  if isinstance(logits, tuple):
    logits = logits[0]
  logp = ops.token_logprobs(logits, batch["ids"][:, 1:])
  targets = batch["loss_mask"][:, 1:] * batch["mask"][:, 1:]
  n = jnp.sum(targets)
  return -ops.masked_sum(logp, targets) / jnp.maximum(n, 1), n


def make_lm_step(model: Transformer, optimizer: optax.GradientTransformation) -> Callable:
  """``step(state, batch, base=None) -> (state, metrics)``; jit it with the state donated.

  ``base``: the frozen params under LoRA ``state.params`` (:func:`rlhf_jax.lora.factored_params`),
  an input of the step, never a constant of the compiled program; None for dense training.
  """
  grad_fn = jax.value_and_grad(
    lambda t, b, base: lm_loss(model, factored_params(t, base), b), has_aux=True
  )

  def step(state: LMState, batch: Dict[str, jax.Array], base: Any = None):
    (loss, n_tokens), grads = grad_fn(state.params, batch, base)
    params, opt_state, finite, grad_norm = guarded_update(
      optimizer, state.params, state.opt_state, grads, loss
    )
    skipped = state.skipped_updates + (~finite).astype(jnp.int32)
    metrics = {
      "loss": loss,
      "perplexity": jnp.exp(loss),
      "tokens": n_tokens,
      "grad_norm": grad_norm,
      "skipped_updates": skipped,
    }
    return state.replace(
      params=params, opt_state=opt_state, step=state.step + 1, skipped_updates=skipped
    ), metrics

  return step


def make_lm_eval(model: Transformer) -> Callable:
  """``eval(params, batch) -> (sum NLL, number of target tokens)`` for exact corpus perplexity."""

  def evaluate(params, batch):
    loss, n = lm_loss(model, params, batch)
    return loss * n, n

  return evaluate
