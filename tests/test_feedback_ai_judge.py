"""The AI judge: swap symmetry, agreement with a plain full forward, padding/batching invariance,
response truncation, a rule-following LM, config errors and the config factory."""

import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data.tokenizer import TokenizerFileError, train_tokenizer
from rlhf_jax.feedback.ai_judge import (
  DEFAULT_TEMPLATE,
  AIJudge,
  agreement_with_gold,
  debiased_preference,
  labels_with_ties,
  make_judge,
  render_principles,
)
from rlhf_jax.feedback.judges import JudgeOutput, judge_records, load_callable
from rlhf_jax.models import Transformer, TransformerConfig, init_params, save_pretrained

WORDS = (
  "the cat dog kind answer response better helpful polite rude tree river blue green quick slow "
  "honest clear short long water light"
).split()
PRINCIPLES = ["Prefer the helpful response.", "Prefer the polite response."]


def _sentence(rng, lo=4, hi=10):
  return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  rng = random.Random(0)
  texts = []
  for _ in range(300):
    s = _sentence(rng)
    texts.append(
      f"Prompt: {s}?\nResponse A: {s}.\nResponse B: {_sentence(rng)}.\n"
      f"Which response is better? Answer: {rng.choice('AB')}"
    )
  return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok"), progress=False)


@pytest.fixture(scope="module")
def lm(tokenizer):
  cfg = TransformerConfig(
    vocab_size=len(tokenizer), d_model=32, n_layers=2, n_heads=4, max_len=256, init_std=0.3
  )  # large init: logits vary between inputs, so P is far from ½
  model = Transformer(cfg)
  return model, init_params(model, jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def model_dir(lm, tokenizer, tmp_path_factory):
  model, params = lm
  return save_pretrained(
    model, params, tmp_path_factory.mktemp("judge") / "model", tokenizer=tokenizer
  )


@pytest.fixture(scope="module")
def judge(model_dir):
  make = load_callable("rlhf_jax.feedback.ai_judge:make_judge")
  return make(model_path=str(model_dir), principles=PRINCIPLES, batch_size=4, max_len=200)


@pytest.fixture(scope="module")
def pairs():
  rng = random.Random(1)
  n = 6
  return (
    [_sentence(rng) + "?" for _ in range(n)],
    [_sentence(rng) for _ in range(n)],
    [_sentence(rng, 1, 20) for _ in range(n)],
  )


def test_swapping_a_and_b_gives_one_minus_p(judge, pairs):
  prompts, a, b = pairs
  out = judge(prompts, a, b)
  swapped = judge(prompts, b, a)
  assert isinstance(out, JudgeOutput) and out.prob_tie is None
  np.testing.assert_allclose(out.prob_a + swapped.prob_a, 1.0, rtol=0, atol=1e-6)
  assert np.max(np.abs(out.prob_a - 0.5)) > 1e-3  # not vacuous: the random judge has opinions
  np.testing.assert_array_equal(
    out.labels, np.where(out.prob_a > 0.5, 0, 1)
  )  # tie_margin 0: no ties
  np.testing.assert_array_equal(swapped.labels, 1 - out.labels)


def test_debiased_preference_algebra():
  lab = np.array([[-1.0, -2.0], [-0.3, -4.0], [-2.0, -2.0]])
  lba = np.array([[-3.0, -0.5], [-1.0, -1.2], [-0.1, -3.0]])
  sig = lambda x: 1.0 / (1.0 + np.exp(-x))
  expected = 0.5 * (sig(lab[:, 0] - lab[:, 1]) + 1.0 - sig(lba[:, 0] - lba[:, 1]))
  np.testing.assert_allclose(debiased_preference(lab, lba), expected, rtol=1e-12)
  np.testing.assert_allclose(debiased_preference(lba, lab), 1.0 - expected, rtol=1e-12)
  same = np.array([[-1.0, -3.0]])  # a judge that only favours slot A: P = ½ exactly
  assert debiased_preference(same, same)[0] == pytest.approx(0.5, abs=1e-15)
  assert labels_with_ties(np.array([0.9, 0.1, 0.52, 0.5]), 0.05).tolist() == [0, 1, 2, 2]
  assert labels_with_ties(np.array([0.52, 0.5, 0.48]), 0.0).tolist() == [0, 2, 1]


def test_matches_a_plain_full_forward(judge, lm, tokenizer, pairs):
  model, params = lm
  prompts, a, b = pairs
  verdicts = judge.evaluate(prompts, a, b)
  ids_ans = [
    tokenizer(" A", add_special_tokens=False)["input_ids"][0],
    tokenizer(" B", add_special_tokens=False)["input_ids"][0],
  ]
  principles = render_principles(PRINCIPLES)
  assert principles == "1. Prefer the helpful response.\n2. Prefer the polite response."

  # One plain forward: no mask, no head_slice, RIGHT-padded (causal, so a row's logits at its last
  # real token are those of the unpadded text), then a manual softmax over the two answer logits.
  texts = [
    DEFAULT_TEMPLATE.format(principles=principles, prompt=p, a=x, b=y)
    for p, x, y in zip(prompts, a, b)
  ]
  texts += [
    DEFAULT_TEMPLATE.format(principles=principles, prompt=p, a=y, b=x)
    for p, x, y in zip(prompts, a, b)
  ]
  rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
  ids = np.full((len(rows), max(map(len, rows))), tokenizer.eos_token_id, np.int32)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(ids)), np.float64)
  two = np.stack([logits[i, len(row) - 1, ids_ans] for i, row in enumerate(rows)])
  p_first = np.exp(two[:, 0]) / np.exp(two).sum(-1)
  p_ab, p_ba = p_first[: len(prompts)], p_first[len(prompts) :]
  np.testing.assert_allclose(verdicts.prob_ab, p_ab, atol=1e-5)
  np.testing.assert_allclose(verdicts.prob_ba, p_ba, atol=1e-5)
  np.testing.assert_allclose(verdicts.prob_a, 0.5 * (p_ab + 1.0 - p_ba), atol=1e-5)
  assert np.all((verdicts.answer_mass > 0) & (verdicts.answer_mass < 1))
  assert not verdicts.truncated.any()


def test_batch_composition_and_padding_do_not_change_p(model_dir, judge, pairs):
  prompts, a, b = pairs
  long_resp = " ".join(WORDS * 3)  # pushes its batch into a longer length bucket
  alone = judge([prompts[0]], [a[0]], [b[0]]).prob_a[0]
  mixed_p = [prompts[2], prompts[0], prompts[1], prompts[3], prompts[4]]
  mixed_a = [long_resp, a[0], a[1], "the", a[4]]
  mixed_b = [b[2], b[0], long_resp, b[3], "cat"]
  results = [judge(mixed_p, mixed_a, mixed_b).prob_a]
  for bs in (2, 5):
    other = make_judge(str(model_dir), PRINCIPLES, batch_size=bs, max_len=200)
    results.append(other(mixed_p, mixed_a, mixed_b).prob_a)
    assert other._forward._cache_size() <= 3  # one program per length bucket (64, 128, 192/200)
  for res in results:
    assert res[1] == pytest.approx(alone, abs=1e-5)
    np.testing.assert_allclose(res, results[0], atol=1e-5)
  lengths = [
    max(len(x), len(y)) for x, y in zip(*judge.encode_pairs(mixed_p, mixed_a, mixed_b)[:2])
  ]
  assert max(lengths) > 64 > min(lengths)  # the batches really had different padded lengths


def test_long_responses_are_cut_not_the_template(judge, tokenizer):
  long_resp = " ".join(WORDS * 10)
  prompts, a, b = ["the kind cat?"], ["the dog"], [long_resp]
  ids_ab, ids_ba, truncated = judge.encode_pairs(prompts, a, b)
  assert truncated.tolist() == [True]
  assert len(ids_ab[0]) <= judge.max_len and len(ids_ba[0]) <= judge.max_len
  text_ab = tokenizer.decode(ids_ab[0])
  text_ba = tokenizer.decode(ids_ba[0])
  for text in (text_ab, text_ba):
    assert text.startswith(render_principles(PRINCIPLES) + "\n\nPrompt: the kind cat?\n")
    assert text.endswith("\nWhich response is better? Answer:")
  assert "Response A: the dog\nResponse B: the cat dog" in text_ab  # the short one is kept whole
  assert "Response B: the dog\nWhich" in text_ba
  verdicts = judge.evaluate(prompts, a, b)
  assert verdicts.truncated.tolist() == [True] and 0.0 < verdicts.prob_a[0] < 1.0
  with pytest.raises(
    ValueError, match=r"pair 1: the template, principles and prompt take \d+ tokens"
  ):
    judge.encode_pairs(["ok?", long_resp], ["x", "y"], ["x", "y"])


class _RuleLM(nn.Module):
  """Logit of answer A = scale · (number of `good` tokens before `sep` − after it) + bias;
  every other logit 0. `bias` > 0 is a judge that favours the response shown first."""

  vocab_size: int
  sep_id: int
  good_id: int
  a_id: int
  scale: float = 3.0
  bias: float = 2.0

  def __call__(self, ids_BT, mask_BT=None, head_slice=None):
    mask_BT = jnp.ones_like(ids_BT) if mask_BT is None else mask_BT
    first_BT = jnp.cumsum(ids_BT == self.sep_id, axis=1) == 0
    good_BT = (ids_BT == self.good_id) & (mask_BT > 0)
    diff_B = jnp.sum(good_BT & first_BT, axis=1) - jnp.sum(good_BT & ~first_BT, axis=1)
    la_B = self.scale * diff_B + self.bias
    b, t = ids_BT.shape
    logits_BTV = jnp.zeros((b, t, self.vocab_size)).at[:, :, self.a_id].set(la_B[:, None])
    if head_slice is not None:
      logits_BTV = logits_BTV[:, head_slice[0] : head_slice[1]]
    return logits_BTV


def test_a_rule_following_judge_is_debiased(tokenizer):
  template = "{principles}\nPrompt: {prompt}\nResponse A: {a}\n|\nResponse B: {b}\nAnswer:"
  sep_id, good_id = tokenizer.convert_tokens_to_ids("|"), tokenizer.convert_tokens_to_ids("+")
  a_id = tokenizer(" A", add_special_tokens=False)["input_ids"][0]
  rule = _RuleLM(vocab_size=len(tokenizer), sep_id=sep_id, good_id=good_id, a_id=a_id)
  judge = AIJudge(
    rule,
    {},
    tokenizer,
    principles="Prefer responses with a plus sign.",
    template=template,
    batch_size=2,
    tie_margin=0.05,
    max_len=128,
  )
  prompts = ["the cat?"] * 4
  a = ["good + answer", "plain", "plain", "+ and +"]
  b = ["plain", "good + answer", "also plain", "+ once"]
  for ids in judge.encode_pairs(prompts, a, b)[0]:
    assert ids.count(sep_id) == 1
  verdicts = judge.evaluate(prompts, a, b)
  assert verdicts.labels.tolist() == [0, 1, 2, 0]
  sig = lambda x: 1.0 / (1.0 + np.exp(-x))
  np.testing.assert_allclose(
    verdicts.prob_a,
    [0.5 * (sig(5) + sig(1)), 0.5 * (sig(-1) + sig(-5)), 0.5, 0.5 * (sig(5) + sig(1))],
    atol=1e-6,
  )
  np.testing.assert_allclose(
    verdicts.prob_ab[2], sig(2.0), atol=1e-6
  )  # the raw first-slot reading is biased
  assert np.all(verdicts.slot_bias > 0.1)


def test_records_and_agreement(judge, pairs):
  prompts, a, b = pairs
  records = judge_records(judge, prompts, a, b, metadata={"annotator": "ai_judge"})
  out = judge(prompts, a, b)
  assert [r.metadata["probability"] for r in records] == pytest.approx(out.prob_a.tolist())
  assert [r.label for r in records] == out.label_names
  assert agreement_with_gold(out, out.label_names)["accuracy"] == 1.0

  judged = JudgeOutput(prob_a=np.array([0.9, 0.2, 0.5, 0.7]), labels=np.array([0, 1, 2, 0]))
  stats = agreement_with_gold(judged, ["a", "a", "b", "tie"])
  assert stats["accuracy"] == 0.25
  assert stats["decided_accuracy"] == 0.5 and stats["n_decided"] == 2.0
  assert stats["soft_accuracy"] == pytest.approx((0.9 + 0.2 + 0.5) / 3)
  assert stats["judge_tie_rate"] == 0.25 and stats["gold_tie_rate"] == 0.25 and stats["n"] == 4.0


def test_config_errors_are_explained(lm, tokenizer, model_dir, tmp_path):
  model, params = lm

  def build(**kw):
    settings = dict(principles=PRINCIPLES, max_len=128)
    settings.update(kw)
    return AIJudge(model, params, tokenizer, **settings)

  with pytest.raises(ValueError, match="principles: empty string"):
    build(principles="  ")
  with pytest.raises(ValueError, match="principles: empty list"):
    build(principles=[])
  with pytest.raises(ValueError, match=r"principles\[1\]: empty string"):
    build(principles=["be kind", ""])
  with pytest.raises(ValueError, match=r"answer_a=' Which response' encodes to \d+ tokens"):
    build(answer_a=" Which response")
  with pytest.raises(ValueError, match="encode to the same token"):
    build(answer_b=" A")
  with pytest.raises(ValueError, match=r"the field \{b\} must appear exactly once"):
    build(template="{principles} {prompt} {a} Answer:")
  with pytest.raises(ValueError, match=r"unknown fields \['question'\]"):
    build(template="{principles} {question} {prompt} {a} {b}")
  with pytest.raises(ValueError, match="no \\{principles\\} field"):
    build(template="{prompt} {a} {b} Answer:")
  with pytest.raises(ValueError, match="tie_margin"):
    build(tie_margin=0.7)
  with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
    build(batch_size=0)
  with pytest.raises(ValueError, match="exceeds the model's 256 learned positions"):
    build(max_len=512)
  with pytest.warns(UserWarning, match="doubled space"):
    build(template="{principles} {prompt} {a} {b} Answer: ")
  with pytest.raises(FileNotFoundError, match="model_path='/nonexistent/judge': not a directory"):
    make_judge("/nonexistent/judge", PRINCIPLES)
  bare = save_pretrained(model, params, tmp_path / "bare")
  with pytest.raises(TokenizerFileError, match="tokenizer.json: missing.*pass tokenizer_path="):
    make_judge(str(bare), PRINCIPLES)
  assert callable(make_judge(str(bare), PRINCIPLES, tokenizer_path=str(model_dir), max_len=64))
