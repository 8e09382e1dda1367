"""The human annotation queue: a folder of JSONL files shared by the trainer and the annotation app.

Layout of `queue_dir`:

* `pending.jsonl` — items waiting for a label, one per line:
  `{"id", "prompt", "response_a", "response_b", "metadata", "created"}`.
* `labels.jsonl` — labelled items, one per line: the item's fields plus
  `{"label": "a" | "b" | "tie", "annotator", "labelled_at"}` (and `"votes"` when the annotation
  app, `rlhf_jax.annotate`, merged several annotators' labels into one).
* `.lock` — an advisory `fcntl` lock held while a writer rewrites either file.

Every write rewrites a whole file atomically (temp file + rename), so a reader never sees a
partial line. `submit_label` first appends to `labels.jsonl`, then drops the item from
`pending.jsonl`; if a crash falls between the two, the item is in both files and `pending()`
ignores it because its id is labelled. Several processes (the trainer, the web app) may use one
queue at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from rlhf_jax.data import files
from rlhf_jax.data.files import atomic_write_jsonl
from rlhf_jax.data.preferences import PreferenceRecord, check_metadata
from rlhf_jax.labels import LABELS

__all__ = [
  "PENDING_FILE",
  "LABELS_FILE",
  "QueueError",
  "enqueue",
  "submit_label",
  "submit_labels",
  "pending",
  "labelled",
  "collect",
  "wait_for_labels",
]

PENDING_FILE = "pending.jsonl"
LABELS_FILE = "labels.jsonl"
_LOCK_FILE = ".lock"


class QueueError(ValueError):
  """A queue operation was refused (unknown id, already labelled, bad label, corrupt file)."""


@contextlib.contextmanager
def _locked(queue_dir: pathlib.Path) -> Iterator[None]:
  queue_dir.mkdir(parents=True, exist_ok=True)
  with open(queue_dir / _LOCK_FILE, "a") as lock:
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read(path: pathlib.Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  rows = []
  for loc, row in files.read_jsonl(path, QueueError):
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
      raise QueueError(f"{loc}: field 'id': expected an object with a string id")
    rows.append(row)
  return rows


def _as_list(name: str, value: Sequence[str]) -> list[str]:
  if isinstance(value, str):
    raise TypeError(f"{name}: expected a list of strings, got a single str")
  out = list(value)
  for i, v in enumerate(out):
    if not isinstance(v, str):
      raise TypeError(f"{name}[{i}]: expected str, got {type(v).__name__}")
  return out


def enqueue(
  queue_dir: str | os.PathLike[str],
  prompts: Sequence[str],
  responses_a: Sequence[str],
  responses_b: Sequence[str],
  meta: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
  """Add N pairs to the queue.

  Args:
    queue_dir: the queue folder (created if missing).
    prompts, responses_a, responses_b: lists of N str.
    meta: metadata for every item (one dict), or one dict per item; JSON values, known keys
      type-checked as for PreferenceRecord (PreferenceFormatError otherwise). It is carried into
      the collected records (e.g. round, policy step, which side is the policy).
  Returns:
    the N new item ids (hex strings), in input order.
  """
  queue_dir = pathlib.Path(queue_dir)
  prompts, a, b = (
    _as_list("prompts", prompts),
    _as_list("responses_a", responses_a),
    _as_list("responses_b", responses_b),
  )
  if not (len(prompts) == len(a) == len(b)):
    raise ValueError(
      f"{len(prompts)} prompts, {len(a)} responses_a, {len(b)} responses_b: lengths differ"
    )
  if meta is None or isinstance(meta, Mapping):
    metas = [dict(meta or {})] * len(prompts)
  else:
    metas = [dict(m) for m in meta]
    if len(metas) != len(prompts):
      raise ValueError(f"meta has {len(metas)} entries for {len(prompts)} items")
  for i, m in enumerate(metas):
    check_metadata(m, f"meta[{i}]")
  now = time.time()
  items = [
    {
      "id": uuid.uuid4().hex,
      "prompt": p,
      "response_a": x,
      "response_b": y,
      "metadata": m,
      "created": now,
    }
    for p, x, y, m in zip(prompts, a, b, metas)
  ]
  with _locked(queue_dir):
    current = _read(queue_dir / PENDING_FILE)
    atomic_write_jsonl(queue_dir / PENDING_FILE, current + items)
  return [it["id"] for it in items]


def submit_label(
  queue_dir: str | os.PathLike[str], item_id: str, label: str, annotator: str
) -> PreferenceRecord:
  """Record a human's label for one pending item.

  Args:
    item_id: an id returned by `enqueue`.
    label: "a", "b" or "tie".
    annotator: who labelled it (non-empty).
  Returns:
    the resulting PreferenceRecord.
  Raises:
    QueueError: unknown id, already labelled, bad label or empty annotator.
  """
  queue_dir = pathlib.Path(queue_dir)
  if label not in LABELS:
    raise QueueError(f"label must be one of {LABELS}, got {label!r}")
  if not isinstance(annotator, str) or not annotator.strip():
    raise QueueError(f"annotator must be a non-empty string, got {annotator!r}")
  with _locked(queue_dir):
    done = _read(queue_dir / LABELS_FILE)
    if any(r["id"] == item_id for r in done):
      raise QueueError(f"item {item_id!r} in {queue_dir} is already labelled")
    items = _read(queue_dir / PENDING_FILE)
    match = [it for it in items if it["id"] == item_id]
    if not match:
      raise QueueError(f"no pending item {item_id!r} in {queue_dir}")
    row = {**match[0], "label": label, "annotator": annotator, "labelled_at": time.time()}
    atomic_write_jsonl(queue_dir / LABELS_FILE, done + [row])
    atomic_write_jsonl(queue_dir / PENDING_FILE, [it for it in items if it["id"] != item_id])
  return _record(row)


def submit_labels(
  queue_dir: str | os.PathLike[str], labels: Sequence[Mapping[str, Any]]
) -> list[PreferenceRecord]:
  """Record many labels at once (one rewrite of each file), as the annotation app does.

  Args:
    labels: dicts with ``id``, ``label`` ("a" | "b" | "tie"), ``annotator`` (non-empty str)
      and optionally ``votes`` (a JSON value kept in the labelled row, e.g. each annotator's
      label when several labelled the pair).
  Returns:
    the records written, in input order. Items that are already labelled are skipped, so a
    writer that crashed after this call but before noting it can call it again.
  Raises:
    QueueError: a bad label or annotator, or an id that is neither pending nor labelled.
  """
  queue_dir = pathlib.Path(queue_dir)
  for row in labels:
    if row.get("label") not in LABELS:
      raise QueueError(
        f"item {row.get('id')!r}: label must be one of {LABELS}, got {row.get('label')!r}"
      )
    annotator = row.get("annotator")
    if not isinstance(annotator, str) or not annotator.strip():
      raise QueueError(
        f"item {row.get('id')!r}: annotator must be a non-empty string, got {annotator!r}"
      )
  with _locked(queue_dir):
    done = _read(queue_dir / LABELS_FILE)
    done_ids = {r["id"] for r in done}
    items = _read(queue_dir / PENDING_FILE)
    by_id = {it["id"]: it for it in items}
    now, new = time.time(), []
    for row in labels:
      if row["id"] in done_ids:
        continue
      if row["id"] not in by_id:
        raise QueueError(f"no pending item {row['id']!r} in {queue_dir}")
      extra = {"votes": row["votes"]} if "votes" in row else {}
      new.append(
        {
          **by_id[row["id"]],
          "label": row["label"],
          "annotator": row["annotator"],
          "labelled_at": now,
          **extra,
        }
      )
      done_ids.add(row["id"])
    if new:
      atomic_write_jsonl(queue_dir / LABELS_FILE, done + new)
      atomic_write_jsonl(queue_dir / PENDING_FILE, [it for it in items if it["id"] not in done_ids])
  return [_record(r) for r in new]


def pending(queue_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Items still waiting for a label, oldest first: dicts with id, prompt, response_a,
  response_b, metadata, created."""
  queue_dir = pathlib.Path(queue_dir)
  done = {r["id"] for r in _read(queue_dir / LABELS_FILE)}
  return [it for it in _read(queue_dir / PENDING_FILE) if it["id"] not in done]


def labelled(queue_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """The raw labelled rows (item fields + label, annotator, labelled_at), in labelling order."""
  return _read(pathlib.Path(queue_dir) / LABELS_FILE)


def _record(row: Mapping[str, Any]) -> PreferenceRecord:
  meta = {
    **row.get("metadata", {}),
    "annotator": row["annotator"],
    "source": "human",
    "item_id": row["id"],
    "labelled_at": row["labelled_at"],
  }
  return PreferenceRecord(row["prompt"], row["response_a"], row["response_b"], row["label"], meta)


def collect(
  queue_dir: str | os.PathLike[str], ids: Sequence[str] | None = None
) -> list[PreferenceRecord]:
  """Labelled items as PreferenceRecords (metadata: the item's metadata + annotator, source
  "human", item_id, labelled_at).

  Args:
    ids: only these items, in this order (each must be labelled); None = all, in labelling order.
  """
  rows = labelled(queue_dir)
  if ids is None:
    return [_record(r) for r in rows]
  by_id = {r["id"]: r for r in rows}
  missing = [i for i in ids if i not in by_id]
  if missing:
    raise QueueError(
      f"{len(missing)} of {len(ids)} items are not labelled yet in {queue_dir}, e.g. {missing[:3]}"
    )
  return [_record(by_id[i]) for i in ids]


def wait_for_labels(
  queue_dir: str | os.PathLike[str],
  ids: Sequence[str],
  *,
  poll_s: float = 2.0,
  timeout_s: float | None = None,
  progress: bool = True,
) -> list[PreferenceRecord]:
  """Block until every item in `ids` is labelled, polling the queue every `poll_s` seconds.

  Returns:
    the records for `ids`, in that order.
  Raises:
    QueueError: an id is neither pending nor labelled (never enqueued here).
    TimeoutError: after `timeout_s` seconds, saying how many are still missing.
  """
  queue_dir = pathlib.Path(queue_dir)
  ids = list(ids)
  known = {it["id"] for it in _read(queue_dir / PENDING_FILE)} | {
    r["id"] for r in labelled(queue_dir)
  }
  unknown = [i for i in ids if i not in known]
  if unknown:
    raise QueueError(f"{len(unknown)} ids were never enqueued in {queue_dir}, e.g. {unknown[:3]}")
  wanted = set(ids)
  start = time.monotonic()
  bar = tqdm(total=len(wanted), desc="waiting for human labels", unit="label", disable=not progress)
  try:
    while True:
      done = wanted & {r["id"] for r in labelled(queue_dir)}
      bar.update(len(done) - bar.n)
      if len(done) == len(wanted):
        return collect(queue_dir, ids)
      if timeout_s is not None and time.monotonic() - start >= timeout_s:
        raise TimeoutError(
          f"{len(wanted) - len(done)} of {len(wanted)} items in {queue_dir} still "
          f"unlabelled after {timeout_s} s"
        )
      time.sleep(poll_s)
  finally:
    bar.close()
