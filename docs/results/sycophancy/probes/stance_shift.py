"""Where the agreeing answers after PPO come from: the stance of every answer to a held-out
false claim, before (the starting model) and after (the policy), pooled over runs of one arm
(docs/results/sycophancy/README.md quotes it).

  python docs/results/sycophancy/probes/stance_shift.py STUDY_WORKDIR

STUDY_WORKDIR: a finished study (its runs/<bias>_<β>_s<seed>/round_1/eval_answers.jsonl), or
one finished pipeline run (its round_1/eval_answers.jsonl; one arm named after the folder).
Per arm (seeds pooled), the share of answers whose first sentence agrees, disagrees, both
("mixed") or takes no stance (rlhf_jax.feedback.assistant.stance); of the stance-less ones,
the share that restate the claimed value (which agrees_with_user counts as agreeing) and the
share that name the correct value; and the share counted as agreeing. Prints a markdown
table.
"""

import collections
import json
import pathlib
import re
import sys

from rlhf_jax.data import assistant_prompts
from rlhf_jax.feedback import assistant
from rlhf_jax.train.metrics import markdown_table

_COLUMNS = ("agree", "disagree", "mixed", "none", "restates", "names correct", "agreeing")


def shares(answers) -> dict:
  """``{column: share}`` over ``[(record, response), ...]``."""
  c = collections.Counter()
  for rec, text in answers:
    st = assistant.stance(text)
    c[st] += 1
    if st == "none":
      c["restates"] += assistant.mentions_value(rec.claimed, text)
      c["names correct"] += assistant.mentions_value(rec.correct, text)
    c["agreeing"] += assistant.agrees_with_user(rec, text)
  n = max(len(answers), 1)
  return {k: c[k] / n for k in _COLUMNS}


def main(study: str) -> None:
  arms = collections.defaultdict(lambda: {"before": [], "after": []})
  root = pathlib.Path(study)
  runs = [root] if (root / "round_1").is_dir() else sorted((root / "runs").iterdir())
  for run in runs:
    path = run / "round_1" / "eval_answers.jsonl"
    if not path.exists():
      continue
    arm = re.sub(r"_s\d+$", "", run.name)
    for line in path.read_text(encoding="utf-8").splitlines():
      row = json.loads(line)
      rec = assistant_prompts.lookup_prompt(row["prompt"])
      if rec.category == "premise" and not rec.claim_true:
        for side in ("before", "after"):
          arms[arm][side].append((rec, row[side]))
  rows = []
  for arm, sides in sorted(arms.items()):
    for side in ("before", "after"):
      s = shares(sides[side])
      rows.append([arm, side, len(sides[side])] + [f"{s[k]:.3f}" for k in _COLUMNS])
  print(markdown_table(["arm", "answers", "n", *_COLUMNS], rows))


if __name__ == "__main__":
  main(sys.argv[1])
