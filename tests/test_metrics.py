"""MetricWriter (JSONL + TensorBoard), fetch, read_metrics, progress log lines."""

import json
import logging
import os
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.train import metrics as M


def test_fetch_returns_python_scalars():
  tree = {
    "loss": jnp.float32(0.5),
    "n": jnp.int32(3),
    "ok": jnp.bool_(True),
    "hist": jnp.arange(3.0),
    "nested": {"kl": jnp.array(1.25)},
  }
  out = M.fetch(tree)
  assert out["loss"] == 0.5 and type(out["loss"]) is float
  assert out["n"] == 3 and type(out["n"]) is int
  assert out["ok"] == 1 and type(out["ok"]) is int
  assert type(out["nested"]["kl"]) is float
  assert isinstance(out["hist"], np.ndarray)


def test_writer_jsonl_tensorboard_text_and_read_back(tmp_path):
  with M.MetricWriter(tmp_path, process_index=0) as w:
    w.write(1, {"loss": np.float32(2.5), "ppo/kl": 0.1, "tokens": np.int64(64)})
    w.write(2, M.fetch({"loss": jnp.float32(1.5), "ppo/kl": jnp.float32(0.2), "tokens": 64}))
    w.write_text(2, "samples", M.markdown_table(["prompt", "response"], [["a|b", "x\ny"]]))
    with pytest.raises(TypeError, match="metric 'vec': expected a scalar.*shape \\(2,\\)"):
      w.write(3, {"vec": np.zeros(2)})
  records = M.read_metrics(tmp_path)
  assert records == [
    {"step": 1, "loss": 2.5, "ppo/kl": pytest.approx(0.1), "tokens": 64},
    {"step": 2, "loss": 1.5, "ppo/kl": pytest.approx(0.2), "tokens": 64},
  ]
  assert type(records[0]["tokens"]) is int
  text = [json.loads(l) for l in open(tmp_path / "text.jsonl")]
  assert text[0]["tag"] == "samples" and "a\\|b" in text[0]["text"] and "x<br>y" in text[0]["text"]
  events = os.listdir(tmp_path / "tb")
  assert events and all(e.startswith("events.out.tfevents") for e in events)

  # TensorBoard scalars are in the event file (TFRecord framing: u64 length, u32 crc, data,
  # u32 crc), parsed with tensorboardX's own protos.
  from tensorboardX.proto import event_pb2

  data = open(tmp_path / "tb" / events[0], "rb").read()
  scalars, texts, pos = [], [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos : pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
    pos += 16 + n
    for v in event.summary.value:
      if v.HasField("simple_value"):
        scalars.append((event.step, v.tag, v.simple_value))
      else:
        texts.append((event.step, v.tag))
  assert [(s, v) for s, t, v in scalars if t == "loss"] == [(1, 2.5), (2, 1.5)]
  assert (1, "ppo/kl") in [(s, t) for s, t, _ in scalars]
  assert [s for s, t in texts if t.startswith("samples")] == [2]


def test_resumed_run_appends_and_last_per_step(tmp_path):
  with M.MetricWriter(tmp_path, process_index=0, tensorboard=False) as w:
    for step in (1, 2, 3):
      w.write(step, {"x": float(step)})
  with M.MetricWriter(tmp_path, process_index=0, tensorboard=False) as w:  # resume from 2
    for step in (3, 4):
      w.write(step, {"x": 10.0 * step})
  assert [r["step"] for r in M.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 3, 4]
  assert [r["x"] for r in M.read_metrics(tmp_path, last_per_step=True)] == [1.0, 2.0, 30.0, 40.0]
  (tmp_path / "metrics.jsonl").open("a").write("{broken\n")
  with pytest.raises(ValueError, match=r"metrics\.jsonl:6: invalid JSON"):
    M.read_metrics(tmp_path)


def test_non_zero_process_writes_nothing(tmp_path):
  with M.MetricWriter(tmp_path / "p1", process_index=1) as w:
    w.write(1, {"loss": 1.0})
    w.write_text(1, "t", "x")
  assert not (tmp_path / "p1").exists()


def test_progress_logs_every_n_percent_when_not_a_tty(caplog):
  # pytest captures stderr, so it is not a TTY: no bar, plain log lines every 25%.
  with caplog.at_level(logging.INFO, logger="rlhf_jax.train.metrics"):
    items = list(M.progress(range(8), "rollout", "batch", log_every_percent=25))
  assert items == list(range(8))
  lines = [r.getMessage() for r in caplog.records]
  assert [l.split("%")[0].split(":")[1].strip() for l in lines] == ["25", "50", "75", "100"]
  assert "rollout:" in lines[0] and "(2/8 batch)" in lines[0] and "ETA" in lines[0]

  caplog.clear()
  with caplog.at_level(logging.INFO, logger="rlhf_jax.train.metrics"):
    with M.progress(100, "tokens", "tok", log_every_percent=50) as p:
      for _ in range(4):
        p.update(25)
    list(M.progress(range(4), "quiet", disable=True))
    list(M.progress(range(4), "worker", process_index=1))
  assert len(caplog.records) == 2 and "(100/100 tok)" in caplog.records[-1].getMessage()


def test_progress_waits_for_dispatched_work_only_when_it_shows_a_line(caplog):
  """Asynchronous steps are counted when done: ``wait`` runs before each of the 4 lines (every
  25% of 8 steps) and at no other step, and a line's count includes the step waited for."""
  calls = []
  with caplog.at_level(logging.INFO, logger="rlhf_jax.train.metrics"):
    with M.progress(8, "reward model", "step", log_every_percent=25) as p:
      for i in range(8):
        p.update(1, wait=lambda i=i: calls.append(i + 1))
  assert calls == [2, 4, 6, 8]
  assert ["(2/8 step)" in r.getMessage() for r in caplog.records] == [True, False, False, False]

  # A bar without log lines (forced on a non-TTY) waits at most every _WAIT_BAR_S seconds.
  bar_calls = []
  t0 = time.monotonic()
  with M.progress(1000, "bar", "step", disable=False) as p:
    p._last_wait -= M._WAIT_BAR_S  # the interval has passed once
    for _ in range(1000):
      p.update(1, wait=lambda: bar_calls.append(1))
  assert 1 <= len(bar_calls) <= 1 + (time.monotonic() - t0) / M._WAIT_BAR_S


def test_progress_forced_bar_on_non_tty(capsys):
  list(M.progress(range(3), "forced", "it", disable=False))
  assert "forced" in capsys.readouterr().err


def test_non_finite_metrics_are_strict_json_nulls(tmp_path):
  with M.MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(1, {"loss": float("nan"), "kl": float("inf"), "ok": 1.5})
  line = (tmp_path / "metrics.jsonl").read_text().strip()
  assert line == '{"step": 1, "loss": null, "kl": null, "ok": 1.5}'
  json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_resume_drops_rows_past_the_restored_step(tmp_path):
  """A killed attempt logged steps 1..14 after its checkpoint at 10: the resumed run keeps
  1..10 once, so the curve reads 1..30 with no step twice."""
  with M.MetricWriter(tmp_path, tensorboard=False) as w:
    for step in range(1, 15):
      w.write(step, {"x": float(step)})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 15, "x": ')  # torn last line of the killed process
  with M.MetricWriter(tmp_path, tensorboard=True, resume_step=10) as w:
    for step in range(11, 31):
      w.write(step, {"x": float(step)})
  steps = [r["step"] for r in M.read_metrics(tmp_path)]
  assert steps == list(range(1, 31))
  assert M.truncate_metrics(tmp_path, 30, drop=lambda r: r["step"] % 2 == 0) == 15
  assert [r["step"] for r in M.read_metrics(tmp_path)] == list(range(1, 31, 2))
