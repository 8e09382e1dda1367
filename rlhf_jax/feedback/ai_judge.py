"""The AI judge (RLAIF / Constitutional-AI style): a causal LM reads written principles and says
which of two responses is better.

For each pair the judge fills a template, e.g.

    {principles}

    Prompt: {prompt}
    Response A: {a}
    Response B: {b}
    Which response is better? Answer:

and reads the log-probabilities l_A, l_B of the two answer tokens (" A", " B") at the next
position. For the order (a, b) — a shown as "A" —

    P_AB(a) = softmax([l_A, l_B])[0] = σ(l_A - l_B),

the probability the LM names the response shown first. LMs favour a slot, so every pair is also
shown swapped (b as "A", a as "B"), where P_BA(b) = σ(l'_A - l'_B) is the probability it names b;
under that order P(a ≻ b) = 1 - P_BA(b). The judge averages the two readings:

    P(a ≻ b) = ½ (P_AB(a) + 1 - P_BA(b)) = ½ (σ(d_AB) + σ(-d_BA)),  d = l_A - l_B,

so judging (b, a) gives exactly 1 - P(a ≻ b), and a judge that only prefers slot A (d_AB = d_BA)
gives ½. The LM has no notion of a tie: the label is a tie when |P - ½| < `tie_margin` (or P is
exactly ½), otherwise a if P > ½ and b if P < ½; `JudgeOutput.prob_tie` is None.

Decisions:
  * Answer strings must each encode to exactly ONE token, and to different tokens; otherwise the
    constructor raises ValueError. (Using only the first token would silently break the judge:
    " A" and " B" split as [" ", "A"] / [" ", "B"] share their first token, and P would be ½.)
  * Inputs are tokenized as the whole formatted string (as the LM saw text in training), plus an
    optional BOS. A pair longer than `max_len` tokens (in either order) has its RESPONSES cut from
    the end — never the principles, the prompt or the template — sharing the room fairly: the
    shorter response is kept whole if it fits in half, and the other gets the rest. Both orders use
    the same cut responses. If the template, principles and prompt leave fewer than 2 tokens for
    the responses, a ValueError names the pair.
  * Efficiency: pairs are sorted by length, then each forward pass holds `batch_size` pairs × both
    orders = 2·batch_size rows, left-padded to a length rounded up to a multiple of `length_bucket`
    (capped at `max_len`); the last batch is filled with dummy rows. One jitted forward per
    (length bucket), computing the LM head at the last position only (`head_slice`), so a run
    compiles at most ⌈max_len / length_bucket⌉ programs. Results are fetched once, at the end.

Use from a config as `"rlhf_jax.feedback.ai_judge:make_judge"` with explicit arguments.
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data.tokenizer import TokenizerFileError, encode_batch, load_tokenizer
from rlhf_jax.evaluation import agreement
from rlhf_jax.feedback.judges import JudgeOutput, normalize_judge_output
from rlhf_jax.labels import LABEL_A, LABEL_B, LABEL_TIE

__all__ = [
  "DEFAULT_TEMPLATE",
  "AIJudge",
  "AIJudgeVerdicts",
  "answer_logprobs",
  "debiased_preference",
  "labels_with_ties",
  "render_principles",
  "agreement_with_gold",
  "make_judge",
]

DEFAULT_TEMPLATE = (
  "{principles}\n\nPrompt: {prompt}\nResponse A: {a}\nResponse B: {b}\n"
  "Which response is better? Answer:"
)
_FIELDS_ALLOWED = ("principles", "prompt", "a", "b")


# ----------------------------------------------------------------------------------------------
# Pure pieces


def answer_logprobs(
  model, params, ids_BT: jax.Array, mask_BT: jax.Array, answer_ids_2: jax.Array
) -> jax.Array:
  """Log-probabilities of the two answer tokens at the position after the last column.

  `log p(tok) = z[tok] - logsumexp(z)` with `z` the LM logits at position T-1 (the head runs on
  that position only). Rows must be LEFT-padded so the last column is each row's last real token.

  Args:
    model: a `Transformer` with an LM head (`head="lm"` or `"both"`).
    params: its params pytree.
    ids_BT, mask_BT: int32 [B, T] left-padded tokens and mask (1 = real token).
    answer_ids_2: int32 [2], the token ids of answer "A" and answer "B".
  Returns:
    logp_B2: float32 [B, 2].
  """
  t = ids_BT.shape[1]
  out = model.apply({"params": params}, ids_BT, mask_BT, head_slice=(t - 1, t))
  logits_BV = (out[0] if isinstance(out, tuple) else out)[:, -1].astype(jnp.float32)
  return logits_BV[:, answer_ids_2] - jax.nn.logsumexp(logits_BV, axis=-1, keepdims=True)


def _sigmoid64(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(np.asarray(x, np.float64) / 2.0))


def debiased_preference(logp_ab_N2: np.ndarray, logp_ba_N2: np.ndarray) -> np.ndarray:
  """P(a ≻ b) = ½ (σ(d_AB) + σ(-d_BA)), d = l_A - l_B, in float64.

  Args:
    logp_ab_N2: [N, 2] log-probs of answers (A, B) with a shown as A.
    logp_ba_N2: [N, 2] the same with b shown as A.
  Returns:
    float64 [N]. Swapping the two arguments gives 1 - the result (up to float64 rounding).
  """
  logp_ab = np.asarray(logp_ab_N2, np.float64)
  logp_ba = np.asarray(logp_ba_N2, np.float64)
  return 0.5 * (
    _sigmoid64(logp_ab[:, 0] - logp_ab[:, 1]) + _sigmoid64(logp_ba[:, 1] - logp_ba[:, 0])
  )


def labels_with_ties(prob_a: np.ndarray, tie_margin: float) -> np.ndarray:
  """int32 labels: tie (2) where |P - ½| < tie_margin or P == ½, else a (0) if P > ½, b (1) if P < ½."""
  prob_a = np.asarray(prob_a, np.float64)
  tie = (np.abs(prob_a - 0.5) < tie_margin) | (prob_a == 0.5)
  return np.where(tie, LABEL_TIE, np.where(prob_a > 0.5, LABEL_A, LABEL_B)).astype(np.int32)


def render_principles(principles: str | Sequence[str]) -> str:
  """A string is used as is; a list becomes numbered lines "1. ...". Empty input raises."""
  if isinstance(principles, str):
    if not principles.strip():
      raise ValueError(
        "principles: empty string; write at least one principle the judge should apply"
      )
    return principles.strip()
  try:
    items = list(principles)
  except TypeError:
    raise TypeError(
      f"principles: expected a string or a list of strings, got {type(principles).__name__}"
    ) from None
  if not items:
    raise ValueError("principles: empty list; write at least one principle the judge should apply")
  for i, p in enumerate(items):
    if not isinstance(p, str):
      raise TypeError(f"principles[{i}]: expected a string, got {type(p).__name__}")
    if not p.strip():
      raise ValueError(f"principles[{i}]: empty string")
  return "\n".join(f"{i + 1}. {p.strip()}" for i, p in enumerate(items))


def _check_template(template: str) -> None:
  if not isinstance(template, str):
    raise TypeError(f"template: expected a string, got {type(template).__name__}")
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  except ValueError as e:
    raise ValueError(
      f"template: not a valid format string ({e}); write literal braces as '{{{{' and '}}}}'"
    ) from e
  unknown = sorted({f for f in fields if f not in _FIELDS_ALLOWED})
  if unknown:
    raise ValueError(
      f"template: unknown fields {unknown}; allowed are {{principles}}, {{prompt}}, {{a}}, {{b}}"
    )
  if "principles" not in fields:
    raise ValueError(
      "template: principles were given but the template has no {principles} field to show them"
    )
  for name in _FIELDS_ALLOWED:
    if fields.count(name) != 1:
      raise ValueError(
        f"template: the field {{{name}}} must appear exactly once, found {fields.count(name)}"
      )


def _share(len_a: int, len_b: int, room: int) -> tuple[int, int]:
  """Token counts (k_a, k_b) to keep so that k_a + k_b <= room, cutting the longer first."""
  if len_a + len_b <= room:
    return len_a, len_b
  half = room // 2
  if len_a <= half:
    return len_a, room - len_a
  if len_b <= half:
    return room - len_b, len_b
  return room - half, half


# ----------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class AIJudgeVerdicts:
  """What the AI judge saw and said about N pairs.

  Attributes:
    prob_a: float64 [N], debiased P(a ≻ b) (module docstring).
    labels: int32 [N], 0 = a, 1 = b, 2 = tie (|P - ½| < tie_margin).
    prob_ab: float64 [N], P_AB(a) = σ(l_A - l_B) with a shown as "A".
    prob_ba: float64 [N], P_BA(b) = σ(l'_A - l'_B) with b shown as "A".
    answer_mass: float64 [N, 2], P(" A") + P(" B") under the full vocabulary, per order (ab, ba):
      how much the LM keeps to the answer format at all (low = the judge is guessing).
    truncated: bool [N], whether the pair's responses were cut to fit max_len.
  """

  prob_a: np.ndarray
  labels: np.ndarray
  prob_ab: np.ndarray
  prob_ba: np.ndarray
  answer_mass: np.ndarray
  truncated: np.ndarray

  @property
  def slot_bias(self) -> np.ndarray:
    """float64 [N], ½ (P_AB(a) + P_BA(b)) - ½: > 0 when the LM favours whatever is shown first
    (0 for a judge without position bias, since then P_BA(b) = 1 - P_AB(a))."""
    return 0.5 * (self.prob_ab + self.prob_ba) - 0.5

  def judge_output(self) -> JudgeOutput:
    return JudgeOutput(prob_a=self.prob_a, labels=self.labels)


# ----------------------------------------------------------------------------------------------
# The judge


class AIJudge:
  """A judge `(prompts, responses_a, responses_b) -> JudgeOutput` backed by a causal LM.

  Holds only immutable inputs (model definition, params, tokenizer, settings) and a jitted
  forward; calling it has no side effects.

  Args:
    model: a `rlhf_jax.models.Transformer` with an LM head (or any flax module with the same
      `apply(variables, ids, mask, head_slice=...) -> logits [B, T', V]` signature).
    params: its params pytree.
    tokenizer: a Hugging Face (fast) tokenizer for the model.
    principles: a string, or a list of strings rendered as numbered lines.
    template: format string with each of {principles}, {prompt}, {a}, {b} exactly once; it should
      end where the answer token follows (e.g. "... Answer:" with answers " A" / " B").
    answer_a, answer_b: the answer strings, each exactly one token (see module docstring).
    batch_size: pairs per forward pass (each pass runs 2 · batch_size rows: both orders).
    tie_margin: in [0, ½); label a tie when |P - ½| < tie_margin.
    max_len: most tokens per judge input; longer pairs have their responses cut.
    length_bucket: rows are padded to a multiple of this (capped at max_len).
    add_bos: prepend the tokenizer's BOS token (Llama-style judges expect it).
  """

  def __init__(
    self,
    model,
    params,
    tokenizer,
    *,
    principles: str | Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    answer_a: str = " A",
    answer_b: str = " B",
    batch_size: int = 8,
    tie_margin: float = 0.0,
    max_len: int = 512,
    length_bucket: int = 64,
    add_bos: bool = False,
  ):
    self.principles = render_principles(principles)
    _check_template(template)
    for name, value in (
      ("batch_size", batch_size),
      ("max_len", max_len),
      ("length_bucket", length_bucket),
    ):
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if not 0.0 <= float(tie_margin) < 0.5:
      raise ValueError(f"tie_margin: expected a number in [0, 0.5), got {tie_margin!r}")
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
      if getattr(cfg, "head", "lm") not in ("lm", "both"):
        raise ValueError(f"model: the AI judge needs an LM head, got head={cfg.head!r}")
      if getattr(cfg, "position", None) == "learned" and max_len > cfg.max_len:
        raise ValueError(
          f"max_len={max_len} exceeds the model's {cfg.max_len} learned positions; "
          f"set max_len <= {cfg.max_len}"
        )
    if add_bos and getattr(tokenizer, "bos_token_id", None) is None:
      raise ValueError("add_bos=True but the tokenizer has no BOS token")
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.template = template
    self.batch_size, self.max_len, self.length_bucket = (
      int(batch_size),
      int(max_len),
      int(length_bucket),
    )
    self.tie_margin, self.add_bos = float(tie_margin), bool(add_bos)
    self.answer_ids = self._answer_ids(answer_a, answer_b)
    if template.endswith((" ", "\t")) and (answer_a[:1].isspace() or answer_b[:1].isspace()):
      warnings.warn(
        f"template ends with whitespace and the answers {answer_a!r}/{answer_b!r} start with "
        f"whitespace: the LM will see a doubled space before its answer",
        stacklevel=2,
      )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    self.pad_id = int(pad if pad is not None else 0)  # masked out either way
    answer_ids_2 = jnp.asarray(self.answer_ids, jnp.int32)
    self._forward = jax.jit(lambda p, ids, mask: answer_logprobs(model, p, ids, mask, answer_ids_2))

  @classmethod
  def from_pretrained(
    cls,
    model_path: str | os.PathLike[str],
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
    **settings,
  ) -> "AIJudge":
    """Load a Hugging Face model folder with `rlhf_jax.models.hf.from_pretrained` and its tokenizer
    with `rlhf_jax.data.tokenizer.load_tokenizer` (from `tokenizer_path`, default the model
    folder; it needs distinct PAD and EOS tokens); `settings` go to the constructor."""
    from rlhf_jax.models import hf

    model_path = str(model_path) if model_path is not None else ""
    if not model_path or not os.path.isdir(model_path):
      raise FileNotFoundError(
        f"model_path={model_path!r}: not a directory; expected a Hugging Face model folder "
        f"(config.json + model.safetensors) as written by rlhf_jax.models.save_pretrained"
      )
    model, params = hf.from_pretrained(model_path, dtype=dtype)
    tok_path = model_path if tokenizer_path is None else str(tokenizer_path)
    try:
      tokenizer = load_tokenizer(tok_path)
    except TokenizerFileError as e:
      raise TokenizerFileError(
        f"{e}; pass tokenizer_path= to name the judge's tokenizer folder"
      ) from e
    return cls(model, params, tokenizer, **settings)

  def _answer_ids(self, answer_a: str, answer_b: str) -> tuple[int, int]:
    ids = []
    for name, text in (("answer_a", answer_a), ("answer_b", answer_b)):
      if not isinstance(text, str) or not text:
        raise ValueError(f"{name}: expected a non-empty string, got {text!r}")
      tokens = encode_batch(self.tokenizer, [text])[0]
      if len(tokens) != 1:
        pieces = self.tokenizer.convert_ids_to_tokens(tokens)
        raise ValueError(
          f"{name}={text!r} encodes to {len(tokens)} tokens {pieces}; the judge reads one "
          f"next-token probability per answer, so each answer must be exactly one token of "
          f"this tokenizer (try e.g. ' A' vs 'A', or other answer words)"
        )
      ids.append(int(tokens[0]))
    if ids[0] == ids[1]:
      raise ValueError(
        f"answer_a={answer_a!r} and answer_b={answer_b!r} encode to the same token {ids[0]}"
      )
    return ids[0], ids[1]

  # -- tokenization ---------------------------------------------------------------------------

  def _format(self, prompt: str, first: str, second: str) -> str:
    return self.template.format(principles=self.principles, prompt=prompt, a=first, b=second)

  def _encode(self, texts: list[str]) -> list[list[int]]:
    bos = [self.tokenizer.bos_token_id] if self.add_bos else []
    return [bos + ids for ids in encode_batch(self.tokenizer, texts)]

  def _decode(self, ids: list[int]) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

  def encode_pairs(
    self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
  ) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
    """Token ids of every pair in both orders, each at most `max_len` long.

    Returns:
      (ids_ab, ids_ba, truncated): two lists of N token-id lists (a shown first / b shown
      first) and bool [N], whether the pair's responses were cut (module docstring).
    Raises:
      ValueError naming the pair when the template, principles and prompt alone do not fit.
    """
    n = len(prompts)
    texts = [self._format(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
    texts += [self._format(p, b, a) for p, a, b in zip(prompts, responses_a, responses_b)]
    ids = self._encode(texts)
    ids_ab, ids_ba = ids[:n], ids[n:]
    truncated = np.zeros(n, bool)
    for i in range(n):
      if max(len(ids_ab[i]), len(ids_ba[i])) > self.max_len:
        ids_ab[i], ids_ba[i] = self._fit(i, prompts[i], responses_a[i], responses_b[i])
        truncated[i] = True
    return ids_ab, ids_ba, truncated

  def _fit(self, i: int, prompt: str, a: str, b: str) -> tuple[list[int], list[int]]:
    overhead = len(self._encode([self._format(prompt, "", "")])[0])
    room = self.max_len - overhead
    if room < 2:
      raise ValueError(
        f"pair {i}: the template, principles and prompt take {overhead} tokens, leaving no room for "
        f"the responses within max_len={self.max_len}; raise max_len or shorten the prompt or "
        f"principles (only responses are truncated)"
      )
    tok_a, tok_b = encode_batch(self.tokenizer, [a, b])
    for _ in range(8):  # decode/re-encode can merge across the cut: shrink by the excess and retry
      k_a, k_b = _share(len(tok_a), len(tok_b), room)
      cut_a, cut_b = self._decode(tok_a[:k_a]), self._decode(tok_b[:k_b])
      ab, ba = self._encode(
        [self._format(prompt, cut_a, cut_b), self._format(prompt, cut_b, cut_a)]
      )
      excess = max(len(ab), len(ba)) - self.max_len
      if excess <= 0:
        return ab, ba
      room -= excess
      if room < 0:
        break
    raise ValueError(f"pair {i}: could not cut the responses to fit max_len={self.max_len} tokens")

  def _bucket(self, length: int) -> int:
    return min(self.length_bucket * math.ceil(length / self.length_bucket), self.max_len)

  # -- judging --------------------------------------------------------------------------------

  def evaluate(
    self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
  ) -> AIJudgeVerdicts:
    """Judge N pairs; see `AIJudgeVerdicts` for what comes back."""
    prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
    n = len(prompts)
    if len(responses_a) != n or len(responses_b) != n:
      raise ValueError(
        f"{n} prompts, {len(responses_a)} responses_a, {len(responses_b)} responses_b: lengths differ"
      )
    for name, seq in (
      ("prompts", prompts),
      ("responses_a", responses_a),
      ("responses_b", responses_b),
    ):
      bad = next((j for j, x in enumerate(seq) if not isinstance(x, str)), None)
      if bad is not None:
        raise TypeError(f"{name}[{bad}]: expected a string, got {type(seq[bad]).__name__}")
    if n == 0:
      empty = np.zeros((0,), np.float64)
      return AIJudgeVerdicts(
        empty, np.zeros((0,), np.int32), empty, empty, np.zeros((0, 2)), np.zeros((0,), bool)
      )
    ids_ab, ids_ba, truncated = self.encode_pairs(prompts, responses_a, responses_b)
    lengths = np.array([max(len(x), len(y)) for x, y in zip(ids_ab, ids_ba)])
    order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: less padding
    bs = self.batch_size
    outputs = []
    for start in range(0, n, bs):
      idx = order[start : start + bs]
      rows = [ids_ab[j] for j in idx] + [[self.pad_id]] * (bs - len(idx))
      rows += [ids_ba[j] for j in idx] + [[self.pad_id]] * (bs - len(idx))
      t = self._bucket(int(lengths[idx].max()))
      ids_BT = np.full((2 * bs, t), self.pad_id, np.int32)
      mask_BT = np.zeros((2 * bs, t), np.int32)
      for r, row in enumerate(rows):
        ids_BT[r, t - len(row) :] = row
        mask_BT[r, t - len(row) :] = 1
      outputs.append(self._forward(self.params, ids_BT, mask_BT))
    logp = np.asarray(jax.device_get(outputs), np.float64).reshape(
      -1, 2, bs, 2
    )  # [batches, order, pair, answer]
    logp_ab = np.empty((n, 2))
    logp_ba = np.empty((n, 2))
    for b in range(logp.shape[0]):
      idx = order[b * bs : (b + 1) * bs]
      logp_ab[idx] = logp[b, 0, : len(idx)]
      logp_ba[idx] = logp[b, 1, : len(idx)]
    prob_a = debiased_preference(logp_ab, logp_ba)
    return AIJudgeVerdicts(
      prob_a=prob_a,
      labels=labels_with_ties(prob_a, self.tie_margin),
      prob_ab=_sigmoid64(logp_ab[:, 0] - logp_ab[:, 1]),
      prob_ba=_sigmoid64(logp_ba[:, 0] - logp_ba[:, 1]),
      answer_mass=np.stack([np.exp(logp_ab).sum(-1), np.exp(logp_ba).sum(-1)], axis=-1),
      truncated=truncated,
    )

  def __call__(
    self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
  ) -> JudgeOutput:
    return self.evaluate(prompts, responses_a, responses_b).judge_output()


def make_judge(
  model_path: str,
  principles: str | Sequence[str],
  template: str = DEFAULT_TEMPLATE,
  batch_size: int = 8,
  tie_margin: float = 0.0,
  max_len: int = 512,
  *,
  answer_a: str = " A",
  answer_b: str = " B",
  tokenizer_path: str | None = None,
  length_bucket: int = 64,
  add_bos: bool = False,
  dtype: str = "float32",
) -> Callable[[Sequence[str], Sequence[str], Sequence[str]], JudgeOutput]:
  """Config entry point `"rlhf_jax.feedback.ai_judge:make_judge"`: an `AIJudge` loaded from a
  Hugging Face model folder (`model_path`, tokenizer files in it or at `tokenizer_path`).

  Args are those of `AIJudge` plus `dtype`, the compute dtype ("bfloat16" on accelerators).
  Returns:
    the judge, a callable `(prompts, responses_a, responses_b) -> JudgeOutput`.
  Raises:
    FileNotFoundError for a missing model folder; `TokenizerFileError` (a ValueError) for a missing
    or unusable tokenizer; ValueError for bad settings.
  """
  return AIJudge.from_pretrained(
    model_path,
    tokenizer_path=tokenizer_path,
    dtype=dtype,
    principles=principles,
    template=template,
    answer_a=answer_a,
    answer_b=answer_b,
    batch_size=batch_size,
    tie_margin=tie_margin,
    max_len=max_len,
    length_bucket=length_bucket,
    add_bos=add_bos,
  )


def agreement_with_gold(judge_output: Any, gold_labels: Any) -> dict[str, float]:
  """How often a judge agrees with gold labels (any judge, not only the AI judge).

  Args:
    judge_output: what a judge returned (a `JudgeOutput` or anything `normalize_judge_output` takes).
    gold_labels: N gold verdicts: labels 0/1/2, names "a"/"b"/"tie", or a `JudgeOutput`.
  Returns:
    dict of floats:
      accuracy: fraction of all N pairs where the labels are equal (a tie must match a tie);
      kappa: Cohen's kappa of the two labelings (:func:`rlhf_jax.evaluation.agreement`);
      decided_accuracy: the same over pairs where neither side says tie (NaN if none);
      soft_accuracy: mean probability the judge gives the gold winner, over pairs gold decides
        (P(a ≻ b) for gold a, P(b ≻ a) = 1 - prob_a - prob_tie for gold b; NaN if none);
      judge_tie_rate, gold_tie_rate; n, n_decided (as floats).
  """
  gold = normalize_judge_output(gold_labels, len(gold_labels)).labels
  out = normalize_judge_output(judge_output, len(gold))
  labels = out.labels
  decided = (labels != LABEL_TIE) & (gold != LABEL_TIE)
  gold_decided = gold != LABEL_TIE
  prob_b = 1.0 - out.prob_a - (out.prob_tie if out.prob_tie is not None else 0.0)
  p_gold = np.where(gold == LABEL_A, out.prob_a, prob_b)
  nan = float("nan")
  agree = agreement(labels, gold) if len(gold) else None  # the one agreement metric
  return {
    "accuracy": agree.rate if agree else nan,
    "kappa": agree.kappa if agree else nan,
    "decided_accuracy": float(np.mean(labels[decided] == gold[decided])) if decided.any() else nan,
    "soft_accuracy": float(np.mean(p_gold[gold_decided])) if gold_decided.any() else nan,
    "judge_tie_rate": float(np.mean(labels == LABEL_TIE)) if len(gold) else nan,
    "gold_tie_rate": float(np.mean(gold == LABEL_TIE)) if len(gold) else nan,
    "n": float(len(gold)),
    "n_decided": float(decided.sum()),
  }
