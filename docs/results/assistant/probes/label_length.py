"""Do the assistant task's labels reward length? (docs/results/assistant/README.md)

  python docs/results/assistant/probes/label_length.py RUN/round_1/pairs.npz [PROMPT_LEN]

Among the decided pairs (ties dropped) whose responses differ in length: the share where the
preferred response is the shorter one, and the mean response length (tokens) of preferred
and rejected responses. 0.5 means length tells nothing about the label; a reward model that
ranks by length could then not beat chance on these labels.
"""

import sys

import numpy as np

from rlhf_jax import losses


def main(path: str, prompt_len: int = 64) -> None:
  d = dict(np.load(path))
  len_a = d["mask_a"][:, prompt_len:].sum(1)
  len_b = d["mask_b"][:, prompt_len:].sum(1)
  label = d["label"]
  decided = label != losses.LABEL_TIE
  a_wins = label == losses.LABEL_A
  differ = decided & (len_a != len_b)
  shorter_wins = np.mean(a_wins[differ] == (len_a < len_b)[differ])
  preferred = np.where(a_wins, len_a, len_b)[decided]
  rejected = np.where(a_wins, len_b, len_a)[decided]
  print(f"{path}: {len(label)} pairs, {decided.sum()} decided, {differ.sum()} of different length")
  print(f"  preferred response is the shorter one: {shorter_wins:.3f}")
  print(f"  mean length preferred {preferred.mean():.1f}, rejected {rejected.mean():.1f} tokens")


if __name__ == "__main__":
  main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
