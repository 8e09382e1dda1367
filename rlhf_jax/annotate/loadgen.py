"""Drive a running annotation server with simulated annotators (the load and crash tests and
``bench/annotate_load.py`` use this; stdlib only).

Each simulated annotator holds one keep-alive HTTP connection and loops ``GET /api/next`` →
``POST /api/label`` until no pair is left for it (or it is told to stop), recording every label
the server acknowledged (HTTP 2xx) and each label request's latency.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence

__all__ = ["Ack", "LoadResult", "free_port", "start_server", "wait_healthy", "run_annotators"]


@dataclasses.dataclass(frozen=True)
class Ack:
  """A label the server acknowledged."""

  annotator: str
  pair_id: str
  label: str


@dataclasses.dataclass
class LoadResult:
  acks: list[Ack]
  latencies_s: list[float]  # of the POST /api/label requests that were acknowledged
  errors: list[str]
  wall_s: float

  @property
  def labels_per_s(self) -> float:
    return len(self.acks) / self.wall_s if self.wall_s > 0 else 0.0

  def percentile_ms(self, q: float) -> float:
    if not self.latencies_s:
      return float("nan")
    xs = sorted(self.latencies_s)
    return 1000.0 * xs[min(len(xs) - 1, int(q / 100.0 * len(xs)))]

  def summary(self) -> dict:
    return {
      "labels": len(self.acks),
      "wall_s": round(self.wall_s, 3),
      "labels_per_s": round(self.labels_per_s, 1),
      "p50_ms": round(self.percentile_ms(50), 2),
      "p95_ms": round(self.percentile_ms(95), 2),
      "p99_ms": round(self.percentile_ms(99), 2),
      "errors": len(self.errors),
    }


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(
  db: str | os.PathLike[str],
  port: int,
  *extra_args: str,
  labels_per_pair: int = 1,
  log_file=None,
) -> subprocess.Popen:
  """``python -m rlhf_jax.annotate serve`` on 127.0.0.1:``port`` as a child process (this
  interpreter, this package on its path); wait with :func:`wait_healthy`."""
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [
    sys.executable,
    "-m",
    "rlhf_jax.annotate",
    "serve",
    "--db",
    os.fspath(db),
    "--port",
    str(port),
    "--labels-per-pair",
    str(labels_per_pair),
    *extra_args,
  ]
  return subprocess.Popen(
    cmd, env=env, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT
  )


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
  """Polls ``url/healthz`` until it answers 200; raises if the process exits or time runs out."""
  parts = urllib.parse.urlsplit(url)
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc is not None and proc.poll() is not None:
      raise RuntimeError(f"the server exited with status {proc.returncode} before answering")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
      conn.request("GET", "/healthz")
      healthy = conn.getresponse().status == 200
    except OSError:  # not listening yet (connection refused / reset): poll again
      healthy = False
    finally:
      conn.close()
    if healthy:
      return
    time.sleep(0.1)
  raise TimeoutError(f"{url}/healthz did not answer within {timeout_s} s")


def _annotate(
  url: str,
  name: str,
  token: str,
  out: LoadResult,
  lock: threading.Lock,
  stop: threading.Event,
  rng: random.Random,
  max_labels: int | None,
) -> None:
  parts = urllib.parse.urlsplit(url)
  conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
  headers = {"Authorization": f"Bearer {token}"}
  done = 0
  try:
    while not stop.is_set() and (max_labels is None or done < max_labels):
      conn.request("GET", "/api/next", headers=headers)
      resp = conn.getresponse()
      body = resp.read()
      if resp.status != 200:
        raise RuntimeError(f"GET /api/next: {resp.status} {body[:200]!r}")
      pair = json.loads(body)["pair"]
      if pair is None:
        return
      choice = rng.choice(("left", "right", "tie"))
      payload = json.dumps({"pair_id": pair["id"], "choice": choice}).encode()
      t0 = time.perf_counter()
      conn.request(
        "POST", "/api/label", body=payload, headers={**headers, "Content-Type": "application/json"}
      )
      resp = conn.getresponse()
      body = resp.read()
      dt = time.perf_counter() - t0
      if not 200 <= resp.status < 300:
        raise RuntimeError(f"POST /api/label: {resp.status} {body[:200]!r}")
      label = json.loads(body)["label"]
      with lock:
        out.acks.append(Ack(name, pair["id"], label))
        out.latencies_s.append(dt)
      done += 1
  except Exception as e:  # noqa: BLE001 - the crash test expects connection errors
    with lock:
      out.errors.append(f"{name}: {type(e).__name__}: {e}")
  finally:
    conn.close()


def run_annotators(
  url: str,
  tokens: dict[str, str] | Sequence[tuple[str, str]],
  *,
  stop: threading.Event | None = None,
  seed: int = 0,
  max_labels_each: int | None = None,
) -> LoadResult:
  """Runs one thread per annotator (``{name: token}``) until none has a pair left (or ``stop``
  is set); returns what the server acknowledged."""
  items = list(tokens.items()) if isinstance(tokens, dict) else list(tokens)
  out = LoadResult([], [], [], 0.0)
  lock, stop = threading.Lock(), stop or threading.Event()
  threads = [
    threading.Thread(
      target=_annotate,
      args=(url, name, tok, out, lock, stop, random.Random(seed * 1000 + i), max_labels_each),
      daemon=True,
    )
    for i, (name, tok) in enumerate(items)
  ]
  t0 = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  out.wall_s = time.perf_counter() - t0
  return out
