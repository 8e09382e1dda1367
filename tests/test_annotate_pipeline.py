"""The pipeline's human feedback hook: feedback.human_fraction sends part of a round's pairs
to the annotation queue and labels the rest with feedback.human_mix_source."""

import dataclasses
import threading

import pytest

from rlhf_jax.feedback import human
from rlhf_jax.train import pipeline


def test_mixed_human_and_simulated_labels(tmp_path):
  queue = tmp_path / "queue"
  spec = pipeline.FeedbackSpec(
    source="human", human_fraction=0.5, human_queue_dir=str(queue), human_timeout_s=60
  )
  stop = threading.Event()

  def person():  # labels whatever reaches the queue, "b" every time
    while not stop.is_set():
      for item in human.pending(queue) if queue.exists() else []:
        human.submit_label(queue, item["id"], "b", "person")
      stop.wait(0.02)

  worker = threading.Thread(target=person)
  worker.start()
  prompts = [f"Tell me about day {i}." for i in range(6)]
  good = ["What a wonderful, happy day!"] * 6
  bad = ["This is a terrible, awful day."] * 6
  try:
    recs = pipeline.label_pairs(spec, tmp_path, 1, 0, prompts, good, bad)
  finally:
    stop.set()
    worker.join()
  assert [r.prompt for r in recs] == prompts  # input order kept
  people = [r for r in recs if r.metadata["source"] == "human"]
  machine = [r for r in recs if r.metadata["source"] != "human"]
  assert len(people) == 3 and len(machine) == 3
  assert all(r.label == "b" for r in people) and all(r.label == "a" for r in machine)
  assert {r.prompt for r in people} == {it["prompt"] for it in human.labelled(queue)}


def test_mix_source_is_checked():
  cfg = pipeline.Config()
  bad = dataclasses.replace(
    cfg,
    feedback=dataclasses.replace(
      cfg.feedback, source="human", human_fraction=0.5, human_mix_source="human"
    ),
  )
  with pytest.raises(ValueError, match="human_mix_source='human'"):
    pipeline.check_config(bad)
  out_of_range = dataclasses.replace(
    cfg, feedback=dataclasses.replace(cfg.feedback, source="human", human_fraction=1.5)
  )
  with pytest.raises(ValueError, match="human_fraction"):
    pipeline.check_config(out_of_range)
