"""``python -m rlhf_jax.annotate COMMAND`` (also ``rlhf-jax annotate COMMAND``).

Commands:

* ``serve --db FILE [--queue DIR] [--labels-per-pair K] [--demo --reward-model DIR]
  [--host H --port P]`` — the web app (uvicorn, one process).
* ``add-annotator --db FILE NAME`` — creates an annotator and prints their token (once).
* ``add-pairs --db FILE PAIRS.jsonl`` — adds pairs ``{prompt, response_a, response_b, id?,
  metadata?}`` that are not from a queue.
* ``import-queue --db FILE --queue DIR`` — imports the queue's pending pairs and writes back
  merged labels now (the server does this every few seconds by itself).
* ``export --db FILE --out FILE.jsonl [--per-label] [--min-labels N]`` — preference JSONL as the
  reward trainer reads (:func:`rlhf_jax.data.write_preferences_jsonl`): one record per pair with
  its majority label, or one per label.
* ``report --db FILE [--json]`` — inter-annotator agreement.

Exit status 2 on a user error (one message, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import uuid
from collections.abc import Sequence

__all__ = ["main", "export_records", "load_reward_scorer"]


def export_records(store, *, per_label: bool = False, min_labels: int | None = None):
  """The store's labels as PreferenceRecords: one per pair with at least ``min_labels``
  (default K) labels, labelled with the majority (metadata: the pair's, plus ``source``
  "human", ``annotator`` the names joined by "+", ``votes``, ``item_id``); or, with
  ``per_label``, one per label (``annotator``, ``shown_a_left``, ``comment``)."""
  from rlhf_jax.data import PreferenceRecord

  if per_label:
    out = []
    for r in store.labels():
      p = store.pair(r["pair_id"])
      meta = {
        **p["metadata"],
        "source": "human",
        "annotator": r["annotator"],
        "item_id": p["id"],
        "shown_a_left": bool(r["a_left"]),
        "comment": r["comment"],
      }
      out.append(PreferenceRecord(p["prompt"], p["response_a"], p["response_b"], r["label"], meta))
    return out
  return [
    PreferenceRecord(
      p["prompt"],
      p["response_a"],
      p["response_b"],
      p["label"],
      {
        **p["metadata"],
        "source": "human",
        "annotator": "+".join(p["annotators"]),
        "votes": p["votes"],
        "item_id": p["id"],
      },
    )
    for p in store.merged(min_labels=min_labels)
  ]


def load_reward_scorer(path: str, prompt_len: int = 64, response_len: int = 64):
  """A demo-mode scorer from a reward-model directory (``save_pretrained`` output with a scalar
  head and its tokenizer, e.g. the reward trainer's ``workdir/model`` or a pipeline round's
  reward model): ``(prompts, responses) -> scores``, tokenised as the reward trainer does
  (prompt left-padded to ``prompt_len``, response + EOS right-padded to ``response_len``).
  Imports JAX only when called."""
  import jax
  import numpy as np

  from rlhf_jax import data as data_lib
  from rlhf_jax.models import hf
  from rlhf_jax.reward import score_sequences

  model, params = hf.from_pretrained(path)
  if model.cfg.head != "scalar":
    raise ValueError(f"--reward-model={path}: a {model.cfg.head!r}-head model, not a reward model")
  tokenizer = hf.load_tokenizer(path)
  score = jax.jit(lambda p, ids, mask: score_sequences(model, p, ids, mask))

  def scorer(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    p_ids, p_mask = data_lib.encode_prompts(tokenizer, list(prompts), prompt_len)
    r_ids, r_mask = data_lib.encode_texts(tokenizer, list(responses), response_len)
    ids = np.concatenate([p_ids, r_ids], 1)
    mask = np.concatenate([p_mask, r_mask], 1)
    return [float(x) for x in np.asarray(score(params, ids, mask))]

  return scorer


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
    prog="python -m rlhf_jax.annotate", description=__doc__.split("\n")[0]
  )
  sub = ap.add_subparsers(dest="command", required=True)

  def cmd(name, help_):
    p = sub.add_parser(name, help=help_)
    p.add_argument("--db", required=True, help="the SQLite store (created if missing)")
    p.add_argument(
      "--labels-per-pair", type=int, default=1, help="annotators per pair, K (default 1)"
    )
    return p

  s = cmd("serve", "serve the annotation page")
  s.add_argument("--queue", help="a rlhf_jax.feedback.human queue dir to serve and write back to")
  s.add_argument("--host", default="127.0.0.1")
  s.add_argument("--port", type=int, default=8000)
  s.add_argument("--demo", action="store_true", help="show the reward model's scores")
  s.add_argument("--reward-model", help="demo: a reward-model directory (scalar head)")
  s.add_argument("--rm-prompt-len", type=int, default=64)
  s.add_argument("--rm-response-len", type=int, default=64)
  s.add_argument("--rm-tie-margin", type=float, default=0.0)
  s.add_argument("--sync-s", type=float, default=2.0, help="queue sync period in seconds")
  s.add_argument("--max-body", type=int, default=64 * 1024, help="request body limit, bytes")
  s.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
  s.add_argument("--secure-cookie", action="store_true", help="serving over HTTPS")
  s.add_argument("--log-level", default="warning")

  a = cmd("add-annotator", "create an annotator; prints their token")
  a.add_argument("name")
  p = cmd("add-pairs", "add pairs from a JSONL file")
  p.add_argument("jsonl")
  q = cmd("import-queue", "import pending pairs from a queue dir and write labels back")
  q.add_argument("--queue", required=True)
  e = cmd("export", "write preference JSONL for the reward trainer")
  e.add_argument("--out", required=True)
  e.add_argument("--per-label", action="store_true", help="one record per label")
  e.add_argument("--min-labels", type=int, help="pairs with at least this many labels (default K)")
  r = cmd("report", "inter-annotator agreement")
  r.add_argument("--json", action="store_true")
  return ap


def _read_pairs(path: str) -> list[dict]:
  from rlhf_jax.data import check_metadata, read_jsonl

  items = []
  for loc, row in read_jsonl(path):
    if not isinstance(row, dict):
      raise ValueError(f"{loc}: expected an object")
    for key in ("prompt", "response_a", "response_b"):
      if not isinstance(row.get(key), str):
        raise ValueError(f"{loc}: field {key!r}: expected a string")
    meta = row.get("metadata") or {}
    check_metadata(meta, loc)
    items.append({**row, "id": str(row.get("id") or uuid.uuid4().hex), "metadata": meta})
  return items


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from rlhf_jax.annotate.store import Store

  try:
    if args.labels_per_pair < 1:
      raise ValueError(f"--labels-per-pair must be >= 1, got {args.labels_per_pair}")
    if args.command == "serve":
      return _serve(args)
    store = Store(args.db, labels_per_pair=args.labels_per_pair)
    if args.command == "add-annotator":
      print(store.add_annotator(args.name))
    elif args.command == "add-pairs":
      n = store.add_pairs(_read_pairs(args.jsonl))
      print(f"{n} new pairs in {args.db}")
    elif args.command == "import-queue":
      from rlhf_jax.annotate.queue_sync import sync

      new, written = sync(store, args.queue)
      print(f"{new} new pairs from {args.queue}; {written} merged labels written back")
    elif args.command == "export":
      from rlhf_jax.data import write_preferences_jsonl

      records = export_records(store, per_label=args.per_label, min_labels=args.min_labels)
      write_preferences_jsonl(records, args.out)
      print(f"{len(records)} records -> {args.out}")
    elif args.command == "report":
      from rlhf_jax.annotate.report import agreement_report, format_report

      rep = agreement_report(store.labels())
      print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0
  except (ValueError, OSError) as e:
    sys.stderr.write(f"error: {e}\n")
    return 2


def _serve(args) -> int:
  import uvicorn

  from rlhf_jax.annotate.app import create_app
  from rlhf_jax.annotate.store import Store

  if args.demo and not args.reward_model:
    raise ValueError("--demo needs --reward-model DIR (a reward model with its tokenizer)")
  if args.queue and not pathlib.Path(args.queue).is_dir():
    pathlib.Path(args.queue).mkdir(parents=True)
  logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
  store = Store(args.db, labels_per_pair=args.labels_per_pair, synchronous=args.synchronous)
  rm_score = None
  if args.demo:
    rm_score = load_reward_scorer(args.reward_model, args.rm_prompt_len, args.rm_response_len)
  app = create_app(
    store,
    queue_dir=args.queue,
    sync_every_s=args.sync_s,
    rm_score=rm_score,
    rm_tie_margin=args.rm_tie_margin,
    max_body=args.max_body,
    secure_cookie=args.secure_cookie,
  )
  print(f"serving http://{args.host}:{args.port}/ (store {args.db})", flush=True)
  uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
  return 0
