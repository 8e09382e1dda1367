"""The preference label codec: the one place where a pairwise verdict is named and numbered.

A verdict on a pair (response a, response b) is ``"a"`` (a preferred), ``"b"`` (b preferred)
or ``"tie"``; arrays store it as the integer code ``0``, ``1`` or ``2`` (its index in
:data:`LABELS`). Records on disk (JSONL, TFDS, the annotation queue) carry the names; losses,
judges and metrics work on the codes.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np

__all__ = [
  "LABELS",
  "LABEL_A",
  "LABEL_B",
  "LABEL_TIE",
  "encode_label",
  "decode_label",
  "encode_labels",
  "decode_labels",
]

LABELS: tuple[str, ...] = ("a", "b", "tie")
"""The label names; a name's index is its code."""
LABEL_A = 0
"""Label: response a is preferred."""
LABEL_B = 1
"""Label: response b is preferred."""
LABEL_TIE = 2
"""Label: the two responses are tied."""


def encode_label(name: str) -> int:
  """The code of one label name (``"a"`` -> 0, ``"b"`` -> 1, ``"tie"`` -> 2).

  Raises:
    ValueError: ``name`` is not a label name.
  """
  if name not in LABELS:
    raise ValueError(f"unknown label {name!r}; expected one of {LABELS}")
  return LABELS.index(name)


def decode_label(code: Any) -> str:
  """The name of one label code (0 -> ``"a"``, 1 -> ``"b"``, 2 -> ``"tie"``)."""
  return LABELS[int(code)]


def encode_labels(labels: Any, what: str = "labels") -> np.ndarray:
  """``[N]`` labels, as names or integer codes, -> int32 codes, checked.

  Args:
    labels: a sequence or 1-D array of names (``"a"``/``"b"``/``"tie"``) or codes (0/1/2).
    what: names the labels in error messages.

  Raises:
    ValueError: not 1-D, an unknown name, a code outside {0, 1, 2}, or neither names nor
      integers.
  """
  seq = labels if isinstance(labels, np.ndarray) else list(labels)
  if len(seq) and all(isinstance(x, str) for x in seq):
    bad = sorted({x for x in seq if x not in LABELS})
    if bad:
      unknown = ", ".join(repr(x) for x in bad)
      raise ValueError(f"{what}: unknown label {unknown}; expected one of {LABELS}")
    return np.asarray([LABELS.index(x) for x in seq], dtype=np.int32)
  arr = np.asarray(seq)
  if arr.ndim != 1:
    raise ValueError(f"{what}: expected a 1-D array of labels, got shape {arr.shape}")
  if not arr.size:
    return arr.astype(np.int32)
  if arr.dtype.kind not in "iu":
    raise ValueError(
      f"{what}: labels must be integers 0/1/2 or names {LABELS}, got dtype {arr.dtype}"
    )
  bad_codes = sorted({int(x) for x in arr[(arr < 0) | (arr > 2)]})
  if bad_codes:
    raise ValueError(
      f"{what}: label {bad_codes[0]} is not 0 (a), 1 (b) or 2 (tie); labels must be in "
      f"{{0, 1, 2}}, got {bad_codes}"
    )
  return arr.astype(np.int32)


def decode_labels(codes: Sequence[int] | np.ndarray) -> List[str]:
  """``[N]`` codes -> their names."""
  return [LABELS[int(c)] for c in np.asarray(codes).tolist()]
