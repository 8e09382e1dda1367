"""The judge protocol: who says which of two responses is better.

A judge is any callable

    judge(prompts: list[str], responses_a: list[str], responses_b: list[str]) -> output

where `output` is one of
  * a `JudgeOutput` (or a mapping with its field names),
  * labels: an integer array (0 = a, 1 = b, 2 = tie) or a list of "a" / "b" / "tie",
  * probabilities: a float array of P(a ≻ b).
`normalize_judge_output` turns any of these into a `JudgeOutput`; `as_judge(fn)` wraps a callable
so that it always returns one. Judges are named in configs as `"package.module:function"` and
loaded with `load_callable`. A scorer `(prompts, responses) -> scores [N]` becomes a judge through
the simulated-annotator model in `rlhf_jax.feedback.simulated`.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from rlhf_jax.data.preferences import PreferenceRecord
from rlhf_jax.labels import LABEL_A, LABEL_B, LABEL_TIE, decode_label, decode_labels, encode_labels

__all__ = [
  "LABEL_A",
  "LABEL_B",
  "LABEL_TIE",
  "JudgeOutput",
  "Judge",
  "Scorer",
  "JudgeSpecError",
  "normalize_judge_output",
  "as_judge",
  "load_callable",
  "load_judge",
  "judge_records",
]


class Judge(Protocol):
  def __call__(
    self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
  ) -> Any: ...


class Scorer(Protocol):
  def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class JudgeOutput:
  """A judge's verdict on N pairs.

  Attributes:
    prob_a: float64 [N], P(a ≻ b) — a strictly preferred.
    labels: int32 [N], the verdict: 0 = a, 1 = b, 2 = tie.
    prob_tie: float64 [N] P(tie), or None when the judge has no notion of ties. Where given,
      P(b ≻ a) = 1 - prob_a - prob_tie.
  """

  prob_a: np.ndarray
  labels: np.ndarray
  prob_tie: np.ndarray | None = None

  def __post_init__(self):
    prob_a = np.asarray(self.prob_a, dtype=np.float64)
    labels = np.asarray(self.labels)
    if prob_a.ndim != 1 or labels.shape != prob_a.shape:
      raise ValueError(
        f"JudgeOutput: prob_a {prob_a.shape} and labels {labels.shape} must both be [N]"
      )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"JudgeOutput: labels must be integers 0/1/2, got dtype {labels.dtype}")
    labels = encode_labels(labels, "JudgeOutput: labels")
    if not np.all(np.isfinite(prob_a)) or np.any((prob_a < 0) | (prob_a > 1)):
      raise ValueError("JudgeOutput: prob_a must be finite probabilities in [0, 1]")
    prob_tie = self.prob_tie
    if prob_tie is not None:
      prob_tie = np.asarray(prob_tie, dtype=np.float64)
      if prob_tie.shape != prob_a.shape:
        raise ValueError(f"JudgeOutput: prob_tie {prob_tie.shape} must match prob_a {prob_a.shape}")
      if np.any((prob_tie < 0) | (prob_tie > 1)) or np.any(prob_a + prob_tie > 1 + 1e-9):
        raise ValueError("JudgeOutput: prob_tie must be in [0, 1] with prob_a + prob_tie <= 1")
    object.__setattr__(self, "prob_a", prob_a)
    object.__setattr__(self, "labels", labels)
    object.__setattr__(self, "prob_tie", prob_tie)

  def __len__(self) -> int:
    return int(self.prob_a.shape[0])

  @property
  def label_names(self) -> list[str]:
    """Labels as "a" / "b" / "tie"."""
    return decode_labels(self.labels)


def _from_labels(labels: np.ndarray) -> JudgeOutput:
  prob_a = (labels == LABEL_A).astype(np.float64)
  prob_tie = (labels == LABEL_TIE).astype(np.float64)
  return JudgeOutput(prob_a=prob_a, labels=labels, prob_tie=prob_tie)


def _labels_from_prob(prob_a: np.ndarray) -> np.ndarray:
  return np.where(prob_a > 0.5, LABEL_A, np.where(prob_a < 0.5, LABEL_B, LABEL_TIE)).astype(
    np.int32
  )


def normalize_judge_output(output: Any, n: int) -> JudgeOutput:
  """Turn what a judge returned into a `JudgeOutput` for `n` pairs.

  * `JudgeOutput`: checked for length.
  * mapping with `prob_a` and/or `labels` (and optionally `prob_tie`): missing labels come from
    prob_a (> 0.5 -> a, < 0.5 -> b, exactly 0.5 -> tie); missing prob_a from the labels.
  * integer array / list of ints: labels 0/1/2 -> prob_a 1/0/0, prob_tie 0/0/1.
  * list of "a"/"b"/"tie": the same, by name.
  * float array: prob_a; labels as for a mapping; prob_tie None.

  Raises:
    ValueError / TypeError saying what was expected.
  """
  if isinstance(output, JudgeOutput):
    out = output
  elif isinstance(output, Mapping):
    unknown = set(output) - {"prob_a", "labels", "prob_tie"}
    if unknown or not ({"prob_a", "labels"} & set(output)):
      raise ValueError(
        f"judge returned a mapping with keys {sorted(output)}; expected prob_a and/or labels "
        f"(and optionally prob_tie)"
      )
    prob_tie = output.get("prob_tie")
    if "labels" in output:
      labels = encode_labels(output["labels"], "judge labels")
      prob_a = output["prob_a"] if "prob_a" in output else (labels == LABEL_A).astype(np.float64)
      if prob_tie is None and "prob_a" not in output:
        prob_tie = (labels == LABEL_TIE).astype(np.float64)
    else:
      prob_a = np.asarray(output["prob_a"], dtype=np.float64)
      labels = _labels_from_prob(prob_a)
    out = JudgeOutput(prob_a=prob_a, labels=labels, prob_tie=prob_tie)
  else:
    if isinstance(output, (str, bytes)):
      raise TypeError(
        f"judge returned a single {type(output).__name__}; expected one verdict per pair"
      )
    seq = list(output) if not isinstance(output, np.ndarray) else output
    if len(seq) and all(isinstance(x, str) for x in seq):
      out = _from_labels(encode_labels(seq, "judge labels"))
    else:
      arr = np.asarray(seq)
      if arr.dtype == bool:
        raise TypeError(
          "judge returned booleans; return labels (0 = a, 1 = b, 2 = tie) or P(a ≻ b) floats"
        )
      if arr.size == 0 or np.issubdtype(arr.dtype, np.integer):
        out = _from_labels(encode_labels(arr, "judge labels"))
      elif np.issubdtype(arr.dtype, np.floating):
        prob_a = arr.astype(np.float64)
        out = JudgeOutput(prob_a=prob_a, labels=_labels_from_prob(prob_a))
      else:
        raise TypeError(
          f"judge returned an array of dtype {arr.dtype}; expected int labels or float P(a ≻ b)"
        )
  if len(out) != n:
    raise ValueError(f"judge returned {len(out)} verdicts for {n} pairs")
  return out


def as_judge(
  fn: Callable[..., Any],
) -> Callable[[Sequence[str], Sequence[str], Sequence[str]], JudgeOutput]:
  """Wrap a judge callable so that it checks its inputs and always returns a `JudgeOutput`."""
  if not callable(fn):
    raise TypeError(f"a judge must be callable, got {type(fn).__name__}")

  def judge(
    prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], **kwargs
  ) -> JudgeOutput:
    n = len(prompts)
    if len(responses_a) != n or len(responses_b) != n:
      raise ValueError(
        f"judge inputs differ in length: {n} prompts, {len(responses_a)} responses_a, "
        f"{len(responses_b)} responses_b"
      )
    return normalize_judge_output(
      fn(list(prompts), list(responses_a), list(responses_b), **kwargs), n
    )

  judge.__name__ = getattr(fn, "__name__", "judge")
  judge.__doc__ = getattr(fn, "__doc__", None)
  judge.__wrapped__ = fn
  return judge


class JudgeSpecError(ValueError):
  """A `"module:function"` spec could not be resolved. The message says which part failed."""


_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def load_callable(spec: str) -> Callable[..., Any]:
  """Resolve `"package.module:function"` (the attribute may be dotted: `"mod:Class.method"`).

  Raises:
    JudgeSpecError: bad format, module not found (or failing on import), attribute missing, or
      the object is not callable — each with the spec in the message.
  """
  if not isinstance(spec, str) or not _SPEC.match(spec.strip()):
    raise JudgeSpecError(
      f"bad callable spec {spec!r}: expected 'package.module:function', e.g. "
      f"'rlhf_jax.feedback.scorers:vader_sentiment'"
    )
  module_name, attr_path = spec.strip().split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise JudgeSpecError(f"callable spec {spec!r}: module {module_name!r} not found") from e
    raise JudgeSpecError(f"callable spec {spec!r}: importing {module_name!r} failed: {e}") from e
  except Exception as e:
    raise JudgeSpecError(
      f"callable spec {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}"
    ) from e
  obj: Any = module
  for part in attr_path.split("."):
    if not hasattr(obj, part):
      raise JudgeSpecError(
        f"callable spec {spec!r}: {module_name!r} has no attribute {attr_path!r}"
      )
    obj = getattr(obj, part)
  if not callable(obj):
    raise JudgeSpecError(
      f"callable spec {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable"
    )
  return obj


def load_judge(spec: str) -> Callable[[Sequence[str], Sequence[str], Sequence[str]], JudgeOutput]:
  """`as_judge(load_callable(spec))`."""
  return as_judge(load_callable(spec))


def judge_records(
  judge: Callable[..., Any],
  prompts: Sequence[str],
  responses_a: Sequence[str],
  responses_b: Sequence[str],
  *,
  metadata: Mapping[str, Any] | None = None,
) -> list[PreferenceRecord]:
  """Run a judge and return one `PreferenceRecord` per pair; each record's metadata is `metadata`
  plus `probability` = the judge's P(a ≻ b)."""
  out = as_judge(judge)(prompts, responses_a, responses_b)
  base = dict(metadata or {})
  return [
    PreferenceRecord(p, a, b, decode_label(lab), {**base, "probability": float(pa)})
    for p, a, b, lab, pa in zip(prompts, responses_a, responses_b, out.labels, out.prob_a)
  ]
