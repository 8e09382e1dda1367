"""The annotation store, its CLI, export to preference JSONL, the agreement report, Fleiss'
kappa and the batched queue write-back."""

import sqlite3

import numpy as np
import pytest

from rlhf_jax import evaluation
from rlhf_jax.annotate import cli
from rlhf_jax.annotate.report import agreement_report
from rlhf_jax.annotate.store import Conflict, Store, majority_label
from rlhf_jax.data import read_preferences
from rlhf_jax.feedback import human


def test_fleiss_kappa_hand_computed_and_checks():
  res = evaluation.fleiss_kappa([[2, 0, 0], [0, 2, 0], [1, 1, 0], [0, 0, 2]])
  # P_bar = 3/4; p = (3/8, 3/8, 2/8), P_e = 22/64.
  assert res.rate == pytest.approx(0.75)
  assert res.kappa == pytest.approx((0.75 - 22 / 64) / (1 - 22 / 64))
  # Perfect agreement among 3 raters; variable raters per pair.
  assert evaluation.fleiss_kappa([[3, 0, 0], [0, 2, 0], [0, 0, 4]]).kappa == pytest.approx(1.0)
  assert np.isnan(evaluation.fleiss_kappa([[2, 0, 0], [3, 0, 0]]).kappa)
  with pytest.raises(ValueError, match="at least two"):
    evaluation.fleiss_kappa([[1, 0, 0]])
  with pytest.raises(ValueError, match=r"\[N, 3\]"):
    evaluation.fleiss_kappa([[1, 1]])


def test_majority_and_report():
  assert majority_label(["a", "a", "b"]) == "a"
  assert majority_label(["a", "b"]) == "tie"
  rows = [
    {"pair_id": p, "annotator": who, "label": lab}
    for p, votes in {"1": "aab", "2": "bbb", "3": "ttb"}.items()
    for who, lab in zip("xyz", votes)
  ]
  rows = [{**r, "label": {"t": "tie"}.get(r["label"], r["label"])} for r in rows]
  rep = agreement_report(rows)
  assert rep["kappa"]["method"] == "fleiss" and rep["n_multi"] == 3
  # x: on pairs 1 and 3 the two others split, so only pair 2 compares (agree).
  assert rep["per_annotator"]["x"] == {
    "n_labels": 3,
    "n_compared": 1,
    "agreement_with_majority": 1.0,
  }
  assert rep["per_annotator"]["z"]["agreement_with_majority"] == pytest.approx(1 / 3)
  assert len(rep["pairwise"]) == 3


def test_store_pragmas_hashed_tokens_unique_labels(tmp_path):
  db = tmp_path / "s.sqlite"
  store = Store(db)
  token = store.add_annotator("ann")
  with pytest.raises(Conflict, match="already exists"):
    store.add_annotator("ann")
  store.add_pairs([{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b"}])
  who = store.annotator_for_token(token)
  assert store.next_pair(who["id"])["id"] == "x"
  store.submit(who["id"], "x", "tie")
  with pytest.raises(Conflict):
    store.submit(who["id"], "x", "left")
  raw = sqlite3.connect(db)
  assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
  with pytest.raises(sqlite3.IntegrityError):  # the constraint itself, not only the check
    raw.execute(
      "INSERT INTO labels (pair_id, annotator_id, label, a_left, created) VALUES ('x', 1, 'a', 1, 0)"
    )
  store.close()
  assert token.encode() not in db.read_bytes() + (tmp_path / "s.sqlite-wal").read_bytes()


def test_submit_labels_is_batched_and_idempotent(tmp_path):
  ids = human.enqueue(tmp_path, ["p", "q"], ["a", "b"], ["c", "d"])
  rows = [{"id": ids[0], "label": "a", "annotator": "u+v", "votes": {"u": "a", "v": "a"}}]
  assert [r.label for r in human.submit_labels(tmp_path, rows)] == ["a"]
  assert human.submit_labels(tmp_path, rows) == []  # already labelled: skipped
  assert human.labelled(tmp_path)[0]["votes"] == {"u": "a", "v": "a"}
  with pytest.raises(human.QueueError, match="label must be one of"):
    human.submit_labels(tmp_path, [{"id": ids[1], "label": "x", "annotator": "u"}])
  with pytest.raises(human.QueueError, match="no pending item"):
    human.submit_labels(tmp_path, [{"id": "nope", "label": "a", "annotator": "u"}])


def test_cli_add_import_export_report(tmp_path, capsys):
  db, queue = str(tmp_path / "db.sqlite"), tmp_path / "queue"
  ids = human.enqueue(queue, ["p1", "p2"], ["a1", "a2"], ["b1", "b2"], meta={"round": 2})
  assert cli.main(["add-annotator", "--db", db, "ann"]) == 0
  token = capsys.readouterr().out.strip()
  assert cli.main(["import-queue", "--db", db, "--queue", str(queue)]) == 0
  assert "2 new pairs" in capsys.readouterr().out
  store = Store(db)
  who = store.annotator_for_token(token)
  for _ in ids:
    pair = store.next_pair(who["id"])
    store.submit(who["id"], pair["id"], "left" if pair["a_left"] else "right", comment="ok")
  assert cli.main(["import-queue", "--db", db, "--queue", str(queue)]) == 0
  assert "2 merged labels written back" in capsys.readouterr().out
  assert [r.label for r in human.collect(queue, ids)] == ["a", "a"]
  out = tmp_path / "prefs.jsonl"
  assert cli.main(["export", "--db", db, "--out", str(out)]) == 0
  recs = read_preferences(out)  # the reward trainer's reader
  assert [(r.prompt, r.label) for r in recs] == [("p1", "a"), ("p2", "a")]
  assert recs[0].metadata["round"] == 2 and recs[0].metadata["annotator"] == "ann"
  assert cli.main(["export", "--db", db, "--out", str(out), "--per-label"]) == 0
  assert read_preferences(out)[0].metadata["comment"] == "ok"
  capsys.readouterr()
  assert cli.main(["report", "--db", db]) == 0
  assert "2 labels on 2 pairs" in capsys.readouterr().out
  assert cli.main(["add-annotator", "--db", db, "ann"]) == 2
  assert "already exists" in capsys.readouterr().err
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text('{"prompt": "x", "response_a": "y", "response_b": "z"}\n')
  assert cli.main(["add-pairs", "--db", db, str(pairs)]) == 0
  assert "1 new pairs" in capsys.readouterr().out
