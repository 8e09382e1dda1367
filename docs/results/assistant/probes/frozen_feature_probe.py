"""Can a linear Bradley-Terry head on frozen SmolLM2 features rank the labelled pairs? (the
reward-model probe of docs/results/assistant/README.md)

  rlhf-jax convert smollm2-135m-instruct /tmp/smollm2_hf
  python docs/results/assistant/probes/frozen_feature_probe.py /tmp/smollm2_hf \
      RUN/round_1/pairs.npz [MORE/pairs.npz ...]

Features per response: the last layer's hidden state averaged over the response tokens,
next to the last token's (prompts are left-padded to 64 tokens). A logistic regression on
the feature difference of each decided pair (ties dropped; both orders), L2-penalised;
prints the 5-fold cross-validated accuracy for each penalty.
"""

import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

PROMPT_LEN = 64


def features(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  out = []
  for i in range(0, len(ids), 32):
    x = torch.tensor(ids[i : i + 32], dtype=torch.long)
    m = torch.tensor(mask[i : i + 32])
    with torch.no_grad():
      h = model.model(input_ids=x, attention_mask=m).last_hidden_state
    resp = m.clone()
    resp[:, :PROMPT_LEN] = 0
    r = resp.unsqueeze(-1).float()
    mean = (h * r).sum(1) / r.sum(1).clamp(min=1)
    last = h[torch.arange(len(x)), (m.cumsum(1) * m).argmax(1)]
    out.append(torch.cat([mean, last], -1).numpy())
  return np.concatenate(out)


def cross_validated_accuracy(x: np.ndarray, y: np.ndarray, penalty: float, folds: int = 5) -> float:
  idx = np.random.default_rng(0).permutation(len(y))
  parts = np.array_split(idx, folds)
  accs = []
  for k in range(folds):
    test = parts[k]
    train = np.concatenate([parts[j] for j in range(folds) if j != k])
    xt = np.concatenate([x[train], -x[train]])
    yt = np.concatenate([y[train], 1 - y[train]])
    w = np.zeros(x.shape[1])
    for _ in range(500):  # gradient descent on the mean logistic loss + penalty |w|^2 / 2
      p = 1 / (1 + np.exp(-xt @ w))
      w -= 0.5 * (xt.T @ (p - yt) / len(yt) + penalty * w)
    accs.append(np.mean((x[test] @ w > 0) == (y[test] > 0.5)))
  return float(np.mean(accs))


def main(model_dir: str, files: list[str]) -> None:
  torch.set_num_threads(2)
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  data = [dict(np.load(f)) for f in files]
  cat = lambda key: np.concatenate([d[key] for d in data])
  fa = features(model, cat("ids_a"), cat("mask_a"))
  fb = features(model, cat("ids_b"), cat("mask_b"))
  label = cat("label")  # 0: a preferred, 1: b, 2: tie
  decided = label < 2
  scale = np.concatenate([fa, fb]).std(0) + 1e-6
  x = ((fa - fb) / scale)[decided]
  y = (label[decided] == 0).astype(np.float64)
  print(f"{len(label)} pairs, {int(decided.sum())} decided")
  for penalty in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
    print(
      f"penalty {penalty:g}: cross-validated accuracy {cross_validated_accuracy(x, y, penalty):.3f}"
    )


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
