"""Inter-annotator agreement of the labels in a store: Cohen's kappa for two annotators,
Fleiss' kappa for more (both from :mod:`rlhf_jax.evaluation`), and each annotator's agreement
with the majority of the others."""

from __future__ import annotations

import collections
import itertools
import math
from typing import Any

import numpy as np

from rlhf_jax import evaluation
from rlhf_jax.labels import LABELS, encode_label

__all__ = ["agreement_report", "format_report"]


def _num(x: float) -> float | None:
  return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def agreement_report(labels: list[dict[str, Any]]) -> dict[str, Any]:
  """Agreement statistics of ``labels`` (rows with ``pair_id``, ``annotator``, ``label``, as
  :meth:`rlhf_jax.annotate.store.Store.labels` returns).

  Returns a JSON-able dict:

  * ``n_labels``, ``n_pairs`` (labelled at least once), ``n_multi`` (labelled at least twice),
    ``annotators``, ``label_counts``.
  * ``kappa``: ``{"method": "cohen" | "fleiss", "kappa", "observed", "n_pairs"}`` over the pairs
    with at least two labels — Cohen's kappa when exactly two annotators labelled them, else
    Fleiss' kappa (pairs may have different numbers of labels); None without such pairs.
  * ``pairwise``: Cohen's kappa and raw agreement of every two annotators over the pairs both
    labelled.
  * ``per_annotator``: for each annotator, ``n_labels`` and ``agreement_with_majority``: the
    fraction of their labels that equal the majority label of the *other* annotators of the
    pair, over pairs where the others' most common label is unique (``n_compared`` of them).
  """
  votes: dict[str, dict[str, str]] = collections.defaultdict(dict)
  for r in labels:
    votes[r["pair_id"]][r["annotator"]] = r["label"]
  annotators = sorted({r["annotator"] for r in labels})
  multi = {p: v for p, v in votes.items() if len(v) >= 2}
  out: dict[str, Any] = {
    "n_labels": len(labels),
    "n_pairs": len(votes),
    "n_multi": len(multi),
    "annotators": annotators,
    "label_counts": {name: sum(1 for r in labels if r["label"] == name) for name in LABELS},
    "kappa": None,
    "pairwise": [],
    "per_annotator": {},
  }
  raters = sorted({a for v in multi.values() for a in v})
  if multi and len(raters) == 2:
    x, y = raters
    res = evaluation.agreement([v[x] for v in multi.values()], [v[y] for v in multi.values()])
    out["kappa"] = {
      "method": "cohen",
      "kappa": _num(res.kappa),
      "observed": res.rate,
      "n_pairs": res.n,
    }
  elif multi:
    counts = np.zeros((len(multi), len(LABELS)), np.int64)
    for i, v in enumerate(multi.values()):
      for lab in v.values():
        counts[i, encode_label(lab)] += 1
    res = evaluation.fleiss_kappa(counts)
    out["kappa"] = {
      "method": "fleiss",
      "kappa": _num(res.kappa),
      "observed": res.rate,
      "n_pairs": res.n,
    }
  for x, y in itertools.combinations(annotators, 2):
    both = [v for v in votes.values() if x in v and y in v]
    if both:
      res = evaluation.agreement([v[x] for v in both], [v[y] for v in both])
      out["pairwise"].append(
        {"annotators": [x, y], "n_pairs": res.n, "agreement": res.rate, "kappa": _num(res.kappa)}
      )
  for a in annotators:
    n_labels = compared = agree = 0
    for v in votes.values():
      if a not in v:
        continue
      n_labels += 1
      others = collections.Counter(lab for who, lab in v.items() if who != a).most_common(2)
      if not others or (len(others) == 2 and others[0][1] == others[1][1]):
        continue
      compared += 1
      agree += v[a] == others[0][0]
    out["per_annotator"][a] = {
      "n_labels": n_labels,
      "n_compared": compared,
      "agreement_with_majority": (agree / compared) if compared else None,
    }
  return out


def format_report(rep: dict[str, Any]) -> str:
  """The report as a few lines of text (the CLI prints it)."""

  def f(x):
    return "n/a" if x is None else f"{x:.3f}"

  lines = [
    f"{rep['n_labels']} labels on {rep['n_pairs']} pairs ({rep['n_multi']} labelled by 2 or more) "
    f"from {len(rep['annotators'])} annotators; labels {rep['label_counts']}"
  ]
  k = rep["kappa"]
  if k:
    name = "Cohen's" if k["method"] == "cohen" else "Fleiss'"
    lines.append(
      f"{name} kappa {f(k['kappa'])} (observed agreement {f(k['observed'])}, {k['n_pairs']} pairs)"
    )
  else:
    lines.append("kappa: n/a (no pair has two labels yet)")
  for p in rep["pairwise"]:
    lines.append(
      f"  {p['annotators'][0]} vs {p['annotators'][1]}: agreement {f(p['agreement'])}, "
      f"Cohen's kappa {f(p['kappa'])} over {p['n_pairs']} pairs"
    )
  for a, s in rep["per_annotator"].items():
    lines.append(
      f"  {a}: {s['n_labels']} labels, agreement with the others' majority "
      f"{f(s['agreement_with_majority'])} over {s['n_compared']} pairs"
    )
  return "\n".join(lines)
