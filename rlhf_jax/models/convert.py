"""``rlhf-jax convert SRC DST``: any checkpoint we read -> a standard Hugging Face directory.

SRC is a Hugging Face directory, a ``.gguf`` file or a packaged checkpoint name
(``smollm2-135m-instruct``); DST becomes ``config.json``, ``model.safetensors``,
``generation_config.json`` and the tokenizer files (chat template included), which
``transformers.AutoModelForCausalLM.from_pretrained(DST)`` and
``AutoTokenizer.from_pretrained(DST)`` load. Quantised GGUF tensors are dequantised (to float32 unless ``--dtype`` says otherwise).
``generation_config.json`` lists every stop id (EOS and the chat template's end-of-turn token)
as ``eos_token_id``, so ``generate`` ends a reply where the checkpoint's chat format does.

Usage::

    rlhf-jax convert SRC DST [--dtype float32|bfloat16|float16] [--overwrite]

Exit status 0 on success, 2 on a user error (missing or unsupported input, a non-empty DST
without ``--overwrite``, a missing optional dependency), printed as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["convert_checkpoint", "main"]

PathLike = Union[str, os.PathLike]
_DTYPES = ("float32", "bfloat16", "float16")


def convert_checkpoint(
  src: PathLike, dst: PathLike, *, dtype: Optional[str] = None, overwrite: bool = False
) -> Path:
  """Writes checkpoint ``src`` (directory, ``.gguf`` or packaged name) to ``dst`` as a Hugging
  Face directory with its tokenizer; returns ``dst``. ``dtype`` is the stored tensors' dtype
  (None: float32); ``overwrite`` replaces a non-empty ``dst`` that holds only a model export."""
  from rlhf_jax.models.chat import load_chat_tokenizer
  from rlhf_jax.models.hf import from_pretrained, save_pretrained

  if dtype is not None and dtype not in _DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
  tok = load_chat_tokenizer(src)
  model, params = from_pretrained(src, param_dtype="float32")
  if model.cfg.vocab_size < len(tok.hf):
    raise ValueError(
      f"{src}: the tokenizer has {len(tok.hf)} tokens but the model only"
      f" {model.cfg.vocab_size} embeddings"
    )
  generation = {
    "bos_token_id": tok.bos_id,
    "eos_token_id": tok.stop_ids[0] if len(tok.stop_ids) == 1 else list(tok.stop_ids),
    "pad_token_id": tok.checkpoint_pad_id,
  }
  return save_pretrained(
    model,
    params,
    dst,
    tokenizer=tok.hf,
    dtype=dtype,
    overwrite=overwrite,
    generation_config={k: v for k, v in generation.items() if v is not None},
  )


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
    prog="rlhf-jax convert",
    description="Write a checkpoint (Hugging Face directory, .gguf file, or"
    " 'smollm2-135m-instruct') as a standard Hugging Face directory with its tokenizer.",
  )
  ap.add_argument("src", help="a Hugging Face model directory, a .gguf file, or a packaged name")
  ap.add_argument("dst", help="output directory (created; must be empty unless --overwrite)")
  ap.add_argument(
    "--dtype", choices=_DTYPES, default=None, help="dtype of the stored tensors (float32)"
  )
  ap.add_argument(
    "--overwrite", action="store_true", help="replace DST if it holds a previous model export"
  )
  return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``rlhf-jax convert`` command line; returns the exit status."""
  args = _parser().parse_args(argv)  # usage errors: argparse prints them and exits with 2
  try:
    out = convert_checkpoint(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
  except (ValueError, OSError) as e:  # MissingExtraError is a ValueError too
    sys.stderr.write(f"rlhf-jax convert: error: {e}\n")
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
