"""TFDS array_record datasets written and read without TensorFlow, fed through grain."""

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rlhf_jax.data.corpus import Document
from rlhf_jax.data.preferences import PreferenceRecord
from rlhf_jax.data.tfds_io import (
  decode_text_fields,
  grain_dataset,
  open_tfds_split,
  preference_from_example,
  tfds_split_sizes,
  write_documents_tfds,
  write_preferences_tfds,
  write_prompts_tfds,
  write_tfds_dataset,
  write_token_rows_tfds,
)

DOCS = [
  Document(f"src/{i}", "fortunes", f"title {i}", (f"Paragraph {i}, ünïcode.", "Second."))
  for i in range(7)
]


def test_tensorflow_is_not_installed():
  assert importlib.util.find_spec("tensorflow") is None


def test_documents_roundtrip_in_order(tmp_path):
  path = write_documents_tfds(tmp_path, {"train": DOCS[:5], "heldout": DOCS[5:]})
  assert path == tmp_path / "corpus_documents" / "1.0.0"
  assert sorted(p.name for p in path.iterdir()) == [
    "corpus_documents-heldout.array_record-00000-of-00001",
    "corpus_documents-train.array_record-00000-of-00001",
    "dataset_info.json",
    "features.json",
  ]
  assert tfds_split_sizes(path) == {"train": 5, "heldout": 2}
  src = tfds.builder_from_directory(str(path)).as_data_source("train")
  assert len(src) == 5
  got = [decode_text_fields(src[i]) for i in range(5)]
  assert got == [
    {"doc_id": d.doc_id, "source": d.source, "title": d.title, "text": d.text} for d in DOCS[:5]
  ]
  assert decode_text_fields(open_tfds_split(path, "heldout")[1])["doc_id"] == "src/6"
  assert len(open_tfds_split(path, "train[:2]")) == 2
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_preferences_prompts_and_token_rows_roundtrip(tmp_path):
  recs = [
    PreferenceRecord(f"p{i}", "a", "b", ("a", "b", "tie")[i % 3], {"round": i, "annotator": "sim"})
    for i in range(6)
  ]
  src = open_tfds_split(write_preferences_tfds(tmp_path, {"train": recs}), "train")
  assert [preference_from_example(src[i]) for i in range(6)] == recs
  assert [int(src[i]["label"]) for i in range(3)] == [0, 1, 2]
  prompts = open_tfds_split(
    write_prompts_tfds(tmp_path, {"test": ["It was a", "Once upon"]}), "test"
  )
  assert [decode_text_fields(prompts[i])["prompt"] for i in range(2)] == ["It was a", "Once upon"]
  ids = np.arange(24, dtype=np.int32).reshape(3, 8)
  mask = np.ones_like(ids)
  mask[2, 5:] = 0
  rows = open_tfds_split(write_token_rows_tfds(tmp_path, {"train": (ids, mask)}), "train")
  np.testing.assert_array_equal(np.stack([rows[i]["ids"] for i in range(3)]), ids)
  np.testing.assert_array_equal(rows[2]["mask"], mask[2])
  assert rows[0]["ids"].dtype == np.int32


def test_existing_dataset_needs_overwrite(tmp_path):
  write_prompts_tfds(tmp_path, {"train": ["one"]})
  with pytest.raises(FileExistsError, match="overwrite=True"):
    write_prompts_tfds(tmp_path, {"train": ["two"]})
  path = write_prompts_tfds(tmp_path, {"train": ["two", "three"]}, overwrite=True)
  src = open_tfds_split(path, "train")
  assert [decode_text_fields(src[i])["prompt"] for i in range(len(src))] == ["two", "three"]


def test_failed_write_leaves_nothing(tmp_path):
  def rows():
    yield {"prompt": "fine"}
    raise RuntimeError("generator broke")

  with pytest.raises(RuntimeError, match="generator broke"):
    write_tfds_dataset(tmp_path, "broken", {"prompt": "text"}, {"train": rows()})
  assert list(tmp_path.iterdir()) == []
  write_prompts_tfds(tmp_path, {"train": ["keep me"]})

  def bad():
    yield {"prompt": "x"}
    raise ValueError("second write broke")

  with pytest.raises(ValueError, match="second write broke"):
    write_tfds_dataset(tmp_path, "prompts", {"prompt": "text"}, {"train": bad()}, overwrite=True)
  src = open_tfds_split(tmp_path / "prompts" / "1.0.0", "train")
  assert decode_text_fields(src[0])["prompt"] == "keep me"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts"]


def test_bad_names_and_splits(tmp_path):
  with pytest.raises(ValueError, match="snake_case"):
    write_tfds_dataset(tmp_path, "Bad-Name", {"prompt": "text"}, {"train": []})
  with pytest.raises(ValueError, match="split names"):
    write_tfds_dataset(tmp_path, "ok", {"prompt": "text"}, {"train/x": []})
  path = write_prompts_tfds(tmp_path, {"train": ["a"]})
  with pytest.raises(ValueError, match=r"no split 'validation'; available: \['train'\]"):
    open_tfds_split(path, "validation")
  with pytest.raises(FileNotFoundError, match="not a TFDS dataset folder"):
    open_tfds_split(tmp_path, "train")


def test_grain_shards_are_disjoint_equal_and_reshuffled_each_epoch(tmp_path):
  path = write_prompts_tfds(tmp_path, {"train": [f"p{i}" for i in range(23)]})
  src = open_tfds_split(path, "train")
  shards = []
  for index in range(3):
    ds = grain_dataset(src, shuffle_seed=5, num_epochs=2, process_index=index, process_count=3)
    shards.append([ex["prompt"] for ex in ds])
  assert [len(s) for s in shards] == [14, 14, 14]  # 23 -> 21 usable, 7 per process per epoch
  for epoch in range(2):
    seen = [p for s in shards for p in s[7 * epoch : 7 * (epoch + 1)]]
    assert len(set(seen)) == 21
  assert shards[0][:7] != shards[0][7:]
  again = [
    ex["prompt"]
    for ex in grain_dataset(src, shuffle_seed=5, num_epochs=2, process_index=0, process_count=3)
  ]
  assert again == shards[0]
  with pytest.raises(ValueError, match="process_index"):
    grain_dataset(src, process_index=3, process_count=3)


def test_grain_batches(tmp_path):
  recs = [PreferenceRecord(f"p{i}", "a", "b", "a") for i in range(10)]
  src = open_tfds_split(write_preferences_tfds(tmp_path, {"train": recs}), "train")
  batches = list(grain_dataset(src, batch_size=4, shuffle_seed=0))
  assert (
    len(batches) == 2 and batches[0]["label"].shape == (4,) and batches[0]["prompt"].shape == (4,)
  )
  as_records = grain_dataset(
    src, batch_size=3, transform=preference_from_example, batch_fn=list, drop_remainder=False
  )
  out = list(as_records)
  assert [len(b) for b in out] == [3, 3, 3, 1] and out[0][0] == recs[0]
  it = grain_dataset(src, batch_size=5, shuffle_seed=1, num_epochs=None).to_iter_dataset()
  first = [next(iter(it)) for _ in range(1)]
  assert first[0]["prompt"].shape == (5,)
