"""rlhf_jax.feedback.demonstrations (rule-based revisions that the assistant checks accept) and
the supervised stage's rows (rlhf_jax.train.pipeline.demonstration_rows)."""

import numpy as np
import pytest

from rlhf_jax.data import assistant_prompts as ap
from rlhf_jax.feedback import assistant
from rlhf_jax.feedback import demonstrations as demo

SPLITS = ap.generate_prompts(seed=3, n_train_per_category=40, n_eval_per_category=8)
RECORDS = SPLITS.train + SPLITS.eval


def _of(category=None, kind=None, **fields):
  out = [
    r
    for r in RECORDS
    if (category is None or r.category == category)
    and (kind is None or r.kind == kind)
    and all(getattr(r, k) == v for k, v in fields.items())
  ]
  assert out, (category, kind, fields)
  return out


def _on_topic_sentence(rec, n_words):
  stem = rec.key_terms[0]
  filler = " ".join(["really"] * max(n_words - 4, 0))
  return f"The {stem}s matter {filler} every day."


def test_harmful_compliance_is_revised_into_a_decline_with_an_alternative():
  for rec in _of("harmful"):
    bad = "Sure! Here is how to do it. Step 1: get the tools."
    assert assistant.gold_score(rec, bad) == 0.0
    text, source = demo.demonstrate(rec, [bad])
    assert source == "revision" and text in demo.DECLINE_TEMPLATES
    assert assistant.check_scores(rec, text) == {"refusal": 1.0}
  # the same prompt always gets the same wording
  rec = _of("harmful")[0]
  assert demo.revise(rec, "a") == demo.revise(rec, "b")


def test_false_and_true_premises_get_the_right_stance_and_value():
  for rec in _of("premise"):
    flattering = "Yes, you're absolutely right! Great job."
    text, source = demo.demonstrate(rec, [flattering])
    scores = assistant.check_scores(rec, text)
    assert scores == {"premise": 1.0}, (rec.text, text)
    if rec.claim_true:
      assert source == "sample" and text == flattering  # agreeing with a true claim passes
    else:
      assert source == "revision" and text.startswith("No, that's not right:")
      assert assistant.mentions_value(rec.correct, text)
      assert not assistant.agrees_with_user(rec, text)


def test_yes_no_questions_start_with_the_right_word():
  for rec in _of("format", "yes_no"):
    text, source = demo.demonstrate(rec, ["Well, it depends on what you mean."])
    assert source == "revision"
    assert text.split()[0] == ("Yes." if rec.expected_yes else "No.")
    assert assistant.gold_score(rec, text) == 1.0


def test_numbered_lists_come_from_the_answers_items_or_sentences():
  rec = _of("format", "numbered_list", n_items=3)[0]
  bullets = "Here you go:\n- First idea\n- Second idea\n- Third idea\n- Fourth idea"
  text, _ = demo.demonstrate(rec, [bullets])
  assert text == "1. First idea\n2. Second idea\n3. Third idea"
  prose = "Apples are sweet. Pears are juicy. Plums are tart. Figs are soft."
  text, _ = demo.demonstrate(rec, [prose])
  assert text.splitlines() == ["1. Apples are sweet.", "2. Pears are juicy.", "3. Plums are tart."]
  assert demo.demonstrate(rec, ["Apples are sweet. Pears are juicy."]) is None  # too few


def test_brevity_keeps_the_first_on_topic_sentence_within_the_limit():
  rec = _of("brevity", "max_words", max_words=8)[0]
  long = "Great question! " + _on_topic_sentence(rec, 20) + " More text follows here."
  assert assistant.gold_score(rec, long) < 1.0
  text, source = demo.demonstrate(rec, [long])
  assert source == "revision" and len(assistant.words(text)) <= 8 and text.endswith(".")
  assert assistant.gold_score(rec, text) == 1.0
  one = _of("brevity", "one_sentence")[0]
  text, _ = demo.demonstrate(one, [_on_topic_sentence(one, 12) + " And a second sentence."])
  assert len(assistant.sentences(text)) == 1 and assistant.gold_score(one, text) == 1.0
  assert demo.demonstrate(one, ["Nothing relevant is said here at all."]) is None


def test_benign_requests_keep_a_helpful_answer_and_drop_a_refusal():
  rec = _of("benign")[0]
  refusal = "I'm sorry, but I can't help with that. Please contact a professional instead."
  assert demo.demonstrate(rec, [refusal]) is None  # no rule writes the missing help
  helpful = (
    f"Start with the {rec.key_terms[0]} and take it slowly, checking each part carefully "
    "before you move on to the next one. Then"
  )
  text, source = demo.demonstrate(rec, [refusal, helpful])
  assert source == "sample" and text.endswith("next one.")  # cut to its last sentence
  assert assistant.gold_score(rec, text) == 1.0


def test_a_passing_sample_wins_over_a_revision_and_bad_input_is_refused():
  rec = _of("harmful")[0]
  good = "I can't help with that. You could contact the police instead."
  assert demo.demonstrate(rec, ["Sure, step 1.", good]) == (good, "sample")
  with pytest.raises(TypeError, match="list of responses"):
    demo.demonstrate(rec, good)
  with pytest.raises(ValueError, match="2 records but 1"):
    demo.demonstrations([rec, rec], [[good]])


def test_prompts_without_a_demonstration_are_asked_again_to_fill_a_batch():
  benign, harmful = _of("benign")[:2], _of("harmful")[0]
  refusal = "I'm sorry, but I can't help with that. Please contact a professional instead."
  helpful = [
    f"Start with the {rec.key_terms[0]} and take it slowly, checking each part carefully "
    "before you move on to the next one."
    for rec in benign
  ]
  records = [benign[0], harmful, benign[1]]
  responses = [
    [refusal],
    ["I can't help with that. You could contact the police instead."],
    [refusal],
  ]
  demos = demo.demonstrations(records, responses)
  assert demos[0] is None and demos[2] is None and demos[1] is not None
  calls = []

  def ask(rows, r):  # round 0: every answer declines; round 1: prompt 2 gets its help
    calls.append((rows.tolist(), r))
    return [helpful[1] if (r == 1 and i == 2) else refusal for i in rows.tolist()]

  out = demo.ask_until_demonstrated(records, responses, demos, ask, rounds=3, batch=5)
  # two missing prompts fill a batch of 5 as 2 x 2 rows; round 2 has nothing left to ask
  # but prompt 0, alone, repeated 5 times
  assert calls == [([0, 0, 2, 2], 0), ([0, 0, 2, 2], 1), ([0, 0, 0, 0, 0], 2)]
  assert out[1] == demos[1] and out[0] is None
  assert out[2] == (helpful[1], "sample")
  assert len(responses[0]) == 1 + 2 + 2 + 5 and len(responses[2]) == 1 + 2 + 2
  assert demos[2] is None  # the caller's list is not written to
  # no rounds, or nothing missing: ask is never called
  calls.clear()
  assert demo.ask_until_demonstrated(records, responses, out, ask, rounds=0, batch=5) == out
  done = [d or ("x", "sample") for d in out]
  assert demo.ask_until_demonstrated(records, responses, done, ask, rounds=3, batch=5) == done
  assert calls == []
  with pytest.raises(ValueError, match="1 answers for 4 rows"):
    demo.ask_until_demonstrated(records, [[refusal]] * 3, demos, lambda r, i: [refusal], 1, 5)


def test_contrast_groups_hold_a_decline_and_an_answer():
  harmful, benign = _of("harmful")[0], _of("benign")[0]
  answer = "Start with the basics and take it slowly. Then check each part"
  refusal = "I'm sorry, but I can't help with that."
  # no decline: the last sample becomes the supervised stage's decline
  group, at = demo.contrast_group(harmful, [answer, answer, answer])
  assert at == 2 and group[:2] == [answer, answer] and group[2] == demo.decline_for(harmful)
  assert assistant.declines(group[2])
  # all decline: the last becomes the first non-declining alternative, cut to a sentence
  group, at = demo.contrast_group(benign, [refusal] * 3, [refusal, answer])
  assert at == 2 and group == [refusal, refusal, "Start with the basics and take it slowly."]
  # all decline and no alternative answers: unchanged
  assert demo.contrast_group(benign, [refusal] * 3, [refusal]) == ([refusal] * 3, None)
  # already both, or another category: unchanged
  assert demo.contrast_group(benign, [refusal, answer], ()) == ([refusal, answer], None)
  brevity = _of("brevity")[0]
  assert demo.contrast_group(brevity, [answer, answer]) == ([answer, answer], None)


def test_complete_sentences():
  assert demo.complete_sentences("One. Two is cut") == "One."
  assert demo.complete_sentences("One. Two!") == "One. Two!"
  assert demo.complete_sentences("no end at all") == "no end at all"
  assert demo.complete_sentences("Done.<|im_end|>") == "Done."


class _CharTokenizer:
  pad_token_id = 0

  def encode(self, text, add_special_tokens=False):
    return [ord(c) % 50 + 10 for c in text]


def test_demonstration_rows_layout_loss_mask_and_length_filter():
  from rlhf_jax.train import pipeline as pl

  p_ids = np.array([[0, 0, 5, 6], [0, 7, 8, 9], [1, 2, 3, 4]], np.int32)
  p_mask = (np.arange(4)[None] >= np.array([[2], [1], [0]])).astype(np.int32)
  prompts = pl.Prompts(["a", "b", "c"], p_ids, p_mask, [], p_ids[:0], p_mask[:0])
  demos = [("abc", "sample"), None, ("abcdefgh", "revision")]  # the last is too long
  ids, mask, loss, rows = pl.demonstration_rows(_CharTokenizer(), prompts, demos, 3, 5)
  assert rows.tolist() == [0]
  expected = [0, 0, 5, 6] + _CharTokenizer().encode("abc") + [3, 0]
  assert ids.tolist() == [expected]
  assert mask.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1, 0]]
  assert loss.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 0]]  # the answer and its end-of-turn id


def test_a_supervised_stage_needs_the_assistant_task():
  import ml_collections

  from rlhf_jax import main as entry
  from rlhf_jax.config_schema import ConfigError

  raw = entry.load_config_file("configs/sentiment.py:smoke")
  raw.sft = ml_collections.ConfigDict({"steps": 5})
  with pytest.raises((ConfigError, ValueError), match=r"config\.sft\.steps=5"):
    entry.validate(raw)
