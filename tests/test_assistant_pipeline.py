"""The assistant task's pieces in the pipeline (cheap): chat-templated prompts stored and
left-padded, end-of-turn truncation of decoded responses, the report's per-category rates and
chat transcripts, and the config errors of data.kind / feedback.bias. The end-to-end smoke
run is tests/test_assistant_run.py (slow, CI)."""

import dataclasses
import json

import numpy as np
import pytest

from rlhf_jax import config_schema, evaluation
from rlhf_jax.data import assistant_prompts
from rlhf_jax.feedback import assistant as checks
from rlhf_jax.models import chat
from rlhf_jax.train import pipeline as pl
from rlhf_jax.train import report as report_lib

CHATML = (
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
  " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n'"
  " }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
  """A Hugging Face tokenizer directory: a tiny byte-level BPE with ChatML's specials, EOS
  <|im_end|>, PAD <|endoftext|> and a ChatML template."""
  import transformers as tr
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=specials,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(["the user asks and the assistant answers in a sentence"] * 20, trainer)
  fast = tr.PreTrainedTokenizerFast(
    tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
  )
  fast.chat_template = CHATML
  path = tmp_path_factory.mktemp("chat_tok")
  fast.save_pretrained(str(path))
  return path


def test_prompts_rendered_with_the_template_and_left_padded(chat_dir, tmp_path):
  """Prompts are the records' messages through the template (transformers' rendering is the
  oracle) and map back to their records; encoded, they sit right-aligned after PADs; a
  prompt_len below the longest prompt is refused naming the field before anything is
  written. (Storage and reading back run in the smoke run, tests/test_assistant_run.py.)"""
  import transformers as tr

  from rlhf_jax import data as data_lib

  ref = tr.AutoTokenizer.from_pretrained(str(chat_dir))
  tok = pl.chat_tokenizer(pl.DataSpec(kind="assistant", tokenizer=str(chat_dir)), None)
  assert tok.end_of_turn_id == ref.convert_tokens_to_ids("<|im_end|>")
  records = assistant_prompts.generate_prompts(3, 2, 1).train
  texts = pl.render_chat_prompts(tok, records)
  want = [
    ref.apply_chat_template(r.messages(), tokenize=False, add_generation_prompt=True)
    for r in records
  ]
  assert texts == want and texts[0].endswith("<|im_start|>assistant\n")
  assert assistant_prompts.lookup_prompt(texts[0]) == records[0]  # the gold judge's way back
  ids_BP, mask_BP = data_lib.encode_prompts(tok, texts, 200)
  ids = ref.encode(want[0], add_special_tokens=False)
  row, mask = ids_BP[0], mask_BP[0]
  assert row[-len(ids) :].tolist() == ids and mask.sum() == len(ids)
  assert (row[: 200 - len(ids)] == tok.pad_id).all() and mask[: 200 - len(ids)].sum() == 0

  spec = pl.DataSpec(
    kind="assistant", tokenizer=str(chat_dir), prompt_len=8, num_prompts=5, num_eval_prompts=5
  )
  with pytest.raises(ValueError, match=r"config.data.prompt_len=8: the longest prompt .* is \d+"):
    pl.prepare_data(spec, tmp_path / "short", seed=3)
  assert not (tmp_path / "short" / "tfds").exists()


class _Tok:
  """Decodes ids as letters; EOS 0, stop ids 0 and 9 (an end-of-turn)."""

  eos_token_id = 0
  stop_ids = (0, 9)

  def decode(self, ids):
    return "".join("abcdefghij"[i] for i in ids)


def test_decoded_responses_end_at_the_first_stop_token():
  tokens = np.array([[1, 2, 9, 3, 4], [5, 0, 6, 7, 8], [1, 1, 1, 1, 1], [9, 2, 2, 2, 2]])
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
  assert pl.decode_responses(_Tok(), tokens, mask) == ["bc", "f", "bbbb", ""]


def test_chat_transcript_markdown():
  lines = report_lib.chat_transcript([("user", "Is 2 + 2 = 5?"), ("assistant", "No.\n\nIt is 4.")])
  assert lines == ["> **User:** Is 2 + 2 = 5?", ">", "> **Assistant:** No.", ">", "> It is 4."]
  assert report_lib.chat_transcript([("assistant", " ")]) == ["> **Assistant:** *(empty)*"]


def test_assistant_metrics_and_section_on_hand_made_samples():
  """Two false-premise prompts, one answered in agreement before and neither after: the
  agreement rate 0.5 -> 0 with Wilson intervals; every category has its pass-rate keys; the
  section renders the table and the transcripts as chat."""
  recs = assistant_prompts.generate_prompts(0, 0, 10).eval
  false = [r for r in recs if r.category == "premise" and r.claim_true is False][:2]
  assert len(false) == 2
  agree, correct = "Yes, that's right.", "No, that's not right: the answer is {}."
  samples = [
    {
      "prompt": r.text,
      "before": agree if i == 0 else correct.format(r.correct[0]),
      "after": correct.format(r.correct[0]),
      "gold_before": 0.0,
      "gold_after": 1.0,
    }
    for i, r in enumerate(false)
  ]
  samples += [
    {"prompt": r.text, "before": "", "after": "", "gold_before": 0.0, "gold_after": 0.0}
    for r in recs
    if r.category != "premise"
  ][:8]
  ev = pl.assistant_metrics(samples, tie_threshold=0.05)
  assert ev["false_premise_n"] == 2
  # Win rates by hand: premise 0 -> 1 twice (two wins); the rest 0 -> 0 (ties, ½ each). A
  # policy passing every check would win all ten (the reference never scored 1).
  n_other = len(samples) - 2
  assert ev["win_rate_premise"] == 1.0 and ev["win_rate_ceiling"] == 1.0
  assert ev["win_rate_harmful"] == 0.5 and ev["win_rate_ceiling_harmful"] == 1.0
  assert n_other == 8
  ceiling_case = [dict(samples[0], gold_before=1.0, gold_after=1.0), samples[1]]
  ceiling_case.append(dict(samples[1], gold_before=0.98, gold_after=0.5))
  ev2 = pl.assistant_metrics(ceiling_case, tie_threshold=0.05)
  # Reference 1.0 (the policy can only tie), 0.0 (can win), 0.98 (a tie with 1.0, within 0.05).
  assert ev2["win_rate_ceiling_premise"] == (0.5 + 1.0 + 0.5) / 3
  assert ev2["win_rate_premise"] == (0.5 + 1.0 + 0.0) / 3
  assert ev["false_premise_agreement_before"] == 0.5 and ev["false_premise_agreement_after"] == 0
  lo, hi = evaluation.wilson_interval(0.5, 2)
  assert (ev["false_premise_agreement_before_lo"], ev["false_premise_agreement_before_hi"]) == (
    lo,
    hi,
  )
  for cat in ("premise", "harmful", "benign", "brevity", "format"):
    assert 0 <= ev[f"pass_{cat}_before"] <= 1 and f"pass_{cat}_after_hi" in ev
  shown = pl.assistant_transcripts(samples, 1)
  assert [s["category"] for s in shown].count("premise") == 1
  assert shown[0]["user"] == false[0].text
  text = "\n".join(report_lib.assistant_section(ev, assistant_prompts.CATEGORIES, shown))
  assert "| false-premise agreement (lower is better) | 2 | 0.50 [" in text
  d = evaluation.paired_change([0, 1], [1, 1])  # the first passes after only
  change = f"{d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
  assert f"| premise | 2 | 0.50 [0.09, 0.91] | 1.00 [0.34, 1.00] | {change} | 1.00 | 1.00 |" in text
  assert f"> **User:** {false[0].text}" in text and f"> **Assistant:** {agree}" in text
  json.dumps(ev)  # eval.json holds it


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"data.kind": "chat"}, "config.data.kind='chat': expected one of"),
    ({"data.kind": "assistant"}, "config.data.tokenizer: data.kind='assistant' needs"),
    (
      {"data.kind": "assistant", "data.tokenizer": "x", "base.steps": 5},
      "config.base.steps=5: data.kind='assistant' has no corpus",
    ),
    ({"data.tokenizer": "x"}, "config.data.tokenizer='x': only for data.kind='assistant'"),
    ({"feedback.bias": 0.5}, "config.feedback.bias=0.5: biased"),
    ({"base.steps": 0}, "config.base.steps=0: expected >= 1"),
  ],
)
def test_config_errors_name_the_field(changes, message):
  cfg = pl.Config()
  for key, value in changes.items():
    section, field = key.split(".")
    cfg = dataclasses.replace(
      cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})}
    )
  with pytest.raises(config_schema.ConfigError, match=message.replace("(", r"\(")):
    pl.check_config(cfg)


def test_chat_tokenizer_exports_its_stop_ids(chat_dir):
  tok = chat.load_chat_tokenizer(chat_dir)
  kw = pl.export_kwargs(tok)
  assert kw["eos_token_id"] == tok.end_of_turn_id and kw["pad_token_id"] == tok.pad_id
  assert kw["generation_config"]["eos_token_id"] == list(tok.stop_ids)
  assert pl.export_kwargs("corpus-tokenizer") == {"tokenizer": "corpus-tokenizer"}


def test_sycophancy_arms_and_study_table(tmp_path, monkeypatch):
  """The study's arms are configs/sycophancy.py variants with the bias and a fixed β; the
  table's cells are the mean over seeds with the Student-t interval (scipy the oracle), and
  the plot is written."""
  import pathlib

  from scipy import stats

  from rlhf_jax import main as entry
  from rlhf_jax.train import sycophancy

  root = pathlib.Path(__file__).resolve().parents[1]
  monkeypatch.chdir(root)
  cfg = sycophancy.Config(biases=(0.0, 0.5), kl_coefs=(0.1,), seeds=(0,))
  specs = sycophancy.arm_specs(cfg)
  assert specs == {
    "bias0_kl0.1=configs/sycophancy.py:arm,bias=0,kl=0.1": (0.0, 0.1),
    "bias0.5_kl0.1=configs/sycophancy.py:arm,bias=0.5,kl=0.1": (0.5, 0.1),
  }
  _, arm = entry.validate(entry.load_config_file("configs/sycophancy.py:arm,bias=0.5,kl=0.1"))
  assert arm.feedback.bias == 0.5 and arm.ppo.init_kl_coef == 0.1
  assert not arm.ppo.hparams.adaptive_kl and arm.data.kind == "assistant"
  assert arm.data.categories == ("premise",)  # the bias acts on premise pairs alone
  raw = entry.load_config_file("configs/assistant.py:smoke")
  raw.data.categories = ("premise", "jokes")
  with pytest.raises((config_schema.ConfigError, ValueError), match=r"config\.data\.categories="):
    entry.validate(raw)

  # Two seeds of a biased and an unbiased arm; per false claim [index, before, after].
  by = {
    (1.0, 0): [[0, 0.5, 0.75], [3, 0.25, 0.5]],
    (1.0, 1): [[0, 0.5, 1.0], [3, 0.0, 0.25]],
    (0.0, 0): [[0, 0.5, 0.25], [3, 0.25, 0.25]],
    (0.0, 1): [[0, 0.5, 0.5], [3, 0.0, 0.0]],
  }
  rows = [
    {
      "arm": f"b{b:g}",
      "seed": seed,
      "bias": b,
      "kl_coef": 0.1,
      "kl": 2.0 + seed,
      "answers_per_prompt": 4,
      "false_premise_agreement_after": float(np.mean([r[2] for r in v])),
      "rm_prefers_agreement_false": 0.5 + 0.5 * b * seed,  # 1 / 2 (1: 2 / 2) of 2 claims
      "rm_prefers_agreement_false_n": 2,
      "rm_prefers_agreement_true": 1.0 - 0.5 * b,  # biased: 1 of 2 true claims, else 2 of 2
      "rm_prefers_agreement_true_n": 2,
      "by_prompt": v,
      "by_prompt_true": [[1, 0.5, 0.5 + 0.25 * seed], [2, 1.0, 1.0 - 0.5 * b]],
    }
    for (b, seed), v in by.items()
  ]
  rows.append({"arm": "x", "seed": 0, "bias": 0.5, "kl_coef": 0.1, "kl": 1.0})  # no answers

  def t(v):  # scipy's 95% Student-t interval, as the table prints it
    m = np.mean(v)
    h = stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))
    return f"{m:.3f} [{m - h:.3f}, {m + h:.3f}]"

  text = sycophancy.write_study(rows, tmp_path, "t")
  lo, hi = evaluation.wilson_interval(3 / 4, 4)  # probe pooled: 1 + 2 of 2 + 2 claims
  tlo, thi = evaluation.wilson_interval(2 / 4, 4)  # true claims: 1 + 1 of 2 + 2
  biased = f"| 1 | 0.1 | 2 | 3/4 = 0.750 [{lo:.3f}, {hi:.3f}] | {t([0.5, 0.25, 0.5, 0.0])} | "
  biased += f"{t([0.75, 0.5, 1.0, 0.25])} | {t([0.25, 0.25, 0.5, 0.25])} | "
  biased += f"2/4 = 0.500 [{tlo:.3f}, {thi:.3f}] | {t([0.0, -0.5, 0.25, -0.5])} | "
  biased += f"— | {t([2.0, 3.0])} |"
  assert biased in text
  assert "| 0.5 | 0.1 | 1 | — | — | — | — | — | — | — | 1.000 | — |" in text  # nothing to pool
  # biased - unbiased after PPO, paired by seed and claim: 0.5, 0.25, 0.5, 0.25
  assert "| 0.1 | 0.5 − 0 |" not in text  # the bias-0.5 arm has no per-claim answers
  assert f"| 0.1 | 1 − 0 | {t([0.5, 0.25, 0.5, 0.25])} | 4 |" in text
  assert sycophancy.bias_effect(rows, 1.0, 0.2, 0.0) is None  # no such β
  assert "Effect of the KL coefficient" not in text  # one β

  # The biased arms again at β = 0.4, agreeing less with each claim: the β effect (0.4 -
  # 0.1, paired by seed and claim) is what it took away; the unbiased arm has no β = 0.4.
  less = {(0, 0): 0.25, (0, 3): 0.5, (1, 0): 0.5, (1, 3): 0.0}
  rows_kl = [
    dict(r, kl_coef=0.4, by_prompt=[[i, b, a - less[(r["seed"], i)]] for i, b, a in r["by_prompt"]])
    for r in rows
    if r["bias"] == 1.0
  ]
  text = sycophancy.write_study(rows + rows_kl, tmp_path / "kl", "t")
  assert f"| 1 | 0.4 − 0.1 | {t([-0.25, -0.5, -0.5, 0.0])} | 4 |" in text
  assert "| 0 | 0.4 − 0.1 |" not in text
  assert sycophancy.kl_effect(rows + rows_kl, 1.0, 0.4, 0.1)[3] == 4
  assert (tmp_path / "sycophancy.png").stat().st_size > 0
  assert json.loads((tmp_path / "rows.json").read_text()) == rows


def test_agreement_by_prompt_counts_each_claims_answers():
  """Per held-out false claim, the share of its answers (before / after) that side with the
  user; true claims and other categories are left out (``true_claims``: the true ones
  alone)."""
  from rlhf_jax.feedback import demonstrations as demo_lib
  from rlhf_jax.train import sycophancy

  recs = assistant_prompts.generate_prompts(0, 0, 10).eval
  false = [r for r in recs if r.category == "premise" and r.claim_true is False][:2]
  true = next(r for r in recs if r.category == "premise" and r.claim_true)
  yes, no = demo_lib.agreeing_answer, demo_lib.disputing_answer
  samples = [  # claim 0: before 2 of 2 agree, after 1 of 2; claim 1: 0 of 1, then 1 of 1
    {"prompt": false[0].text, "prompt_index": 4, "before": yes(false[0]), "after": no(false[0])},
    {"prompt": false[0].text, "prompt_index": 4, "before": yes(false[0]), "after": yes(false[0])},
    {"prompt": false[1].text, "prompt_index": 9, "before": no(false[1]), "after": yes(false[1])},
    {"prompt": true.text, "prompt_index": 2, "before": yes(true), "after": yes(true)},
    {"prompt": true.text, "prompt_index": 2, "before": no(true), "after": yes(true)},
  ]
  assert sycophancy.agreement_by_prompt(samples) == [[4, 1.0, 0.5], [9, 0.0, 1.0]]
  assert sycophancy.agreement_by_prompt(samples, true_claims=True) == [[2, 0.5, 1.0]]


def test_reward_refusal_probe_scores_an_answer_against_a_decline(chat_dir):
  """The probe pairs each harmful / benign held-out prompt whose answer does not decline with
  the decline the supervised stage writes; hand-counted shares for two fake reward models:
  one that pays for declining everywhere, one that pays for it on harmful requests and for
  answering on benign ones (a tie is no preference, so it counts as wrong)."""
  import types

  from rlhf_jax import data as data_lib
  from rlhf_jax.feedback import assistant as checks
  from rlhf_jax.feedback import demonstrations as demo_lib

  tok = pl.chat_tokenizer(pl.DataSpec(kind="assistant", tokenizer=str(chat_dir)), None)
  records = assistant_prompts.generate_prompts(5, 1, 4).eval
  texts = pl.render_chat_prompts(tok, records)
  ids, mask = data_lib.encode_prompts(tok, texts, 200)
  prompts = pl.Prompts(
    train=[], train_ids=ids[:0], train_mask=mask[:0], eval=texts, eval_ids=ids, eval_mask=mask
  )
  # one harmful answer already declines: it is left out
  answers = ["Sure, first get the right tools and then follow these steps."] * len(records)
  harmful = [i for i, r in enumerate(records) if r.category == "harmful"]
  answers[harmful[0]] = demo_lib.decline_for(records[harmful[0]])
  assert checks.declines(answers[harmful[0]])

  def fake_scores(declines_pay_on, answers_pay_on=()):
    def scores(rm_params, seq_ids, seq_mask):
      out = []
      for row in seq_ids:
        pads = (tok.pad_id, tok.pad_token_id)
        text = tok.decode([int(t) for t in row if t not in pads], skip_special_tokens=False)
        user = assistant_prompts.lookup_prompt(text)
        answer = text.split("<|im_start|>assistant\n", 1)[1]
        pays_on = declines_pay_on if checks.declines(answer) else answers_pay_on
        out.append(float(user.category in pays_on))
      return np.asarray(out)

    return types.SimpleNamespace(scores=scores)

  hp = types.SimpleNamespace(eos_id=tok.eos_id, response_len=200)
  n_harm, n_benign = len(harmful) - 1, sum(r.category == "benign" for r in records)
  always = pl.reward_refusal_probe(
    fake_scores(("harmful", "benign")), tok, None, prompts, answers, hp
  )
  assert always["rm_prefers_decline_harmful"] == 1.0 and always["rm_prefers_answer_benign"] == 0
  assert always["rm_refusal_discrimination"] == 0.0  # declining pays whatever the request
  assert (always["rm_prefers_decline_harmful_n"], always["rm_prefers_answer_benign_n"]) == (
    n_harm,
    n_benign,
  )
  lo, hi = evaluation.wilson_interval(0.0, n_benign)
  assert (always["rm_prefers_answer_benign_lo"], always["rm_prefers_answer_benign_hi"]) == (lo, hi)
  right = fake_scores(("harmful",), ("benign",))
  right = pl.reward_refusal_probe(right, tok, None, prompts, answers, hp)
  assert right["rm_prefers_decline_harmful"] == 1.0 and right["rm_prefers_answer_benign"] == 1.0
  assert right["rm_refusal_discrimination"] == 1.0
  never = pl.reward_refusal_probe(
    fake_scores((), ("harmful", "benign")), tok, None, prompts, answers, hp
  )
  assert never["rm_prefers_decline_harmful"] == 0.0 and never["rm_refusal_discrimination"] == 0.0
  premise_only = [i for i, r in enumerate(records) if r.category == "premise"]
  sub = prompts._replace(
    eval=[texts[i] for i in premise_only], eval_ids=ids[premise_only], eval_mask=mask[premise_only]
  )
  none = pl.reward_refusal_probe(fake_scores(()), tok, None, sub, answers, hp)
  assert none == {"rm_prefers_decline_harmful_n": 0, "rm_prefers_answer_benign_n": 0}


def test_reward_agreement_probe_scores_agreeing_against_disputing(chat_dir):
  """Each held-out premise prompt's agreeing and disputing answers scored by two fake reward
  models: one that pays for agreeing everywhere (what sycophantic labels teach) and one that
  pays for the gold answer; hand-counted shares per true / false claim."""
  import types

  from rlhf_jax import data as data_lib
  from rlhf_jax.feedback import assistant as checks

  tok = pl.chat_tokenizer(pl.DataSpec(kind="assistant", tokenizer=str(chat_dir)), None)
  records = assistant_prompts.generate_prompts(5, 1, 6).eval
  texts = pl.render_chat_prompts(tok, records)
  ids, mask = data_lib.encode_prompts(tok, texts, 200)
  prompts = pl.Prompts(
    train=[], train_ids=ids[:0], train_mask=mask[:0], eval=texts, eval_ids=ids, eval_mask=mask
  )
  n_false = sum(r.category == "premise" and not r.claim_true for r in records)
  n_true = sum(r.category == "premise" and bool(r.claim_true) for r in records)
  assert n_false and n_true

  def fake(pay):  # pay(record, answer) -> score
    def scores(rm_params, seq_ids, seq_mask):
      out = []
      for row in seq_ids:
        pads = (tok.pad_id, tok.pad_token_id)
        text = tok.decode([int(t) for t in row if t not in pads], skip_special_tokens=False)
        answer = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0]
        out.append(pay(assistant_prompts.lookup_prompt(text), answer))
      return np.asarray(out, np.float64)

    return types.SimpleNamespace(scores=scores)

  hp = types.SimpleNamespace(eos_id=tok.eos_id, response_len=200)
  sycophant = fake(lambda rec, a: float(checks.agrees_with_user(rec, a)))
  got = pl.reward_agreement_probe(sycophant, tok, None, prompts, hp)
  assert got["rm_prefers_agreement_false"] == 1.0 and got["rm_prefers_agreement_true"] == 1.0
  assert (got["rm_prefers_agreement_false_n"], got["rm_prefers_agreement_true_n"]) == (
    n_false,
    n_true,
  )
  honest = fake(lambda rec, a: checks.gold_score(rec, a))
  got = pl.reward_agreement_probe(honest, tok, None, prompts, hp)
  assert got["rm_prefers_agreement_false"] == 0.0 and got["rm_prefers_agreement_true"] == 1.0
  lo, hi = evaluation.wilson_interval(0.0, n_false)
  assert (got["rm_prefers_agreement_false_lo"], got["rm_prefers_agreement_false_hi"]) == (lo, hi)
  keep = [i for i, r in enumerate(records) if r.category != "premise"]
  sub = prompts._replace(eval=[texts[i] for i in keep], eval_ids=ids[keep], eval_mask=mask[keep])
  none = pl.reward_agreement_probe(sycophant, tok, None, sub, hp)
  assert none == {"rm_prefers_agreement_false_n": 0, "rm_prefers_agreement_true_n": 0}


def test_assistant_metrics_count_prompts_not_answers():
  """Three answers to each of two false claims (prompt_index 0 and 1): rates over the six
  answers, intervals at the effective number of prompts, the change paired per prompt, and
  ``false_premise_n`` / ``pass_premise_n`` counting prompts; one answer a prompt gives the
  plain Wilson interval."""
  from rlhf_jax.feedback import demonstrations as demo_lib

  recs = assistant_prompts.generate_prompts(0, 0, 10).eval
  f0, f1 = [r for r in recs if r.category == "premise" and r.claim_true is False][:2]
  yes, no = demo_lib.agreeing_answer, demo_lib.disputing_answer
  rows = [  # (record, prompt index, before, after)
    (f0, 0, yes(f0), no(f0)),
    (f0, 0, yes(f0), no(f0)),
    (f0, 0, yes(f0), yes(f0)),
    (f1, 1, no(f1), no(f1)),
    (f1, 1, yes(f1), no(f1)),
    (f1, 1, no(f1), no(f1)),
  ]
  samples = [
    {
      "prompt": r.text,
      "prompt_index": i,
      "before": b,
      "after": a,
      "gold_before": checks.gold_score(r, b),
      "gold_after": checks.gold_score(r, a),
    }
    for r, i, b, a in rows
  ]
  ev = pl.assistant_metrics(samples, tie_threshold=0.05)
  clusters = [0, 0, 0, 1, 1, 1]
  before, after = [1, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0]
  assert ev["false_premise_n"] == 2 and ev["pass_premise_n"] == 2
  assert ev["false_premise_agreement_before"] == pytest.approx(4 / 6)
  lo, hi = evaluation.wilson_interval(4 / 6, evaluation.effective_n(before, clusters))
  assert (ev["false_premise_agreement_before_lo"], ev["false_premise_agreement_before_hi"]) == (
    pytest.approx(lo),
    pytest.approx(hi),
  )
  change = evaluation.paired_change(before, after, clusters)  # per prompt: -2/3, -1/3
  assert ev["false_premise_agreement_change"] == pytest.approx(-0.5) == change.estimate
  assert ev["false_premise_agreement_change_lo"] == pytest.approx(change.low)
  assert ev["pass_premise_after"] == pytest.approx(5 / 6)  # the disputing answers pass
  assert ev["pass_premise_change"] == pytest.approx(0.5)
  one = pl.assistant_metrics(samples[:1] + samples[3:4], tie_threshold=0.05)
  lo, hi = evaluation.wilson_interval(0.5, 2)
  assert (one["false_premise_agreement_before_lo"], one["false_premise_agreement_before_hi"]) == (
    lo,
    hi,
  )
  shown = pl.assistant_transcripts(samples, 5)  # one answer a prompt in the report
  assert [s["before"] for s in shown] == [yes(f0), no(f1)]


def test_eval_rows_repeat_each_prompt_in_a_row():
  ids = np.arange(6).reshape(3, 2)
  prompts = pl.Prompts([], ids[:0], ids[:0], ["a", "b", "c"], ids, ids > 0)
  texts, rid, rmask, index = pl.eval_rows(prompts, 2)
  assert texts == ["a", "a", "b", "b", "c", "c"] and index.tolist() == [0, 0, 1, 1, 2, 2]
  assert rid.tolist() == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
  assert rmask[:, 0].tolist() == [False, False, True, True, True, True]


def test_contrast_groups_replace_one_response_in_every_pair_it_appears_in(chat_dir):
  """add_contrast: K = 3 groups; a harmful group with no decline gets the decline as its last
  response (in pairs (0, 2) and (1, 2)), a benign group of declines gets the starting
  model's answer, a brevity group is left alone; prompts and the other responses unchanged."""
  from rlhf_jax import data as data_lib
  from rlhf_jax import reward as reward_lib
  from rlhf_jax.feedback import assistant as checks
  from rlhf_jax.feedback import demonstrations as demo_lib

  tok = pl.chat_tokenizer(pl.DataSpec(kind="assistant", tokenizer=str(chat_dir)), None)
  records = assistant_prompts.generate_prompts(5, 4, 1).train
  pick = [next(r for r in records if r.category == c) for c in ("harmful", "benign", "brevity")]
  texts = pl.render_chat_prompts(tok, pick)
  ids, mask = data_lib.encode_prompts(tok, texts, 200)
  prompts = pl.Prompts(
    train=texts, train_ids=ids, train_mask=mask, eval=[], eval_ids=ids[:0], eval_mask=mask[:0]
  )
  answer = "Sure, take the first step and then the next one."
  refusal = "I'm sorry, but I can't help with that."
  responses = [[answer, answer, answer], [refusal, refusal, refusal], [answer, refusal, answer]]
  k, r_len = 3, 400
  i, j = reward_lib.group_pair_index(k)
  flat = [t for group in responses for t in group]
  tok_rows, mask_rows, kept = pl.response_rows(tok, flat, tok.eos_id, r_len)
  assert len(kept) == len(flat)
  tokens, masks = tok_rows.reshape(3, k, r_len), mask_rows.reshape(3, k, r_len)
  sampled = pl.SampledPairs(
    np.repeat(np.arange(3), len(i)),
    tokens[:, i].reshape(-1, r_len),
    masks[:, i].reshape(-1, r_len),
    tokens[:, j].reshape(-1, r_len),
    masks[:, j].reshape(-1, r_len),
  )
  alternatives = {texts[1]: [refusal, answer]}
  out, changed = pl.add_contrast(sampled, k, prompts, tok, tok.eos_id, alternatives)
  assert changed == 2
  np.testing.assert_array_equal(out.rows, sampled.rows)
  a = pl.decode_responses(tok, out.tokens_a, out.mask_a)
  b = pl.decode_responses(tok, out.tokens_b, out.mask_b)
  want = [list(g) for g in responses]
  want[0][2] = demo_lib.decline_for(pick[0])
  want[1][2] = demo_lib.complete_sentences(answer)
  for g in range(3):
    for p_idx, (x, y) in enumerate(zip(i, j)):
      assert a[g * len(i) + p_idx] == want[g][x]
      assert b[g * len(i) + p_idx] == want[g][y]
  assert checks.declines(want[0][2]) and not checks.declines(want[1][2])


def test_contrast_groups_need_the_assistant_task():
  cfg = pl.Config(feedback=pl.FeedbackSpec(contrast_groups=True))
  assert any("contrast_groups" in e for e in pl.stage_errors(cfg))


def test_pass_rate_plot_in_the_assistant_section(tmp_path):
  """With a workdir the section draws the pass rates (starting model, after SFT, after RL)
  and links the image; without pass rates there is nothing to draw."""
  ev = {"answers_per_prompt": 3, "false_premise_agreement_before": 0.5}
  for c in ("harmful", "benign"):
    ev.update({f"pass_{c}_before": 0.25, f"pass_{c}_after": 0.75, f"pass_{c}_after_lo": 0.5})
    ev[f"pass_{c}_after_hi"] = 0.9
  sft = {"pass_harmful_after": 0.5, "pass_benign_after": 0.5}
  lines = report_lib.assistant_section(
    ev, ("harmful", "benign"), [], sft=sft, workdir=str(tmp_path)
  )
  assert "![pass rate by category](pass_rates_by_category.png)" in lines
  assert (tmp_path / "pass_rates_by_category.png").stat().st_size > 0
  assert not report_lib.plot_pass_rates({}, ("harmful",), str(tmp_path / "none.png"))
  assert not (tmp_path / "none.png").exists()
