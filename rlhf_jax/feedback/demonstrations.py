"""Demonstrations for the assistant task: the model's own answers, critiqued by the checks and
revised by rule (the supervised stage of Constitutional AI, with programmatic critiques).

Constitutional AI's supervised stage samples the model, has it critique its answer against a
principle, revises the answer and fine-tunes on the revisions, so that the RL stage starts
from a policy whose samples already show the wanted behaviour (a model that never declines a
harmful request gives its reward model no refusal to prefer). Here the critique is the
programmatic checks of :mod:`rlhf_jax.feedback.assistant` (which checks a sampled answer fails)
and the revision a rule per kind of prompt that keeps as much of the sampled answer as the
check allows:

* harmful request: a decline that points to a safe, legal alternative (one of
  ``DECLINE_TEMPLATES``, chosen by the prompt's fill so a prompt always gets the same one);
* benign look-alike: no rule can write the missing help, so a failing answer is not revised;
  a passing one is the demonstration (it teaches not to over-refuse);
* brevity: the first sentence of the answer that is on topic, cut to the word limit;
* numbered list: the answer's list items, bullet points or sentences, the first N numbered
  1..N (none when the answer has fewer than N);
* yes/no question and premise under pressure: the right first word ("Yes" / "No") and the
  claim restated with the correct value ("No, that's not right: 7 × 8 = 56."), since the
  sampled explanation of a wrong answer argues for it.

Every answer is first cut to its last complete sentence (a sample that ran out of tokens
ends mid-word), and a revision is kept only when it passes every check of its prompt (gold
score 1): :func:`demonstrate` returns ``None`` where neither the sample nor its revision does.

The rules know what the checks know (the facts of the premise prompts in particular), as
the guidelines of human demonstrators would: demonstrations are training data, not an
evaluation, and the report's win rates are measured on held-out prompts whose templates or
fills are partly never seen in training (``AssistantPrompt.heldout``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from rlhf_jax.data.assistant_prompts import AssistantPrompt
from rlhf_jax.feedback import assistant

__all__ = [
  "DECLINE_TEMPLATES",
  "decline_for",
  "agreeing_answer",
  "disputing_answer",
  "complete_sentences",
  "revise",
  "demonstrate",
  "demonstrations",
]

DECLINE_TEMPLATES = (
  "I can't help with that: it could hurt someone or break the law. If you need help with a "
  "real problem, a professional or the police can help you safely and legally instead.",
  "Sorry, but I won't help with this, because it could put people at risk and is likely "
  "illegal. Instead, you could contact a professional or a local support service.",
  "I'm not able to help with that request, since it could cause real harm. If something is "
  "worrying you, please contact the police or a qualified professional instead.",
  "I cannot help you do that. It is unsafe and against the law. You could talk to a trusted "
  "professional instead, who can help you find a safe, legal way forward.",
)

_DANGLING = frozenset(
  "a an the and or but of to in on at by for from with as that which who is are was were its "
  "their his her your our my this these those".split()
)
_LAST_END = re.compile(r"[.!?)\"']\s*$")
_SENTENCE_STOP = re.compile(r"[.!?](?=\s|$)")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(\S.*?)\s*$")


def complete_sentences(text: str) -> str:
  """``text`` cut after its last complete sentence (``.``, ``!`` or ``?``); unchanged when it
  already ends one, or when it has no sentence end at all."""
  text = assistant.clean_response(text)
  if not text or _LAST_END.search(text):
    return text
  ends = list(_SENTENCE_STOP.finditer(text))
  return text[: ends[-1].end()].strip() if ends else text


def _pick(record: AssistantPrompt, options: Sequence[str]) -> str:
  return options[zlib.crc32(record.fill.encode()) % len(options)]


def decline_for(record: AssistantPrompt) -> str:
  """The decline the harmful-request revision writes for ``record`` (one of
  ``DECLINE_TEMPLATES``, the same for every call)."""
  return _pick(record, DECLINE_TEMPLATES)


def _restated_claim(record: AssistantPrompt) -> str:
  """The claim restated with the correct value (its own capitalisation, no final period)."""
  claim = record.claim or ""
  if not record.claim_true and record.claimed and record.correct:
    for wrong in record.claimed:
      pattern = rf"(?<![\w.]){re.escape(wrong)}(?![\w])"
      if re.search(pattern, claim, flags=re.IGNORECASE):
        claim = re.sub(pattern, record.correct[0], claim, count=1, flags=re.IGNORECASE)
        break
    else:
      claim = f"the correct answer is {record.correct[0]}"
  return claim.rstrip(" .")


def _first_on_topic_sentence(record: AssistantPrompt, text: str) -> str | None:
  for sentence in assistant.sentences(text):
    if assistant.on_topic_check(record, sentence) and len(assistant.words(sentence)) >= 3:
      return sentence
  return None


def _cut_words(sentence: str, limit: int) -> str:
  tokens = sentence.split()
  if len(assistant.words(sentence)) <= limit:
    return sentence
  kept: list[str] = []
  n = 0
  for t in tokens:
    if assistant.words(t):
      if n == limit:
        break
      n += 1
    kept.append(t)
  while len(kept) > 3 and kept[-1].lower().strip(",;:-") in _DANGLING:
    kept.pop()  # "... from water and" -> "... from water"
  return " ".join(kept).rstrip(" ,;:-") + "."


def _list_items(text: str) -> list[str]:
  lines = [m.group(1) for m in map(_BULLET.match, text.splitlines()) if m]
  if len(lines) < 2:  # no list: the sentences, without an introduction ending in ":"
    lines = [s for s in assistant.sentences(text) if not s.rstrip().endswith(":")]
  seen, items = set(), []
  for line in lines:
    item = line.strip().strip("*_ ").strip()
    key = item.lower().strip(" .")
    if item and key not in seen:
      seen.add(key)
      items.append(item)
  return items


def revise(record: AssistantPrompt, response: str) -> str | None:
  """The rule-based revision of ``response`` for ``record`` (module docstring); ``None``
  where no rule applies (a benign request answered unhelpfully, too few list items, no
  on-topic sentence). The result is not checked here; :func:`demonstrate` checks it."""
  text = complete_sentences(response)
  if record.category == "harmful":
    return decline_for(record)
  if record.category == "benign":
    return text or None
  if record.kind in ("one_sentence", "max_words"):
    sentence = _first_on_topic_sentence(record, text)
    if sentence is None:
      return None
    limit = min(record.max_words or 40, 40)
    return _cut_words(sentence, limit)
  if record.kind == "numbered_list":
    items = _list_items(text)
    if record.n_items is None or len(items) < record.n_items:
      return None
    return "\n".join(f"{i + 1}. {item}" for i, item in enumerate(items[: record.n_items]))
  if record.category == "premise":
    return agreeing_answer(record) if record.claim_true else disputing_answer(record)
  if record.kind == "yes_no":
    restated = _restated_claim(record)
    return f"{'Yes.' if record.claim_true else 'No.'} {restated[:1].upper() + restated[1:]}."
  return None


def agreeing_answer(record: AssistantPrompt) -> str:
  """An answer to a premise prompt that sides with the user: "Yes, that's right: <claim>."
  (the revision of a true claim's answer)."""
  return f"Yes, that's right: {(record.claim or '').rstrip(' .')}."


def disputing_answer(record: AssistantPrompt) -> str:
  """An answer to a premise prompt that disputes the user: for a false claim, "No, that's not
  right: <the claim with the correct value>." (its revision); for a true one, "No, that's not
  right." (no wrong value to put in)."""
  if record.claim_true:
    return "No, that's not right."
  return f"No, that's not right: {_restated_claim(record)}."


def demonstrate(record: AssistantPrompt, responses: Sequence[str]) -> tuple[str, str] | None:
  """A demonstration for ``record`` from the model's ``responses`` to it: ``(text, source)``
  with source ``"sample"`` (a response that already passes every check, cut to its last
  complete sentence) or ``"revision"`` (the first response whose revision passes), or
  ``None`` when neither passes."""
  if isinstance(responses, str):
    raise TypeError("demonstrate takes a list of responses, got a single str")
  for r in responses:
    text = complete_sentences(r)
    if text and assistant.gold_score(record, text) == 1.0:
      return text, "sample"
  for r in responses:
    revised = revise(record, r)
    if revised and assistant.gold_score(record, revised) == 1.0:
      return revised, "revision"
  return None


def demonstrations(
  records: Sequence[AssistantPrompt], responses: Sequence[Sequence[str]]
) -> list[tuple[str, str] | None]:
  """:func:`demonstrate` for each record and its list of responses."""
  if len(records) != len(responses):
    raise ValueError(f"{len(records)} records but {len(responses)} lists of responses")
  return [demonstrate(rec, rs) for rec, rs in zip(records, responses)]


def ask_until_demonstrated(
  records: Sequence[AssistantPrompt],
  responses: list[list[str]],
  demos: list[tuple[str, str] | None],
  ask: Callable[[np.ndarray, int], Sequence[str]],
  rounds: int,
  batch: int,
) -> list[tuple[str, str] | None]:
  """Asks again for the prompts without a demonstration, up to ``rounds`` times.

  In each round the indices of the prompts whose ``demos`` entry is None are repeated to
  fill one sampling ``batch`` (each at least once), ``ask(rows, round)`` returns one answer
  per row, the answers are appended to ``responses[i]`` and :func:`demonstrate` is run again
  on each such prompt's answers so far. Without this, a benign look-alike whose first answers
  all declined is missing from the data while every harmful request has its decline.
  Returns the new list of demonstrations (``responses`` is extended in place)."""
  demos = list(demos)
  for r in range(rounds):
    missing = np.asarray([i for i, d in enumerate(demos) if d is None], np.int64)
    if not len(missing):
      break
    rows = np.repeat(missing, max(1, batch // len(missing)))
    answers = list(ask(rows, r))
    if len(answers) != len(rows):
      raise ValueError(f"ask returned {len(answers)} answers for {len(rows)} rows")
    for i, text in zip(rows.tolist(), answers):
      responses[i].append(text)
    for i in missing.tolist():
      demos[i] = demonstrate(records[i], responses[i])
  return demos


def contrast_group(
  record: AssistantPrompt, responses: Sequence[str], alternatives: Sequence[str] = ()
) -> tuple[list[str], int | None]:
  """One comparison group of a harmful request or a benign look-alike made to hold both a
  decline and an answer, so that every label on it says *when* declining is right.

  ``responses``: the policy's K samples for ``record``. When none declines, the last is
  replaced by :func:`decline_for`; when all decline, by the first of ``alternatives`` (e.g.
  the starting model's answers to that prompt) that does not decline. Other categories and
  groups that already hold both are returned as they are. Returns ``(responses, replaced
  index or None)``."""
  out = list(responses)
  if record.category not in ("harmful", "benign") or not out:
    return out, None
  declined = [assistant.declines(r) for r in out]
  if not any(declined):
    out[-1] = decline_for(record)
    return out, len(out) - 1
  if all(declined):
    answer = next((a for a in alternatives if a and not assistant.declines(a)), None)
    if answer is not None:
      out[-1] = complete_sentences(answer) or answer
      return out, len(out) - 1
  return out, None
