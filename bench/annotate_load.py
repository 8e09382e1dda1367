"""Load benchmark of the annotation server (rlhf_jax.annotate): N simulated annotators on
127.0.0.1 label every pair of a fresh store through the real HTTP server (uvicorn, one
process), then the store is checked: every acknowledged label present once, none extra.

  python bench/annotate_load.py [--annotators 20] [--pairs 1000] [--labels-per-pair 1]
      [--synchronous FULL] [--out bench/results/annotate_load.jsonl]

Prints one JSON line (labels/s, p50/p95/p99 latency of POST /api/label) and appends it to
--out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rlhf_jax.annotate import loadgen  # noqa: E402
from rlhf_jax.annotate.store import Store  # noqa: E402


def run(annotators: int, pairs: int, labels_per_pair: int, synchronous: str, workdir: str) -> dict:
  db = os.path.join(workdir, "load.sqlite")
  store = Store(db, labels_per_pair=labels_per_pair)
  store.add_pairs(
    [
      {
        "id": f"pair{i:05d}",
        "prompt": f"prompt {i}",
        "response_a": "x" * 200,
        "response_b": "y" * 200,
      }
      for i in range(pairs)
    ]
  )
  tokens = {f"ann{j:02d}": store.add_annotator(f"ann{j:02d}") for j in range(annotators)}
  store.close()
  port = loadgen.free_port()
  proc = loadgen.start_server(
    db, port, "--synchronous", synchronous, labels_per_pair=labels_per_pair
  )
  url = f"http://127.0.0.1:{port}"
  try:
    loadgen.wait_healthy(url, proc)
    result = loadgen.run_annotators(url, tokens)
  finally:
    proc.terminate()
    proc.wait(30)
  stored = Store(db, labels_per_pair=labels_per_pair).labels()
  acked = sorted((a.annotator, a.pair_id, a.label) for a in result.acks)
  in_db = sorted((r["annotator"], r["pair_id"], r["label"]) for r in stored)
  return {
    **result.summary(),
    "expected_labels": pairs * labels_per_pair,
    "stored_labels": len(stored),
    "lost": len(set(acked) - set(in_db)),
    "unacknowledged_in_store": len(set(in_db) - set(acked)),
    "duplicate_pair_annotator": len(in_db) - len({(a, p) for a, p, _ in in_db}),
    "annotators": annotators,
    "pairs": pairs,
    "labels_per_pair": labels_per_pair,
    "synchronous": synchronous,
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--annotators", type=int, default=20)
  ap.add_argument("--pairs", type=int, default=1000)
  ap.add_argument("--labels-per-pair", type=int, default=1)
  ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
  ap.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "annotate_load.jsonl"
    ),
  )
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    rec = run(args.annotators, args.pairs, args.labels_per_pair, args.synchronous, tmp)
  rec.update(
    bench="annotate_load",
    time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    host=platform.node(),
    cpus=os.cpu_count(),
    python=platform.python_version(),
  )
  print(json.dumps(rec))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "a") as f:
    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
  main()
