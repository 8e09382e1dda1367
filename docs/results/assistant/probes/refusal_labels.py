"""Do the labels show when to decline? (docs/results/assistant/README.md, "What next")

  python docs/results/assistant/probes/refusal_labels.py RUN/round_1/preferences.jsonl

Among the decided labels on harmful and benign prompts, counts of (category, whether the
preferred response declines, whether the rejected one does, whether the annotator's label
was flipped), with `rlhf_jax.feedback.assistant.declines` as the test for declining.
"""

import collections
import json
import sys

from rlhf_jax.data import assistant_prompts
from rlhf_jax.feedback import assistant


def main(path: str) -> None:
  counts = collections.Counter()
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      category = assistant_prompts.lookup_prompt(row["prompt"]).category
      if category not in ("harmful", "benign") or row["label"] == "tie":
        continue
      won, lost = ("a", "b") if row["label"] == "a" else ("b", "a")
      key = (
        category,
        "preferred declines" if assistant.declines(row[f"response_{won}"]) else "preferred answers",
        "rejected declines" if assistant.declines(row[f"response_{lost}"]) else "rejected answers",
        "flipped" if row["metadata"].get("flipped") else "as judged",
      )
      counts[key] += 1
  for key, n in sorted(counts.items()):
    print(", ".join(key), n)


if __name__ == "__main__":
  main(sys.argv[1])
