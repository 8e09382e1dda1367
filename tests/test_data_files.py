"""JSONL reading with file:line errors, shared by every reader of a user's JSONL file."""

import pytest

from rlhf_jax import data as data_lib
from rlhf_jax.feedback import human
from rlhf_jax.train import ppo as ppo_train
from rlhf_jax.train import sft as sft_train


def test_read_jsonl_skips_blank_lines_and_names_bad_ones(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"a": 1}\n\n  \n[2]\n{"a": \n')
  rows = data_lib.read_jsonl(path)
  assert next(rows) == (f"{path}:1", {"a": 1})
  assert next(rows) == (f"{path}:4", [2])
  with pytest.raises(ValueError, match=rf"{path}:5: invalid JSON"):
    next(rows)


def test_each_jsonl_reader_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "ok", "response": "fine", "id": "1"}\n{"nope": 3}\n')
  with pytest.raises(ValueError, match=rf"{bad}:2: expected an object with a string field"):
    ppo_train._load_prompts(ppo_train.PromptSpec(source="jsonl", path=str(bad)), object(), 10, 1, 0)
  with pytest.raises(ValueError, match=rf"{bad}:2: expected"):
    sft_train.load_sft_rows(sft_train.DataSpec(path=str(bad)), object())
  queue = tmp_path / "pending.jsonl"
  queue.write_text('{"id": "x"}\n{"id": 5}\n')
  with pytest.raises(human.QueueError, match=rf"{queue}:2: field 'id'"):
    human._read(queue)
