"""The annotation store: one SQLite file (WAL journal) holding pairs, annotators and labels.

Durability: the journal is WAL and ``synchronous=FULL``: every commit fsyncs the WAL before the
server answers, so an acknowledged label survives the server being killed *and* the machine
losing power. (``NORMAL`` in WAL mode already survives a killed process — the commit sits in
the WAL file in the page cache — but the last commits may roll back on power loss; labels
arrive at human pace, a few per second, so the fsync per commit costs nothing that matters.)
Every write is one ``BEGIN IMMEDIATE`` transaction; a reader never sees half of one.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`):

* ``annotators(id, name UNIQUE, token_hash UNIQUE, created)`` — tokens are stored as their
  SHA-256 (they are 192-bit random strings, so a fast hash is enough; the plain token is shown
  once, by :meth:`Store.add_annotator`).
* ``pairs(seq, id UNIQUE, prompt, response_a, response_b, metadata JSON, source, created,
  written_back)`` — ``source`` is ``"queue"`` for pairs imported from a
  :mod:`rlhf_jax.feedback.human` queue (their merged label goes back there) or ``"store"``.
* ``assignments(pair_id, annotator_id, a_left, shown_at)`` — the order a pair was shown in
  (``a_left=1``: response_a on the left), one per (pair, annotator).
* ``labels(id, pair_id, annotator_id, label, a_left, comment, created, updated)`` —
  ``UNIQUE(pair_id, annotator_id)``: a second label from one annotator is refused unless the
  request asks to replace the first.
* ``skips(pair_id, annotator_id, created)`` — pairs an annotator chose not to label.
* ``rm_scores(pair_id, score_a, score_b)`` — the demo mode's cached reward-model scores.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rlhf_jax.labels import LABELS

__all__ = [
  "SCHEMA_VERSION",
  "ASSIGNMENT_TTL_S",
  "StoreError",
  "Conflict",
  "NotFound",
  "Store",
  "hash_token",
  "majority_label",
  "rm_label",
]

SCHEMA_VERSION = 1
ASSIGNMENT_TTL_S = 600.0
"""A pair shown to an annotator is reserved for them this long (others get other pairs)."""

_LABELS_SQL = ", ".join(f"'{name}'" for name in LABELS)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
  token_hash TEXT NOT NULL UNIQUE,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  prompt TEXT NOT NULL,
  response_a TEXT NOT NULL,
  response_b TEXT NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}',
  source TEXT NOT NULL DEFAULT 'store',
  created REAL NOT NULL,
  written_back INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS assignments (
  pair_id TEXT NOT NULL REFERENCES pairs(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  a_left INTEGER NOT NULL CHECK (a_left IN (0, 1)),
  shown_at REAL NOT NULL,
  PRIMARY KEY (pair_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS labels (
  id INTEGER PRIMARY KEY,
  pair_id TEXT NOT NULL REFERENCES pairs(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  label TEXT NOT NULL CHECK (label IN (@LABELS@)),
  a_left INTEGER NOT NULL CHECK (a_left IN (0, 1)),
  comment TEXT NOT NULL DEFAULT '',
  created REAL NOT NULL,
  updated REAL,
  UNIQUE (pair_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS labels_annotator ON labels(annotator_id);
CREATE TABLE IF NOT EXISTS skips (
  pair_id TEXT NOT NULL REFERENCES pairs(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  created REAL NOT NULL,
  PRIMARY KEY (pair_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS rm_scores (
  pair_id TEXT PRIMARY KEY REFERENCES pairs(id),
  score_a REAL NOT NULL,
  score_b REAL NOT NULL
);
""".replace("@LABELS@", _LABELS_SQL)


class StoreError(ValueError):
  """A refused store operation; the web app answers it with a 4xx and this message."""

  status = 400


class Conflict(StoreError):
  """The operation clashes with what is stored (a second label without replace, a duplicate
  annotator name)."""

  status = 409


class NotFound(StoreError):
  """An unknown pair."""

  status = 404


def hash_token(token: str) -> str:
  """The stored form of a token: SHA-256, hex."""
  return hashlib.sha256(token.encode("utf-8")).hexdigest()


def majority_label(labels: Sequence[str]) -> str:
  """The label most annotators gave; ``"tie"`` when no label has a strict plurality (e.g. one
  "a" and one "b": the annotators disagree, so the pair is trained on as a tie)."""
  counts = collections.Counter(labels).most_common()
  if not counts:
    raise ValueError("majority_label: no labels")
  if len(counts) > 1 and counts[0][1] == counts[1][1]:
    return "tie"
  return counts[0][0]


class Store:
  """Thread-safe access to one annotation database (a connection per thread).

  Args:
    path: the SQLite file (created with the schema if missing).
    labels_per_pair: how many annotators label each pair (K).
    synchronous: SQLite's ``synchronous`` pragma, "FULL" (default) or "NORMAL".
  """

  def __init__(self, path: str | os.PathLike[str], labels_per_pair: int = 1, synchronous="FULL"):
    if labels_per_pair < 1:
      raise ValueError(f"labels_per_pair must be >= 1, got {labels_per_pair}")
    if synchronous not in ("FULL", "NORMAL"):
      raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
    self.path = os.fspath(path)
    self.labels_per_pair = labels_per_pair
    self.synchronous = synchronous
    self._local = threading.local()
    # Writers queue here rather than in SQLite's busy handler, which sleeps in steps of up to
    # 100 ms and would set the tail latency under load (other processes still get the busy
    # timeout).
    self._write_lock = threading.Lock()
    self._rng = random.SystemRandom()
    conn = self._conn()
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
      raise StoreError(f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}")
    conn.executescript(_SCHEMA)  # one script, idempotent (IF NOT EXISTS)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

  # -------------------------------------------------------------------- connections

  def _conn(self) -> sqlite3.Connection:
    conn = getattr(self._local, "conn", None)
    if conn is None:
      conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
      conn.row_factory = sqlite3.Row
      mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
      if mode.lower() != "wal":
        raise StoreError(f"{self.path}: cannot use the WAL journal (got {mode!r})")
      conn.execute(f"PRAGMA synchronous={self.synchronous}")
      conn.execute("PRAGMA foreign_keys=ON")
      conn.execute("PRAGMA busy_timeout=30000")
      self._local.conn = conn
    return conn

  @contextlib.contextmanager
  def transaction(self) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back on an exception)."""
    db = self._conn()
    with self._write_lock:
      db.execute("BEGIN IMMEDIATE")
      try:
        yield db
      except BaseException:
        db.execute("ROLLBACK")
        raise
      db.execute("COMMIT")

  def close(self) -> None:
    """Closes this thread's connection (others close when their thread ends)."""
    conn = getattr(self._local, "conn", None)
    if conn is not None:
      conn.close()
      self._local.conn = None

  # -------------------------------------------------------------------- annotators

  def add_annotator(self, name: str) -> str:
    """Creates annotator ``name`` and returns their token (shown only now; stored hashed)."""
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not 1 <= len(name) <= 100:
      raise StoreError(f"annotator name must be 1 to 100 characters, got {name!r}")
    token = secrets.token_urlsafe(24)
    try:
      with self.transaction() as db:
        db.execute(
          "INSERT INTO annotators (name, token_hash, created) VALUES (?, ?, ?)",
          (name, hash_token(token), time.time()),
        )
    except sqlite3.IntegrityError as e:
      raise Conflict(f"annotator {name!r} already exists") from e
    return token

  def annotator_for_token(self, token: str | None) -> dict[str, Any] | None:
    """``{"id", "name"}`` of the token's annotator, or None."""
    if not token or len(token) > 200:
      return None
    row = (
      self._conn()
      .execute("SELECT id, name FROM annotators WHERE token_hash = ?", (hash_token(token),))
      .fetchone()
    )
    return dict(row) if row else None

  def annotators(self) -> list[dict[str, Any]]:
    return [dict(r) for r in self._conn().execute("SELECT id, name FROM annotators ORDER BY id")]

  # -------------------------------------------------------------------- pairs

  def add_pairs(self, items: Sequence[Mapping[str, Any]], source: str = "store") -> int:
    """Adds pairs ``{id, prompt, response_a, response_b, metadata?}``; ids already stored are
    skipped. Returns how many were new."""
    rows = []
    for it in items:
      for key in ("id", "prompt", "response_a", "response_b"):
        if not isinstance(it.get(key), str):
          raise StoreError(f"pair {it.get('id')!r}: field {key!r} must be a string")
      rows.append(
        (
          it["id"],
          it["prompt"],
          it["response_a"],
          it["response_b"],
          json.dumps(dict(it.get("metadata") or {})),
          source,
          float(it.get("created") or time.time()),
        )
      )
    with self.transaction() as db:
      before = db.total_changes
      db.executemany(
        "INSERT OR IGNORE INTO pairs (id, prompt, response_a, response_b, metadata, source, "
        "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
      )
      return db.total_changes - before

  def pair(self, pair_id: str) -> dict[str, Any]:
    row = self._conn().execute("SELECT * FROM pairs WHERE id = ?", (pair_id,)).fetchone()
    if row is None:
      raise NotFound(f"no pair {pair_id!r}")
    out = dict(row)
    out["metadata"] = json.loads(out["metadata"])
    return out

  def next_pair(self, annotator_id: int, now: float | None = None) -> dict[str, Any] | None:
    """The pair to show ``annotator_id`` next, with its display order, or None when none is
    left for them now: their own unfinished assignment first, else the pair with the fewest
    labels + live assignments (oldest first) among those they have not labelled or skipped
    whose labels + live assignments are under K; the choice and a random left/right order are
    recorded in one transaction. An assignment is live for :data:`ASSIGNMENT_TTL_S` seconds
    after it was last shown, so K annotators working at once never get more than K labels on a
    pair, and a pair someone walked away from is handed out again later."""
    now = time.time() if now is None else now
    k = self.labels_per_pair
    with self.transaction() as db:
      mine = db.execute(
        """SELECT s.pair_id, s.a_left FROM assignments s
           WHERE s.annotator_id = ?1
             AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id
                             AND l.annotator_id = ?1)
             AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.pair_id = s.pair_id
                             AND k.annotator_id = ?1)
             AND (SELECT count(*) FROM labels l WHERE l.pair_id = s.pair_id) < ?2
           ORDER BY s.shown_at LIMIT 1""",
        (annotator_id, k),
      ).fetchone()
      if mine is not None:
        db.execute(
          "UPDATE assignments SET shown_at = ? WHERE pair_id = ? AND annotator_id = ?",
          (now, mine["pair_id"], annotator_id),
        )
        pair_id, a_left = mine["pair_id"], mine["a_left"]
      else:
        row = db.execute(
          """SELECT id FROM (
               SELECT p.id, p.seq,
                 (SELECT count(*) FROM labels l WHERE l.pair_id = p.id) AS n_labels,
                 (SELECT count(*) FROM assignments s WHERE s.pair_id = p.id
                    AND s.annotator_id != ?1 AND s.shown_at > ?3
                    AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id
                                    AND l.annotator_id = s.annotator_id)
                    AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.pair_id = p.id
                                    AND k.annotator_id = s.annotator_id)) AS n_held
               FROM pairs p
               WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id
                                 AND l.annotator_id = ?1)
                 AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.pair_id = p.id
                                 AND k.annotator_id = ?1))
             WHERE n_labels + n_held < ?2
             ORDER BY n_labels + n_held, seq
             LIMIT 1""",
          (annotator_id, k, now - ASSIGNMENT_TTL_S),
        ).fetchone()
        if row is None:
          return None
        pair_id, a_left = row["id"], int(self._rng.random() < 0.5)
        db.execute(
          "INSERT OR REPLACE INTO assignments (pair_id, annotator_id, a_left, shown_at) "
          "VALUES (?, ?, ?, ?)",
          (pair_id, annotator_id, a_left, now),
        )
    out = self.pair(pair_id)
    out["a_left"] = bool(a_left)
    return out

  # -------------------------------------------------------------------- labels

  def submit(
    self,
    annotator_id: int,
    pair_id: str,
    choice: str,
    comment: str = "",
    replace: bool = False,
  ) -> dict[str, Any]:
    """Stores an annotator's choice for a pair shown to them.

    Args:
      choice: "left", "right" or "tie" — what they clicked; turned into the label "a" / "b" /
        "tie" with the order the pair was shown in (recorded by :meth:`next_pair`).
      replace: replace an earlier label of theirs for this pair (else that is a Conflict).
    Returns:
      ``{"pair_id", "label", "a_left", "replaced"}``.
    """
    if choice not in ("left", "right", "tie"):
      raise StoreError(f"choice must be 'left', 'right' or 'tie', got {choice!r}")
    now = time.time()
    with self.transaction() as db:
      if db.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
        raise NotFound(f"no pair {pair_id!r}")
      old = db.execute(
        "SELECT label, a_left FROM labels WHERE pair_id = ? AND annotator_id = ?",
        (pair_id, annotator_id),
      ).fetchone()
      if old is not None and not replace:
        raise Conflict(
          f'you already labelled pair {pair_id!r} ({old["label"]!r}); send "replace": true '
          "to replace that label"
        )
      shown = db.execute(
        "SELECT a_left FROM assignments WHERE pair_id = ? AND annotator_id = ?",
        (pair_id, annotator_id),
      ).fetchone()
      if shown is None:
        raise Conflict(f"pair {pair_id!r} was not shown to you (GET /api/next first)")
      a_left = int(shown["a_left"])
      label = "tie" if choice == "tie" else ("a" if (choice == "left") == bool(a_left) else "b")
      if old is None:
        db.execute(
          "INSERT INTO labels (pair_id, annotator_id, label, a_left, comment, created) "
          "VALUES (?, ?, ?, ?, ?, ?)",
          (pair_id, annotator_id, label, a_left, comment, now),
        )
      else:
        db.execute(
          "UPDATE labels SET label = ?, a_left = ?, comment = ?, updated = ? "
          "WHERE pair_id = ? AND annotator_id = ?",
          (label, a_left, comment, now, pair_id, annotator_id),
        )
      db.execute(
        "DELETE FROM skips WHERE pair_id = ? AND annotator_id = ?", (pair_id, annotator_id)
      )
    return {"pair_id": pair_id, "label": label, "a_left": bool(a_left), "replaced": old is not None}

  def skip(self, annotator_id: int, pair_id: str) -> None:
    with self.transaction() as db:
      if db.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
        raise NotFound(f"no pair {pair_id!r}")
      db.execute(
        "INSERT OR IGNORE INTO skips (pair_id, annotator_id, created) VALUES (?, ?, ?)",
        (pair_id, annotator_id, time.time()),
      )

  def labels(self) -> list[dict[str, Any]]:
    """Every label: ``{pair_id, annotator, label, a_left, comment, created, updated}``, in
    the order they were first given."""
    rows = self._conn().execute(
      """SELECT l.pair_id, a.name AS annotator, l.label, l.a_left, l.comment, l.created,
                l.updated
         FROM labels l JOIN annotators a ON a.id = l.annotator_id ORDER BY l.id"""
    )
    return [dict(r) for r in rows]

  def progress(self, annotator_id: int) -> dict[str, int]:
    """``{"total", "complete", "mine", "left_for_me"}``: pairs, pairs with K labels, this
    annotator's labels, pairs they could still label."""
    db, k = self._conn(), self.labels_per_pair
    total = db.execute("SELECT count(*) FROM pairs").fetchone()[0]
    complete = db.execute(
      "SELECT count(*) FROM (SELECT pair_id FROM labels GROUP BY pair_id HAVING count(*) >= ?)",
      (k,),
    ).fetchone()[0]
    mine = db.execute(
      "SELECT count(*) FROM labels WHERE annotator_id = ?", (annotator_id,)
    ).fetchone()[0]
    left = db.execute(
      """SELECT count(*) FROM pairs p
         WHERE (SELECT count(*) FROM labels l WHERE l.pair_id = p.id) < ?2
           AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.annotator_id = ?1)
           AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.pair_id = p.id AND k.annotator_id = ?1)""",
      (annotator_id, k),
    ).fetchone()[0]
    return {"total": total, "complete": complete, "mine": mine, "left_for_me": left}

  # -------------------------------------------------------------------- merged labels

  def merged(self, min_labels: int | None = None, source: str | None = None) -> list[dict]:
    """Pairs with at least ``min_labels`` (default K) labels, each with its majority label:
    ``{pair fields..., "label", "votes": {annotator: label}, "annotators"}``, oldest first."""
    min_labels = self.labels_per_pair if min_labels is None else min_labels
    votes: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for r in self.labels():
      votes[r["pair_id"]][r["annotator"]] = r["label"]
    db = self._conn()
    query = "SELECT * FROM pairs" + (" WHERE source = ?" if source else "") + " ORDER BY seq"
    out = []
    for row in db.execute(query, (source,) if source else ()):
      v = votes.get(row["id"], {})
      if len(v) < max(min_labels, 1):
        continue
      item = dict(row)
      item["metadata"] = json.loads(item["metadata"])
      item.update(label=majority_label(list(v.values())), votes=v, annotators=sorted(v))
      out.append(item)
    return out

  def mark_written_back(self, pair_ids: Sequence[str]) -> None:
    with self.transaction() as db:
      db.executemany("UPDATE pairs SET written_back = 1 WHERE id = ?", [(i,) for i in pair_ids])

  # -------------------------------------------------------------------- demo: reward model

  def rm_scores(self, pair_id: str) -> tuple[float, float] | None:
    row = (
      self._conn()
      .execute("SELECT score_a, score_b FROM rm_scores WHERE pair_id = ?", (pair_id,))
      .fetchone()
    )
    return (row["score_a"], row["score_b"]) if row else None

  def set_rm_scores(self, pair_id: str, score_a: float, score_b: float) -> None:
    with self.transaction() as db:
      db.execute(
        "INSERT OR REPLACE INTO rm_scores (pair_id, score_a, score_b) VALUES (?, ?, ?)",
        (pair_id, float(score_a), float(score_b)),
      )

  def rm_agreement(self, annotator_id: int, tie_margin: float = 0.0) -> dict[str, Any]:
    """How often this annotator's labels match the reward model's preference (the side with
    the higher score; a tie when the scores differ by at most ``tie_margin``), over their
    labelled pairs that have scores: ``{"n", "agree", "rate"}``."""
    rows = self._conn().execute(
      """SELECT l.label, r.score_a, r.score_b FROM labels l
         JOIN rm_scores r ON r.pair_id = l.pair_id WHERE l.annotator_id = ?""",
      (annotator_id,),
    )
    n = agree = 0
    for r in rows:
      n += 1
      agree += r["label"] == rm_label(r["score_a"], r["score_b"], tie_margin)
    return {"n": n, "agree": agree, "rate": (agree / n) if n else None}

  def integrity_check(self) -> str:
    return self._conn().execute("PRAGMA integrity_check").fetchone()[0]


def rm_label(score_a: float, score_b: float, tie_margin: float = 0.0) -> str:
  """The reward model's verdict on a pair from its two scores."""
  if abs(score_a - score_b) <= tie_margin:
    return "tie"
  return "a" if score_a > score_b else "b"
