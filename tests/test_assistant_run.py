"""configs/assistant.py:smoke end to end (slow; run by .ci/run after the default suite): a
2-layer random Llama with SmolLM2's tokenizer and chat template through data, labels, reward
model, PPO with LoRA and the report; the merged policy is a Hugging Face checkpoint that
transformers loads and generates with, and whose logits are this library's."""

import json
import pathlib
import re

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ci]

ROOT = pathlib.Path(__file__).resolve().parents[1]
CATEGORIES = ("harmful", "benign", "brevity", "format", "premise")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  pytest.importorskip("gguf", reason="the assistant extra: pip install '.[assistant]'")
  from rlhf_jax import main as entry
  from rlhf_jax.train import pipeline as pl

  raw = entry.load_config_file(str(ROOT / "configs" / "assistant.py") + ":smoke")
  _, cfg = entry.validate(raw)
  work = tmp_path_factory.mktemp("assistant_smoke")
  ev = pl.run(cfg, str(work))
  return work, cfg, ev


def test_report_has_per_category_rates_and_chat_transcripts(smoke_run):
  work, cfg, ev = smoke_run
  report = (work / "report.md").read_text()
  section = report.split("## The assistant task, per category")[1].split("## Plots")[0]
  for cat in CATEGORIES:
    assert re.search(
      rf"\| {cat} \| \d+ \| [01]\.\d\d \[[01]\.\d\d, [01]\.\d\d\] \| [01]\.\d\d \[", section
    ), cat
    assert f"### {cat}" in section
    assert 0.0 <= ev[f"pass_{cat}_before"] <= 1.0 and 0.0 <= ev[f"pass_{cat}_after"] <= 1.0
  assert "false-premise agreement" in section
  # one prompt each: before, after the supervised stage, after RL
  assert section.count("> **User:**") == 3 * len(CATEGORIES)
  assert section.count("> **Assistant:**") == 3 * len(CATEGORIES)
  assert len(re.findall(r"\*\*After SFT\*\* \(before RL\), gold [01]\.\d\d:", section)) == len(
    CATEGORIES
  )
  assert "| category | prompts | before | after SFT | SFT win rate | after |" in section
  assert "<|im_start|>" not in section and "<|im_end|>" not in section  # chat, not token soup
  assert 0.0 <= ev["win_rate"] <= 1.0 and np.isfinite(ev["kl"])
  assert (work / "round_1" / "policy_lora.npz").exists()  # the policy trained as adapters
  assert np.isfinite(ev["kl_start"])  # KL to the checkpoint the run started from
  # the reward model's refusal probe ran on the held-out harmful and benign prompts
  probed = ev["rm_prefers_decline_harmful_n"] + ev["rm_prefers_answer_benign_n"]
  assert 0 < probed <= ev["pass_harmful_n"] + ev["pass_benign_n"]
  assert "Does the reward model know when to decline?" in section
  # the second judge scored the held-out answers, and re-judging the recorded answers
  # (rlhf_jax.train.rejudge) gives the same win rate
  from rlhf_jax.feedback import scorers
  from rlhf_jax.train import rejudge

  assert cfg.eval.independent_judges == ("assistant_independent",)
  rows = rejudge.read_answers(work / "round_1" / "eval_answers.jsonl")
  again = rejudge.rejudge_answers(rows, scorers.get_scorer("assistant_independent"))
  assert ev["assistant_independent_win_rate"] == pytest.approx(again["win_rate"])
  assert ev["independent_win_rate"] == ev["assistant_independent_win_rate"]
  assert "win rate under assistant_independent (ties: equal scores)" in report
  if ev["rm_prefers_decline_harmful_n"] and ev["rm_prefers_answer_benign_n"]:
    j = ev["rm_prefers_decline_harmful"] + ev["rm_prefers_answer_benign"] - 1
    assert ev["rm_refusal_discrimination"] == pytest.approx(j)
    assert "Youden's J; 0: its preference for declining ignores" in section
    assert f"{j:+.2f}." in section


def test_supervised_stage_writes_demonstrations_and_a_reference(smoke_run):
  work, cfg, _ = smoke_run
  done = json.loads((work / "sft" / "DONE").read_text())
  rows = [json.loads(line) for line in (work / "sft" / "demonstrations.jsonl").open()]
  assert len(rows) == cfg.data.num_prompts
  used = [r for r in rows if r["used"]]
  assert done["demonstrations"] == len(used) >= 1
  assert sum(d["revision"] + d["sample"] for d in done["by_category"].values()) == sum(
    r["demonstration"] is not None for r in rows
  )
  # every demonstration passes every check of its prompt (the gold judge scores it 1)
  from rlhf_jax.feedback import assistant

  assert all(assistant.assistant_gold([r["prompt"]], [r["demonstration"]])[0] == 1 for r in used)
  assert (work / "sft" / "model" / "config.json").exists()
  sft_eval = json.loads((work / "sft" / "eval.json").read_text())
  assert 0.0 <= sft_eval["win_rate"] <= 1.0 and "pass_harmful_after" in sft_eval


def test_exported_policy_loads_and_generates_in_transformers(smoke_run):
  import torch
  import transformers as tr

  from rlhf_jax.models import chat, hf

  work, cfg, _ = smoke_run
  path = work / "round_1" / "policy"
  model = tr.AutoModelForCausalLM.from_pretrained(str(path))
  tok = tr.AutoTokenizer.from_pretrained(str(path))
  ours = chat.load_chat_tokenizer("smollm2-135m-instruct")
  msgs = [{"role": "user", "content": "Is 7 x 8 = 54, right?"}]
  text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert text == ours.apply_chat_template(msgs)
  gen = json.loads((path / "generation_config.json").read_text())
  assert ours.end_of_turn_id in gen["eos_token_id"]
  ids = tok(text, return_tensors="pt", add_special_tokens=False)
  out = model.generate(**ids, max_new_tokens=6, do_sample=False)
  assert (
    out.shape[0] == 1 and ids["input_ids"].shape[1] < out.shape[1] <= ids["input_ids"].shape[1] + 6
  )
  assert isinstance(tok.decode(out[0, ids["input_ids"].shape[1] :]), str)
  # The same weights in this library give the same next-token logits (transformers the oracle).
  jmodel, params = hf.from_pretrained(path)
  x = ids["input_ids"].numpy().astype(np.int32)
  ours_logits = np.asarray(jmodel.apply({"params": params}, x, np.ones_like(x)))
  with torch.no_grad():
    ref_logits = model(**ids).logits.numpy()
  np.testing.assert_allclose(ours_logits, ref_logits, atol=2e-4, rtol=1e-3)
