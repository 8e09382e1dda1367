"""A pretrained checkpoint's own tokenizer: encode/decode, chat template, stop and pad ids.

Runs that start from a Hugging Face directory or a GGUF file tokenize with the checkpoint's
tokenizer, render prompts with its Jinja chat template, and stop generating at its end-of-turn
token: nothing is a constant of this library. :func:`load_chat_tokenizer` builds a
:class:`ChatTokenizer` from

* a Hugging Face directory: its ``tokenizer.json`` / ``tokenizer_config.json`` (chat template,
  special tokens, padding side) and ``generation_config.json`` (extra EOS ids), through
  :func:`rlhf_jax.data.tokenizer.load_tokenizer`;
* a GGUF file: its ``tokenizer.*`` metadata, through :func:`rlhf_jax.models.gguf.gguf_tokenizer`;
* a packaged checkpoint name (``"smollm2-135m-instruct"``).

Which ids it uses, and why:

* ``eos_id``: the checkpoint's EOS token.
* ``stop_ids``: EOS, plus the token the chat template closes an assistant turn with (found by
  rendering a one-turn conversation and reading the special token right after the reply, e.g.
  ``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3), plus any end-of-turn ids the
  checkpoint lists (``generation_config.json``'s ``eos_token_id``, GGUF's
  ``tokenizer.ggml.eot_token_id``). ``end_of_turn_id`` is the first of them that the template
  writes (EOS when there is no template).
* ``pad_id``: the checkpoint's PAD token if it is not a stop id. Many chat checkpoints pad with
  EOS (SmolLM2: PAD = EOS = ``<|im_end|>``); :func:`rlhf_jax.generation.sample` needs them
  distinct (a padded row must not look finished), so then the first of UNK and the other
  special tokens that is not a stop id pads instead. Padded positions are masked everywhere, so
  which token fills them does not change any output. ``checkpoint_pad_id`` keeps the
  checkpoint's own value (written back by ``rlhf-jax convert``).
* ``padding_side``: the checkpoint's (for training text). Prompts for generation are always
  left-padded (:func:`rlhf_jax.data.tokenizer.encode_prompts`).

A :class:`ChatTokenizer` has ``pad_token_id`` / ``eos_token_id`` / ``bos_token_id`` and
``backend_tokenizer``, so the fixed-shape helpers of :mod:`rlhf_jax.data.tokenizer`
(``encode_prompts``, ``encode_texts``, ...) take it in place of a transformers tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["ChatTokenizer", "load_chat_tokenizer", "template_end_of_turn"]

PathLike = Union[str, os.PathLike]
Message = Mapping[str, str]
# A reply text no tokenizer merges with its neighbours and no template rewrites.
_SENTINEL = "Zq7xSENTINELx7qZ"


@dataclasses.dataclass(frozen=True, eq=False)
class ChatTokenizer:
  """A checkpoint's tokenizer and the token ids this library uses with it (module docstring).

  Attributes:
    hf: the transformers fast tokenizer, exactly as the checkpoint defines it.
    source: the checkpoint it came from (for messages).
    eos_id: the checkpoint's EOS id.
    end_of_turn_id: the id the chat template ends an assistant turn with.
    stop_ids: every id generation stops at (EOS and end-of-turn ids, no duplicates).
    pad_id: the id padding uses here; never a stop id.
    checkpoint_pad_id: the checkpoint's own PAD id (None if it has none).
    bos_id: the checkpoint's BOS id or None.
    padding_side: the checkpoint's padding side (``"left"`` / ``"right"``).
  """

  hf: Any
  source: str
  eos_id: int
  end_of_turn_id: int
  stop_ids: Tuple[int, ...]
  pad_id: int
  checkpoint_pad_id: Optional[int]
  bos_id: Optional[int]
  padding_side: str

  # The attributes rlhf_jax.data.tokenizer's helpers read.
  @property
  def pad_token_id(self) -> int:
    return self.pad_id

  @property
  def eos_token_id(self) -> int:
    return self.eos_id

  @property
  def bos_token_id(self) -> Optional[int]:
    return self.bos_id

  @property
  def backend_tokenizer(self):
    return self.hf.backend_tokenizer

  @property
  def chat_template(self) -> Optional[str]:
    return getattr(self.hf, "chat_template", None)

  @property
  def vocab_size(self) -> int:
    """Number of token ids (base vocabulary plus added tokens)."""
    return len(self.hf)

  def encode(self, text: str, *, add_special_tokens: bool = False) -> List[int]:
    """Token ids of ``text``; ``add_special_tokens`` adds the checkpoint's BOS/EOS the way its
    tokenizer does (off by default: chat templates write their own)."""
    return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(
    self, messages: Sequence[Message], *, add_generation_prompt: bool = True
  ) -> str:
    """``messages`` (``[{"role": ..., "content": ...}, ...]``) rendered by the checkpoint's own
    Jinja chat template; ``add_generation_prompt`` appends the header of an assistant turn.

    Raises:
      ValueError: the checkpoint has no chat template, or its template rejects the messages.
    """
    if not self.chat_template:
      raise ValueError(f"{self.source}: the checkpoint has no chat template")
    try:
      return self.hf.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
      )
    except Exception as e:  # jinja2 TemplateError / raise_exception() in the template
      raise ValueError(
        f"{self.source}: the chat template rejects these messages: {type(e).__name__}: {e}"
      ) from e

  def encode_chat(
    self, messages: Sequence[Message], *, add_generation_prompt: bool = True
  ) -> List[int]:
    """Token ids of :meth:`apply_chat_template` (the template writes any BOS itself)."""
    return self.encode(
      self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    )


def template_end_of_turn(hf_tokenizer: Any) -> Optional[int]:
  """The special token the chat template writes right after an assistant reply, or None.

  Renders ``[user, assistant]`` with a sentinel reply and reads the first token of what
  follows it; only a special (added) token counts, so a template that ends turns with plain
  text gives None.
  """
  if not getattr(hf_tokenizer, "chat_template", None):
    return None
  messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
  try:
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False)
  except Exception:  # a template that does not render this conversation has no answer here
    return None
  at = text.find(_SENTINEL)
  if at < 0:
    return None
  suffix = text[at + len(_SENTINEL) :].lstrip(" ")
  ids = hf_tokenizer.encode(suffix, add_special_tokens=False)
  special = set(hf_tokenizer.all_special_ids) | {
    int(i) for i, t in hf_tokenizer.added_tokens_decoder.items() if t.special
  }
  return int(ids[0]) if ids and int(ids[0]) in special else None


def _generation_config_eos(path: Path) -> Tuple[int, ...]:
  file = path / "generation_config.json"
  if not file.is_file():
    return ()
  try:
    eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file}: invalid JSON ({e})") from e
  if eos is None:
    return ()
  eos = eos if isinstance(eos, list) else [eos]
  if not all(isinstance(i, int) for i in eos):
    raise ValueError(f"{file}: eos_token_id must be an int or a list of ints, got {eos!r}")
  return tuple(eos)


def _unique(ids) -> Tuple[int, ...]:
  out: List[int] = []
  for i in ids:
    if i is not None and int(i) not in out:
      out.append(int(i))
  return tuple(out)


def load_chat_tokenizer(spec: PathLike) -> ChatTokenizer:
  """The :class:`ChatTokenizer` of a checkpoint (directory, ``.gguf`` file or packaged name;
  :func:`rlhf_jax.models.gguf.resolve_checkpoint`).

  Raises:
    ValueError / TokenizerFileError: naming the file when the tokenizer is missing, unreadable,
      or has no EOS token, or when no token can pad.
    MissingExtraError: a GGUF source without the ``gguf`` package (message: the pip command).
  """
  from rlhf_jax.models import gguf as _gguf

  path = _gguf.resolve_checkpoint(spec)
  if _gguf.is_gguf(path):
    f = _gguf.read_gguf(path)
    hf = _gguf.gguf_tokenizer(f)
    listed = _gguf.eot_token_ids(f)
  else:
    from rlhf_jax.data.tokenizer import load_tokenizer

    hf = load_tokenizer(path, check_special_tokens=False)
    listed = _generation_config_eos(path)
  source = str(path)
  if hf.eos_token_id is None:
    raise ValueError(f"{source}: the tokenizer has no EOS token")
  eos = int(hf.eos_token_id)
  eot = template_end_of_turn(hf)
  stop = _unique([eos, eot, *listed])
  candidates = [hf.pad_token_id, hf.unk_token_id, *hf.all_special_ids]
  pad = next((int(c) for c in candidates if c is not None and int(c) not in stop), None)
  if pad is None:
    raise ValueError(
      f"{source}: no special token can pad: PAD, UNK and every special token are stop ids"
      f" {list(stop)}"
    )
  return ChatTokenizer(
    hf=hf,
    source=source,
    eos_id=eos,
    end_of_turn_id=eos if eot is None else eot,
    stop_ids=stop,
    pad_id=pad,
    checkpoint_pad_id=None if hf.pad_token_id is None else int(hf.pad_token_id),
    bos_id=None if hf.bos_token_id is None else int(hf.bos_token_id),
    padding_side=str(hf.padding_side),
  )
