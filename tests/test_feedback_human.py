"""The human annotation queue: enqueue, label, collect, wait; atomic JSONL files."""

import json
import threading

import pytest

from rlhf_jax.data.preferences import PreferenceFormatError
from rlhf_jax.feedback.human import (
  LABELS_FILE,
  PENDING_FILE,
  QueueError,
  collect,
  enqueue,
  labelled,
  pending,
  submit_label,
  wait_for_labels,
)


def test_enqueue_label_collect(tmp_path):
  q = tmp_path / "queue"
  ids = enqueue(q, ["p1", "p2", "p3"], ["a1", "a2", "a3"], ["b1", "b2", "b3"], meta={"round": 1})
  assert len(set(ids)) == 3
  assert [it["prompt"] for it in pending(q)] == ["p1", "p2", "p3"]
  assert [it["id"] for it in pending(q)] == ids
  rec = submit_label(q, ids[1], "b", "alice")
  assert (rec.prompt, rec.response_a, rec.response_b, rec.label) == ("p2", "a2", "b2", "b")
  assert rec.metadata["annotator"] == "alice" and rec.metadata["source"] == "human"
  assert rec.metadata["round"] == 1 and rec.metadata["item_id"] == ids[1]
  assert [it["id"] for it in pending(q)] == [ids[0], ids[2]]
  submit_label(q, ids[0], "tie", "bob")
  assert [r.label for r in collect(q)] == ["b", "tie"]
  assert [r.prompt for r in collect(q, [ids[0], ids[1]])] == ["p1", "p2"]
  with pytest.raises(QueueError, match="not labelled yet"):
    collect(q, [ids[2]])
  # The files are plain JSONL, one object per line, and no temp files are left.
  rows = [json.loads(line) for line in (q / PENDING_FILE).read_text().splitlines()]
  assert [r["id"] for r in rows] == [ids[2]]
  assert len((q / LABELS_FILE).read_text().splitlines()) == 2
  assert sorted(p.name for p in q.iterdir()) == [".lock", LABELS_FILE, PENDING_FILE]


def test_per_item_metadata_and_validation(tmp_path):
  ids = enqueue(tmp_path, ["p", "q"], ["a", "b"], ["c", "d"], meta=[{"seed": 1}, {"seed": 2}])
  submit_label(tmp_path, ids[1], "a", "carol")
  assert collect(tmp_path)[0].metadata["seed"] == 2
  with pytest.raises(ValueError, match="lengths differ"):
    enqueue(tmp_path, ["p"], ["a", "b"], ["c"])
  with pytest.raises(ValueError, match="meta has 1 entries for 2 items"):
    enqueue(tmp_path, ["p", "q"], ["a", "b"], ["c", "d"], meta=[{}])
  with pytest.raises(PreferenceFormatError, match=r"meta\[0\]: field 'metadata.round'"):
    enqueue(tmp_path, ["p"], ["a"], ["c"], meta={"round": "one"})
  with pytest.raises(TypeError, match="single str"):
    enqueue(tmp_path, "p", ["a"], ["c"])


def test_submit_label_errors(tmp_path):
  (item,) = enqueue(tmp_path, ["p"], ["a"], ["b"])
  with pytest.raises(QueueError, match="label must be one of"):
    submit_label(tmp_path, item, "left", "dan")
  with pytest.raises(QueueError, match="annotator"):
    submit_label(tmp_path, item, "a", " ")
  with pytest.raises(QueueError, match="no pending item 'nope'"):
    submit_label(tmp_path, "nope", "a", "dan")
  submit_label(tmp_path, item, "a", "dan")
  with pytest.raises(QueueError, match="already labelled"):
    submit_label(tmp_path, item, "b", "erin")


def test_pending_ignores_items_labelled_before_a_crash(tmp_path):
  ids = enqueue(tmp_path, ["p", "q"], ["a", "b"], ["c", "d"])
  item = pending(tmp_path)[0]
  (tmp_path / LABELS_FILE).write_text(
    json.dumps({**item, "label": "a", "annotator": "x", "labelled_at": 0.0}) + "\n"
  )
  assert [it["id"] for it in pending(tmp_path)] == [ids[1]]
  assert [r["id"] for r in labelled(tmp_path)] == [ids[0]]


def test_corrupt_queue_file_is_named(tmp_path):
  enqueue(tmp_path, ["p"], ["a"], ["b"])
  with open(tmp_path / PENDING_FILE, "a") as f:
    f.write("{oops\n")
  with pytest.raises(QueueError, match=rf"{PENDING_FILE}:2: invalid JSON"):
    pending(tmp_path)


def test_wait_for_labels_returns_when_a_thread_labels_everything(tmp_path):
  ids = enqueue(tmp_path, [f"p{i}" for i in range(5)], ["a"] * 5, ["b"] * 5)
  started = threading.Event()

  def annotate():
    started.wait()
    for i, item in enumerate(reversed(ids)):
      submit_label(tmp_path, item, "ab"[i % 2], "thread")

  worker = threading.Thread(target=annotate)
  worker.start()
  started.set()
  try:
    recs = wait_for_labels(tmp_path, ids, poll_s=0.01, timeout_s=30, progress=False)
  finally:
    worker.join()
  assert [r.prompt for r in recs] == [f"p{i}" for i in range(5)]
  assert [r.label for r in recs] == ["a", "b", "a", "b", "a"]


def test_wait_for_labels_timeout_and_unknown_ids(tmp_path):
  ids = enqueue(tmp_path, ["p", "q"], ["a", "b"], ["c", "d"])
  submit_label(tmp_path, ids[0], "a", "x")
  with pytest.raises(TimeoutError, match="1 of 2 items"):
    wait_for_labels(tmp_path, ids, poll_s=0.01, timeout_s=0.05, progress=False)
  with pytest.raises(QueueError, match="never enqueued"):
    wait_for_labels(tmp_path, ["bogus"], poll_s=0.01, timeout_s=1, progress=False)
