"""Observability for the training loops: JSONL + TensorBoard metrics, text samples, progress.

Device values are never fetched here behind the caller's back. The loop keeps metrics on
device and, on logging steps only, fetches the whole tree once::

    if step % log_every == 0:
      writer.write(step, fetch(metrics))      # one jax.device_get for all metrics

Only process 0 writes files; on other processes every writer method is a no-op, so the loop
needs no ``if process_index == 0`` branches.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import jax
import numpy as np

__all__ = [
  "MetricWriter",
  "fetch",
  "read_metrics",
  "truncate_metrics",
  "markdown_table",
  "progress",
  "Progress",
]

_log = logging.getLogger(__name__)


def _to_python(x: Any) -> Any:
  """numpy / jax scalar (or 0-d array) -> ``int`` / ``float``; other values unchanged."""
  if isinstance(x, (bool, np.bool_)):
    return int(x)
  if isinstance(x, (int, float)):
    return x
  if isinstance(x, (np.ndarray, np.generic, jax.Array)) and np.ndim(x) == 0:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
      return int(x)
    if np.issubdtype(x.dtype, np.floating):
      return float(x)
  return x


def fetch(metrics_tree: Any) -> Any:
  """One ``jax.device_get`` of a metrics pytree; scalars become Python ``float`` / ``int``.

  Floating scalars -> ``float``, integer / bool scalars -> ``int``; arrays with ``ndim > 0``
  stay numpy arrays. Call this on logging steps only: it waits for the device.
  """
  return jax.tree.map(_to_python, jax.device_get(metrics_tree))


def _scalar(key: str, value: Any) -> Union[int, float]:
  value = _to_python(value)
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return value
  shape = getattr(value, "shape", None)
  raise TypeError(
    f"metric {key!r}: expected a scalar, got {type(value).__name__}"
    + (f" of shape {shape}" if shape is not None else "")
  )


def _json_value(x: Any) -> Any:
  """Strict JSON: non-finite floats become ``None`` (``null``)."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def truncate_metrics(
  workdir: Union[str, os.PathLike], step: int, drop: Optional[Callable[[dict], bool]] = None
) -> int:
  """Drops the records of ``workdir/metrics.jsonl`` past ``step`` (and those ``drop`` picks).

  A run resumed from a checkpoint of ``step`` calls this first, so the steps a killed attempt
  logged after its last checkpoint are not kept twice. The file is rewritten atomically; a
  torn last line (killed mid-write) is dropped too. Returns the number of records removed.
  """
  path = os.path.join(os.fspath(workdir), "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  kept, removed = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        removed += 1
        continue
      if record.get("step", 0) > step or (drop is not None and drop(record)):
        removed += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if removed:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return removed


class MetricWriter:
  """Writes scalar metrics to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tb``).

  Each :meth:`write` appends one line ``{"step": step, "name": value, ...}`` (flushed at
  once, so a crashed run keeps every line written); the lines are strict JSON (NaN and
  infinities are written as ``null``). A run resumed from the checkpoint of step ``k`` passes
  ``resume_step=k``: records (and TensorBoard events) past ``k`` from the killed attempt are
  dropped, so every step appears once. Text (sample tables, generations) goes to TensorBoard
  and ``workdir/text.jsonl``.

  Args:
    workdir: run directory (created if missing).
    process_index: the caller's process; defaults to ``jax.process_index()``. Only process 0
      writes.
    tensorboard: also write TensorBoard event files.
    resume_step: the step the run resumes from (``None``: a fresh run, or appending).
  """

  def __init__(
    self,
    workdir: Union[str, os.PathLike],
    *,
    process_index: Optional[int] = None,
    tensorboard: bool = True,
    resume_step: Optional[int] = None,
  ):
    self.workdir = os.fspath(workdir)
    self.process_index = jax.process_index() if process_index is None else process_index
    self.active = self.process_index == 0
    self._jsonl = None
    self._text = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if resume_step is not None:
      truncate_metrics(self.workdir, resume_step)
    self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter

      kwargs = {} if resume_step is None else {"purge_step": int(resume_step) + 1}
      self._tb = SummaryWriter(os.path.join(self.workdir, "tb"), **kwargs)

  @property
  def path(self) -> str:
    """``workdir/metrics.jsonl``."""
    return os.path.join(self.workdir, "metrics.jsonl")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one record for ``step``.

    Args:
      step: training step (int).
      metrics: flat ``{name: scalar}`` of host values (Python / numpy scalars, or jax scalars
        already fetched with :func:`fetch`). Names may contain ``/`` (TensorBoard groups).
    Raises:
      TypeError: a value is not a scalar (names the metric).
    """
    if not self.active:
      return
    step = int(step)
    record = {"step": step}
    for key, value in metrics.items():
      if key == "step":
        raise ValueError("metric name 'step' is reserved for the step number")
      record[str(key)] = _scalar(str(key), value)
    self._jsonl.write(
      json.dumps({k: _json_value(v) for k, v in record.items()}, allow_nan=False) + "\n"
    )
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step":
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Records a text blob (e.g. a markdown table of samples, see :func:`markdown_table`)."""
    if not self.active:
      return
    if self._text is None:
      self._text = open(os.path.join(self.workdir, "text.jsonl"), "a", encoding="utf-8")
    self._text.write(json.dumps({"step": int(step), "tag": tag, "text": text}) + "\n")
    self._text.flush()
    if self._tb is not None:
      self._tb.add_text(tag, text, int(step))
      self._tb.flush()

  def close(self) -> None:
    for f in (self._jsonl, self._text):
      if f is not None:
        f.close()
    if self._tb is not None:
      self._tb.close()
    self._jsonl = self._text = self._tb = None
    self.active = False

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(path: Union[str, os.PathLike], last_per_step: bool = False) -> list[dict]:
  """Loads a ``metrics.jsonl`` (or a workdir containing one) as a list of dicts.

  Args:
    path: the JSONL file or the run's workdir.
    last_per_step: keep only the newest record of each step (after a resumed run re-logged
      steps), sorted by step.
  Raises:
    ValueError: a line is not valid JSON (names the file and line number).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e
  if last_per_step:
    by_step = {r["step"]: r for r in records}
    records = [by_step[s] for s in sorted(by_step)]
  return records


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A markdown table (TensorBoard renders it); ``|`` and newlines in cells are escaped."""

  def cell(x):
    return str(x).replace("|", "\\|").replace("\n", "<br>")

  lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- progress


def _fmt_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


_WAIT_BAR_S = 2.0  # a TTY bar waits for dispatched work at most this often


class Progress:
  """A tqdm bar plus plain log lines for non-TTY stderr; see :func:`progress`."""

  def __init__(
    self,
    iterable: Optional[Iterable],
    total: Optional[int],
    desc: str,
    unit: str,
    show_bar: bool,
    log_lines: bool,
    log_every_percent: float,
    log_every_seconds: float,
  ):
    from tqdm.auto import tqdm

    self._iterable = iterable
    self.total = total
    self.desc = desc
    self.unit = unit
    self.n = 0
    self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not show_bar, dynamic_ncols=True)
    self._log_lines = log_lines
    self._every_pct = log_every_percent
    self._every_s = log_every_seconds
    self._next_pct = log_every_percent
    self._start = time.monotonic()
    self._last_log = self._last_wait = self._start

  def _maybe_log(self) -> None:
    if not self._log_lines:
      return
    now = time.monotonic()
    elapsed = now - self._start
    rate = self.n / elapsed if elapsed > 0 else float("inf")
    if self.total:
      pct = 100.0 * self.n / self.total
      if pct + 1e-9 < self._next_pct:
        return
      while self._next_pct <= pct + 1e-9:
        self._next_pct += self._every_pct
      eta = (self.total - self.n) / rate if rate > 0 else float("inf")
      _log.info(
        "%s: %3.0f%% (%d/%d %s) %.2f %s/s, elapsed %s, ETA %s",
        self.desc,
        pct,
        self.n,
        self.total,
        self.unit,
        rate,
        self.unit,
        _fmt_seconds(elapsed),
        _fmt_seconds(eta),
      )
    else:
      if now - self._last_log < self._every_s:
        return
      _log.info(
        "%s: %d %s, %.2f %s/s, elapsed %s",
        self.desc,
        self.n,
        self.unit,
        rate,
        self.unit,
        _fmt_seconds(elapsed),
      )
    self._last_log = now

  def _due(self, n: int) -> bool:
    """Whether reaching ``n`` units shows something new: a log line, or a bar refresh (at
    most every ``_WAIT_BAR_S`` seconds)."""
    now = time.monotonic()
    if self._log_lines:
      if self.total:
        return 100.0 * n / self.total + 1e-9 >= self._next_pct
      return now - self._last_log >= self._every_s
    return not self._bar.disable and now - self._last_wait >= _WAIT_BAR_S

  def update(self, n: int = 1, wait: Optional[Callable[[], Any]] = None) -> None:
    """Advances by ``n`` units. ``wait`` (e.g. ``lambda: jax.block_until_ready(state)``) is
    called first whenever the advance is shown, so that work JAX dispatched asynchronously
    is counted when it is done, not when it was queued; it is not called otherwise, so the
    queue stays full between the (rare) lines."""
    if wait is not None and self._due(self.n + n):
      wait()
      self._last_wait = time.monotonic()
    self.n += n
    self._bar.update(n)
    self._maybe_log()

  def set_postfix(self, **kwargs) -> None:
    """Shows ``key=value`` pairs after the bar (e.g. host-side loss already fetched)."""
    self._bar.set_postfix(**kwargs)

  def __iter__(self) -> Iterator:
    if self._iterable is None:
      raise TypeError("progress(total) is not iterable; call .update(n)")
    try:
      for item in self._iterable:
        yield item
        self.update(1)
    finally:
      self.close()

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress(
  iterable_or_total: Union[Iterable, int],
  desc: str = "",
  unit: str = "it",
  disable: Optional[bool] = None,
  *,
  log_every_percent: float = 10.0,
  log_every_seconds: float = 60.0,
  process_index: Optional[int] = None,
) -> Progress:
  """Progress bar with rate and ETA for a long phase.

  ``for batch in progress(batches, "rollout", "batch"): ...`` or
  ``with progress(n_tokens, "generate", "tok") as p: p.update(k)``.

  Args:
    iterable_or_total: an iterable (its ``len`` is the total if it has one) or an int total.
    desc / unit: label and unit name shown in the bar and log lines.
    disable: ``None`` -> a bar only on process 0 with a TTY on stderr; ``True`` -> no bar and
      no log lines; ``False`` -> force the bar (process 0 only).
    log_every_percent: when stderr is not a TTY (CI, log files) and the bar is not shown,
      process 0 logs one plain line (``logging.INFO``) each time this many percent complete.
    log_every_seconds: log interval when the total is unknown.
    process_index: defaults to ``jax.process_index()``.
  """
  if isinstance(iterable_or_total, numbers.Integral):
    iterable, total = None, int(iterable_or_total)
  else:
    iterable = iterable_or_total
    try:
      total = len(iterable)  # type: ignore[arg-type]
    except TypeError:
      total = None
  process_index = jax.process_index() if process_index is None else process_index
  lead = process_index == 0
  tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
  if disable is None:
    show_bar = lead and tty
  else:
    show_bar = lead and not disable
  log_lines = lead and not tty and not show_bar and disable is not True
  return Progress(
    iterable, total, desc, unit, show_bar, log_lines, log_every_percent, log_every_seconds
  )
