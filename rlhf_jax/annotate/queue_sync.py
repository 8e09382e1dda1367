"""The bridge to the pipeline's label queue (:mod:`rlhf_jax.feedback.human`).

The pipeline (``feedback.source = "human"``) appends pairs to ``pending.jsonl`` and polls
``labels.jsonl``; the app imports the pending pairs into its store and, once a pair has its K
labels, writes the majority label back with :func:`rlhf_jax.feedback.human.submit_labels`
(annotator: the annotators' names joined by "+", ``votes``: each one's label). The queue's own
files and readers are unchanged.
"""

from __future__ import annotations

import logging
import os
import threading

from rlhf_jax.annotate.store import Store
from rlhf_jax.feedback import human

__all__ = ["import_queue", "write_back", "sync", "SyncThread"]

_log = logging.getLogger(__name__)


def import_queue(store: Store, queue_dir: str | os.PathLike[str]) -> int:
  """Adds the queue's pending pairs to the store; returns how many were new."""
  return store.add_pairs(human.pending(queue_dir), source="queue")


def write_back(store: Store, queue_dir: str | os.PathLike[str]) -> int:
  """Writes the merged label of every queue pair that has its K labels and was not written
  back yet; returns how many. Idempotent: a crash between the two steps repeats the write,
  which the queue skips."""
  done = [p for p in store.merged(source="queue") if not p["written_back"]]
  if not done:
    return 0
  human.submit_labels(
    queue_dir,
    [
      {
        "id": p["id"],
        "label": p["label"],
        "annotator": "+".join(p["annotators"]),
        "votes": p["votes"],
      }
      for p in done
    ],
  )
  store.mark_written_back([p["id"] for p in done])
  return len(done)


def sync(store: Store, queue_dir: str | os.PathLike[str]) -> tuple[int, int]:
  """:func:`import_queue` then :func:`write_back`; returns both counts."""
  return import_queue(store, queue_dir), write_back(store, queue_dir)


class SyncThread(threading.Thread):
  """Runs :func:`sync` every ``every_s`` seconds, or sooner after :meth:`poke`, until
  :meth:`stop`. Errors are logged and retried (a queue file being rewritten by hand)."""

  def __init__(self, store: Store, queue_dir: str | os.PathLike[str], every_s: float = 2.0):
    super().__init__(name="annotate-queue-sync", daemon=True)
    self.store, self.queue_dir, self.every_s = store, queue_dir, every_s
    self._wake, self._halt = threading.Event(), threading.Event()

  def poke(self) -> None:
    self._wake.set()

  def stop(self) -> None:
    self._halt.set()
    self._wake.set()

  def run(self) -> None:
    while not self._halt.is_set():
      try:
        new, written = sync(self.store, self.queue_dir)
        if new or written:
          _log.info("queue %s: %d new pairs, %d labels written back", self.queue_dir, new, written)
      except Exception as e:  # noqa: BLE001 - keep serving; the next round retries
        _log.warning("queue %s: sync failed: %s", self.queue_dir, e)
      self._wake.wait(self.every_s)
      self._wake.clear()
    self.store.close()
