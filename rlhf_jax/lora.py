"""LoRA (low-rank adaptation, Hu et al. 2021) as a pure transform of the params pytree.

A targeted kernel ``W [..., in, out]`` of the frozen base becomes

    ``W' = W + (alpha / rank) · A @ B``,   ``A [..., in, r]``, ``B [..., r, out]``,

with ``A ~ N(0, 1/in)`` and ``B = 0`` at the start, so the adapted model equals the base
exactly until the first update. Leading axes (the ``layers`` axis of the scanned stack) are
batch axes of the product: one adapter pair per layer, stacked like the kernel.

Targets are names of our Dense modules (``rlhf_jax.models.transformer``), matched against the
end of a kernel's path in the params tree:

=========  ===========================  ==============================================
target     param path                   Hugging Face Llama name (accepted as an alias)
=========  ===========================  ==============================================
q, k, v    layers/attn/{q,k,v}/kernel   q_proj, k_proj, v_proj
o          layers/attn/o/kernel         o_proj
gate, up   layers/mlp/{gate,up}/kernel  gate_proj, up_proj (GPT-2 has only ``up``)
down       layers/mlp/down/kernel       down_proj
lm_head    lm_head/kernel               (an untied LM head only)
=========  ===========================  ==============================================

A longer suffix (``"attn/q"``) selects the same way. A target that matches no kernel of the
model is an error naming it. Embeddings, norms and biases are never adapted.

**One mechanism for every trainer.** A trainer's trainable pytree is either the plain params
(dense fine-tuning) or a :class:`LoraParams` — the adapters plus whole param subtrees trained
densely (``dense``: a scalar reward / value head), with the scale as static data. Every step
builder turns its trainable pytree into the model's params with :func:`factored_params`
``(trainable, base)`` (the sampler and scorers with :func:`full_params`): the identity for
plain params, the base with its adapted kernels replaced (factors or merge, below) plus the
dense subtrees for :class:`LoraParams`. The choice is in the pytree's type (static under ``jit``), so no trainer
has a LoRA flag, a role may be dense while another is LoRA (a LoRA policy scored by a dense
reward model), and the gradient is taken with respect to the trainable pytree only: the
base's gradients are never formed as outputs, and the optimizer state (``optimizer.init`` of
the trainable pytree) holds moments only for the adapters and heads.

**The base is an argument, never a constant.** Each compiled step receives the frozen base as
an input (``step(state, batch, base)`` in SFT, reward and DPO; ``PPOFrozen.ref_params`` in
PPO): a base captured by a jitted closure would be baked into the program as constants (a
second copy of the weights, and a recompile for every new base). In PPO the reference policy
*is* the base with adapters off, so with LoRA ``PPOFrozen.ref_params`` holds the base once and
the policy, the value model (adapters + head) and a LoRA reward model all sit on it.

**Factors in a differentiated forward, a merge everywhere else.** A loss that is
differentiated (SFT, reward model, DPO, the policy / value update) builds its params with
:func:`factored_params`: each adapted kernel becomes a
:class:`~rlhf_jax.models.transformer.LowRankKernel` ``(W, A, B, scale)``, which the model's
Dense layer applies as ``x @ W + scale · (x @ A) @ B``. Autodiff through a merged ``W'``
would form the dense weight gradient ``xᵀ·dy`` of every adapted kernel and then project it
onto ``A`` and ``B`` — the full model's weight-gradient FLOPs, for 2% of the parameters;
the factored form never forms it (``dA = s·xᵀ(dy Bᵀ)``, ``dB = s·(xA)ᵀ dy``). The sampler,
the scorers and the export, which differentiate nothing, merge once (:func:`full_params`)
and run plain weights: the KV-cache decode loop reads ``W'`` at no extra cost per token.
The layer scan, the logical-axis sharding (``A`` on ``W``'s input axis, ``B`` on its output
axis) and the Hugging Face export need no LoRA code: a ``LowRankKernel`` is a pytree whose
leaves carry the ``layers`` axis like the kernel. ``bench/lora_merge.py`` times both forms
of the step (``bench/results/lora_merge.jsonl``; 2-core AMD EPYC family 25 model 17): an
SFT step of SmolLM2-135M, rank 8 on all seven kernels, 32 × 112 tokens, took 22.3 s
factored against 23.9 s merged (0.94×; dense fine-tuning 27.0 s): the dense weight
gradients were the cheaper part of the step (large, well-shaped GEMMs), and the factored
form adds rank-8 matmuls that run far below peak. At a rank near the width (the tiny test
models) the factors cost more than the merge (1.3× there). Either way no transient
``W'`` / ``dW'`` per kernel is held.

Export: ``save_pretrained(model, full_params(trainable, base), path)`` writes an ordinary
dense checkpoint (:func:`save_merged`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rlhf_jax.models.transformer import LowRankKernel

__all__ = [
  "TARGETS",
  "TARGET_ALIASES",
  "LoraSpec",
  "LoraParams",
  "target_paths",
  "init_adapters",
  "merge",
  "init_lora_params",
  "full_params",
  "factored_params",
  "is_lora",
  "adapter_logical_axes",
  "trainable_logical_axes",
  "shard_trainable",
  "trainable_count",
  "tree_bytes",
  "optimizer_state_size",
  "save_merged",
  "save_trainable",
  "load_trainable",
]

# Our Dense module names that LoRA may target (see the module docstring).
TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")
TARGET_ALIASES = {
  "q_proj": "q",
  "k_proj": "k",
  "v_proj": "v",
  "o_proj": "o",
  "gate_proj": "gate",
  "up_proj": "up",
  "down_proj": "down",
}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Which kernels get adapters and how large they are.

  ``rank`` r of ``A @ B``; ``alpha`` sets the scale ``alpha / rank`` of the update (so the
  learning rate need not change with r); ``targets`` names Dense modules (``TARGETS`` or
  their ``TARGET_ALIASES``; a path suffix such as ``"attn/q"`` also works).
  """

  rank: int = 8
  alpha: float = 16.0
  targets: Tuple[str, ...] = ("q", "v")

  def __post_init__(self):
    if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 1:
      raise ValueError(f"LoraSpec.rank={self.rank!r}: expected an integer >= 1")
    if not (math.isfinite(self.alpha) and self.alpha > 0):
      raise ValueError(f"LoraSpec.alpha={self.alpha!r}: expected a finite value > 0")
    if isinstance(self.targets, str) or not self.targets:
      raise ValueError(
        f"LoraSpec.targets={self.targets!r}: expected a non-empty tuple of names from {TARGETS}"
      )
    for t in self.targets:
      if not isinstance(t, str) or not t.strip("/"):
        raise ValueError(f"LoraSpec.targets: {t!r} is not a module name")
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    return float(self.alpha) / int(self.rank)

  def resolved_targets(self) -> Tuple[Tuple[str, ...], ...]:
    """Each target as a path suffix (aliases resolved), e.g. ``("q",)`` or ``("attn", "q")``."""
    return tuple(tuple(TARGET_ALIASES.get(t, t).strip("/").split("/")) for t in self.targets)


class LoraParams(flax.struct.PyTreeNode):
  """A LoRA trainable pytree: what the optimizer sees and the checkpoint stores.

  adapters: nested dict mirroring the base params down to each targeted module, with
    ``{"a": [..., in, r], "b": [..., r, out]}`` in place of its ``kernel``.
  dense: top-level param subtrees trained whole, replacing the base's (``{"score": ...}``
    for a reward or value head; ``{}`` for a policy).
  scale: ``alpha / rank`` (static: part of the tree structure, not a traced value).
  """

  adapters: Any
  dense: Any
  scale: float = flax.struct.field(pytree_node=False, default=1.0)


def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _kernel_paths(params: Any) -> List[Tuple[str, ...]]:
  paths = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(_key(k) for k in path)
    if keys[-1] == "kernel" and jnp.ndim(leaf) >= 2:
      paths.append(keys)
  return paths


def target_paths(spec: LoraSpec, base_params: Any) -> List[Tuple[str, ...]]:
  """The paths of the kernels ``spec`` adapts in ``base_params`` (e.g.
  ``("layers", "attn", "q", "kernel")``), in tree order.

  Raises:
    ValueError: naming a target that matches no kernel (and listing the kernels there are).
  """
  kernels = _kernel_paths(base_params)
  chosen = []
  for name, suffix in zip(spec.targets, spec.resolved_targets()):
    n = len(suffix)
    hits = [p for p in kernels if p[-1 - n : -1] == suffix]
    if not hits:
      names = sorted({p[-2] for p in kernels})
      raise ValueError(
        f"LoraSpec.targets: {name!r} matches no kernel of the model; its Dense modules are "
        f"{names} (Hugging Face aliases: {sorted(TARGET_ALIASES)})"
      )
    chosen += [p for p in hits if p not in chosen]
  return [p for p in kernels if p in chosen]


def _get(tree: Any, path: Sequence[str]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _nest(items: Dict[Tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, value in items.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return out


def _adapter_items(adapters: Any):
  """``(module path, {"a", "b"})`` for every adapter pair in ``adapters``."""
  out = []

  def walk(node, prefix):
    if isinstance(node, dict) and set(node) == {"a", "b"} and not isinstance(node["a"], dict):
      out.append((prefix, node))
      return
    for k in node:
      walk(node[k], prefix + (k,))

  walk(adapters, ())
  return out


def init_adapters(spec: LoraSpec, base_params: Any, rng: jax.Array) -> dict:
  """Adapters for the kernels ``spec`` targets: ``A ~ N(0, 1/in)``, ``B = 0`` (float32, or
  the kernel's dtype when wider), so that ``merge(base, adapters) == base`` exactly.

  Returns the nested dict ``{..., module: {"a": [..., in, r], "b": [..., r, out]}}``.
  """
  paths = target_paths(spec, base_params)
  keys = jax.random.split(rng, len(paths))
  items = {}
  for key, path in zip(keys, paths):
    w = _get(base_params, path)
    lead, (d_in, d_out) = w.shape[:-2], w.shape[-2:]
    dtype = jnp.promote_types(w.dtype, jnp.float32)
    a = jax.random.normal(key, (*lead, d_in, spec.rank), dtype) / math.sqrt(d_in)
    items[path[:-1]] = {"a": a, "b": jnp.zeros((*lead, spec.rank, d_out), dtype)}
  return _nest(items)


def _replace_kernels(base_params: Any, adapters: Any, kernel_fn) -> Any:
  """``base_params`` with each adapted module's kernel replaced by ``kernel_fn(w, {"a",
  "b"})``; the dicts along each path are copied so the caller's tree is never written to."""
  out = dict(base_params)
  for path, ab in _adapter_items(adapters):
    module = out
    for k in path:
      module[k] = dict(module[k])
      module = module[k]
    module["kernel"] = kernel_fn(module["kernel"], ab)
  return out


def _merge_scaled(base_params: Any, adapters: Any, scale: float) -> Any:
  def merged(w, ab):
    delta = jnp.einsum("...ir,...ro->...io", ab["a"], ab["b"], preferred_element_type=jnp.float32)
    return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)

  return _replace_kernels(base_params, adapters, merged)


def _factor(base_params: Any, adapters: Any, scale: float) -> Any:
  return _replace_kernels(
    base_params, adapters, lambda w, ab: LowRankKernel(w, ab["a"], ab["b"], scale)
  )


def _with_trainable(trainable: Any, base: Any, build) -> Any:
  if not isinstance(trainable, LoraParams):
    return trainable
  if base is None:
    raise ValueError("LoRA params need the frozen base params (got base=None)")
  params = dict(build(base, trainable.adapters, trainable.scale))
  params.update(trainable.dense)
  return params


def merge(base_params: Any, adapters: Any, spec: LoraSpec) -> Any:
  """The adapted params: ``W + (alpha/rank) · A @ B`` at every adapted kernel (any leading
  axes, e.g. the stacked ``layers`` axis, are batch axes), every other leaf the base's.
  The sum is taken in float32 and cast to the kernel's dtype."""
  return _merge_scaled(base_params, adapters, spec.scale)


def init_lora_params(
  spec: LoraSpec, base_params: Any, rng: jax.Array, dense: Optional[dict] = None
) -> LoraParams:
  """The trainable pytree of a LoRA model on ``base_params``: fresh adapters (B = 0) and the
  ``dense`` subtrees trained whole (e.g. ``{"score": head}`` of a reward model)."""
  return LoraParams(
    adapters=init_adapters(spec, base_params, rng), dense=dict(dense or {}), scale=spec.scale
  )


def is_lora(trainable: Any) -> bool:
  return isinstance(trainable, LoraParams)


def full_params(trainable: Any, base: Any) -> Any:
  """The model's params from a trainer's trainable pytree and the frozen ``base``.

  Plain params (dense training) are returned as they are (``base`` unused, may be None); a
  :class:`LoraParams` gives ``merge(base, adapters)`` with its ``dense`` subtrees put in
  place of the base's. Differentiating through it reaches only the trainable leaves.
  """
  return _with_trainable(trainable, base, _merge_scaled)


def factored_params(trainable: Any, base: Any) -> Any:
  """Like :func:`full_params`, with each adapted kernel left as a
  :class:`~rlhf_jax.models.transformer.LowRankKernel` ``(W, A, B, scale)`` that the layer
  applies as ``x W + scale (x A) B``: the same function of the adapters (equal to the merged
  forward up to float rounding), whose gradient forms no dense ``[in, out]`` weight
  gradient. Every differentiated LoRA forward (the SFT, reward, DPO and policy losses) uses
  it; sampling, scoring and export, which differentiate nothing, merge once instead."""
  return _with_trainable(trainable, base, _factor)


# ----------------------------------------------------------------------------- sharding


def _adapter_spec(kernel_spec: Any, ndim: int, which: str) -> P:
  entries = list(kernel_spec if isinstance(kernel_spec, P) else ())
  entries = entries + [None] * (ndim - len(entries))
  if which == "a":  # [..., in, r]: the kernel's input axis
    return P(*entries[:-1], None)
  return P(*entries[:-2], None, entries[-1])  # [..., r, out]: its output axis


def adapter_logical_axes(adapters: Any, base_logical_axes: Any) -> Any:
  """Logical ``PartitionSpec`` of every adapter leaf: ``A`` takes its kernel's input axis
  (and leading ``layers`` axis), ``B`` its output axis; the rank axis is replicated. With
  ``base_logical_axes`` from :func:`rlhf_jax.models.param_logical_axes`."""
  items = {}
  for path, ab in _adapter_items(adapters):
    try:
      spec = _get(base_logical_axes, path + ("kernel",))
    except KeyError:  # a kernel the model does not use (an LM head under a scalar head)
      spec = P()
    for which in ("a", "b"):
      items[path + (which,)] = _adapter_spec(spec, ab[which].ndim, which)
  return _nest(items)


def trainable_logical_axes(trainable: Any, model) -> Any:
  """Logical ``PartitionSpec`` pytree matching ``trainable`` (plain params of ``model`` or
  :class:`LoraParams` on a base of its architecture)."""
  from rlhf_jax.models import param_logical_axes

  logical = param_logical_axes(model)
  if not isinstance(trainable, LoraParams):
    return logical
  return LoraParams(
    adapters=adapter_logical_axes(trainable.adapters, logical),
    dense={k: logical[k] for k in trainable.dense},
    scale=trainable.scale,
  )


def shard_trainable(trainable: Any, model, mesh) -> Any:
  """``trainable`` placed on ``mesh`` by :func:`trainable_logical_axes` (dimensions the mesh
  axes do not divide are replicated, as for params)."""
  from rlhf_jax import sharding

  logical = trainable_logical_axes(trainable, model)
  shardings = sharding.logical_shardings(logical, trainable, mesh)
  return sharding.shard_tree(trainable, shardings)


# ----------------------------------------------------------------------------- sizes and export


def trainable_count(tree: Any) -> int:
  """Number of scalars in ``tree`` (e.g. the trainable pytree or the base)."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree.leaves(tree)))


def tree_bytes(tree: Any) -> int:
  """Bytes of every array leaf of ``tree`` (global sizes, not per device)."""
  return int(
    sum(
      np.prod(np.shape(x), dtype=np.int64) * jnp.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
      if hasattr(x, "dtype")
    )
  )


def optimizer_state_size(opt_state: Any) -> Dict[str, int]:
  """``{"count": scalars, "bytes": bytes}`` of an optax state (step counters included):
  with LoRA, the moments of the adapters and heads only."""
  return {"count": trainable_count(opt_state), "bytes": tree_bytes(opt_state)}


def save_merged(model, trainable: Any, base: Any, path, **kwargs):
  """Writes the merged model (:func:`full_params`) as a Hugging Face checkpoint with
  :func:`rlhf_jax.models.hf.save_pretrained` (``kwargs`` passed on); returns the path."""
  from rlhf_jax.models import hf

  params = jax.jit(full_params)(trainable, base) if is_lora(trainable) else trainable
  if model.cfg.head == "lm":  # a reward model's base may carry an unused LM head and v.v.
    params = {k: v for k, v in params.items() if k != "score"}
  elif model.cfg.head == "scalar":
    params = {k: v for k, v in params.items() if k != "lm_head"}
  return hf.save_pretrained(model, params, path, **kwargs)


def save_trainable(path, trainable: LoraParams) -> None:
  """Writes a :class:`LoraParams` (adapters, dense subtrees, scale) to one ``.npz`` file:
  what a run needs to continue training the same adapters on the same base."""
  flat = {"scale": np.float64(trainable.scale)}
  for part in ("adapters", "dense"):
    for keys, leaf in jax.tree_util.tree_flatten_with_path(getattr(trainable, part))[0]:
      flat["/".join([part] + [_key(k) for k in keys])] = np.asarray(jax.device_get(leaf))
  with open(path, "wb") as f:
    np.savez(f, **flat)


def load_trainable(path) -> LoraParams:
  """The :class:`LoraParams` written by :func:`save_trainable` (host arrays)."""
  with np.load(path) as data:
    parts: Dict[str, dict] = {"adapters": {}, "dense": {}}
    for name in data.files:
      if name == "scale":
        continue
      part, *keys = name.split("/")
      parts[part][tuple(keys)] = jnp.asarray(data[name])
    scale = float(data["scale"])
  return LoraParams(_nest(parts["adapters"]), _nest(parts["dense"]), scale=scale)
