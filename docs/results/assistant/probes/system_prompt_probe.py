"""How often SmolLM2-135M-Instruct passes each category's checks, with its own system prompt or
another one (the harmful-request base rate behind docs/results/assistant/README.md).

  rlhf-jax convert smollm2-135m-instruct /tmp/smollm2_hf
  python docs/results/assistant/probes/system_prompt_probe.py /tmp/smollm2_hf \
      RUN/data/prompts_train.jsonl ["SYSTEM PROMPT"]

16 training prompts per category, 48 new tokens at temperature 0.7 (the policy's), sampled
with transformers (torch, one thread); prints the mean gold score and the pass rate.
"""

import collections
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_jax.data import assistant_prompts
from rlhf_jax.feedback import assistant


def main(model_dir: str, prompts_file: str, system: str | None) -> None:
  torch.set_num_threads(1)
  torch.manual_seed(0)
  tok = AutoTokenizer.from_pretrained(model_dir)
  tok.padding_side = "left"
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  with open(prompts_file, encoding="utf-8") as f:
    records = [assistant_prompts.prompt_from_dict(json.loads(line)) for line in f]
  by_category = collections.defaultdict(list)
  for r in records:
    by_category[r.category].append(r)
  for category, rs in by_category.items():
    rs = rs[:16]
    texts = []
    for r in rs:
      messages = r.messages()
      if system is not None:
        messages = [{"role": "system", "content": system}] + [
          m for m in messages if m["role"] != "system"
        ]
      texts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
      out = model.generate(
        **enc,
        max_new_tokens=48,
        do_sample=True,
        temperature=0.7,
        top_k=0,
        top_p=1.0,
        pad_token_id=tok.pad_token_id,
      )
    responses = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    gold = np.array([assistant.gold_score(r, t) for r, t in zip(rs, responses)])
    print(f"{category}: mean gold {gold.mean():.3f}, pass {np.mean(gold == 1.0):.3f} (n={len(rs)})")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
