"""Prepared datasets as TFDS datasets in `array_record` format, written and read WITHOUT TensorFlow,
and fed through `grain`.

What works with tensorflow-datasets 4.9.10 and no TensorFlow installed (measured):

* Writing: a `tfds.core.GeneratorBasedBuilder` subclass whose `_split_generators` returns plain
  Python generators of `(key, example)` pairs, prepared with `file_format="array_record"` and
  `ComputeStatsMode.SKIP`. TFDS's own writer, example serializer and `dataset_info.json` /
  `features.json` writers run in pure Python. Two things do NOT work and are avoided here:
  `tfds.dataset_builders.store_as_tfds_dataset` / `AdhocBuilder` (they test
  `isinstance(x, tf.data.Dataset)`, which imports TensorFlow), and the default
  `DatasetBuilder.code_path` (it imports `importlib_resources`, which tfds 4.9.10 no longer
  declares as a dependency on Python >= 3.9); our builder returns `None` for `code_path`.
* Reading: `tfds.builder_from_directory(path).as_data_source(split)` returns an
  `ArrayRecordDataSource` (random access, `len`, `__getitem__`), which `grain.MapDataset.source`
  takes directly.

Layout on disk (standard TFDS): `data_dir/<name>/<version>/{dataset_info.json, features.json,
<name>-<split>.array_record-00000-of-0000N}`. A dataset is built in a hidden temporary folder and
moved into place only when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_jax.data.corpus import Document
from rlhf_jax.data.preferences import PreferenceRecord
from rlhf_jax.labels import LABELS, decode_label, encode_label

__all__ = [
  "write_tfds_dataset",
  "dataset_dir",
  "open_tfds_split",
  "tfds_split_sizes",
  "grain_dataset",
  "decode_text_fields",
  "DOCUMENT_FEATURES",
  "PROMPT_FEATURES",
  "PREFERENCE_FEATURES",
  "write_documents_tfds",
  "write_prompts_tfds",
  "write_preferences_tfds",
  "write_token_rows_tfds",
  "preference_from_example",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT = re.compile(r"^[A-Za-z0-9_]+$")


def _tfds():
  import tensorflow_datasets as tfds

  return tfds


def _features(spec: Mapping[str, Any]):
  """Build a `tfds.features.FeaturesDict` from a plain spec: `"text"` -> Text, a numpy dtype ->
  scalar, `("tensor", shape, dtype)` -> Tensor, `("label", names)` -> ClassLabel."""
  tfds = _tfds()
  out = {}
  for key, kind in spec.items():
    if kind == "text":
      out[key] = tfds.features.Text()
    elif isinstance(kind, tuple) and kind[0] == "tensor":
      out[key] = tfds.features.Tensor(shape=tuple(kind[1]), dtype=np.dtype(kind[2]))
    elif isinstance(kind, tuple) and kind[0] == "label":
      out[key] = tfds.features.ClassLabel(names=list(kind[1]))
    else:
      out[key] = np.dtype(kind)
  return tfds.features.FeaturesDict(out)


DOCUMENT_FEATURES: dict[str, Any] = {
  "doc_id": "text",
  "source": "text",
  "title": "text",
  "text": "text",
}
PROMPT_FEATURES: dict[str, Any] = {"prompt": "text"}
PREFERENCE_FEATURES: dict[str, Any] = {
  "prompt": "text",
  "response_a": "text",
  "response_b": "text",
  "label": ("label", LABELS),  # stored as int: 0 = a, 1 = b, 2 = tie
  "metadata_json": "text",
}


def _make_builder(
  name: str,
  version: str,
  features_spec: Mapping[str, Any],
  splits: Mapping[str, Iterable],
  description: str,
  data_dir: pathlib.Path,
):
  tfds = _tfds()
  from tensorflow_datasets.core import utils as tfds_utils

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def __init__(self, **kwargs):
      self.name = name
      super().__init__(**kwargs)

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):  # avoids the importlib_resources import; no checksums file to find
      return None

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        description=description,
        features=_features(features_spec),
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows):
      return _keyed(rows)

  return _Builder(data_dir=str(data_dir), file_format="array_record")


def _keyed(rows: Iterable[Mapping[str, Any]]):
  for i, row in enumerate(rows):
    yield i, row


def dataset_dir(
  data_dir: str | os.PathLike[str], name: str, version: str = "1.0.0"
) -> pathlib.Path:
  """The folder TFDS uses for dataset `name` at `version`: `data_dir/name/version`."""
  return pathlib.Path(data_dir) / name / version


def write_tfds_dataset(
  data_dir: str | os.PathLike[str],
  name: str,
  features: Mapping[str, Any],
  splits: Mapping[str, Iterable[Mapping[str, Any]]],
  *,
  version: str = "1.0.0",
  description: str = "",
  overwrite: bool = False,
) -> pathlib.Path:
  """Write a TFDS dataset in array_record format, without TensorFlow.

  Args:
    data_dir: TFDS data folder; the dataset lands in `data_dir/name/version`.
    name: dataset name (lower snake_case).
    features: feature spec, field -> `"text"` | numpy dtype (scalar) | `("tensor", shape, dtype)`
      | `("label", names)`; see `DOCUMENT_FEATURES` etc.
    splits: split name -> iterable of example dicts matching `features` (generators are fine;
      records keep their order on disk).
    overwrite: replace an existing dataset of the same name and version (only once the new one is
      complete); otherwise an existing one raises FileExistsError.
  Returns:
    the dataset folder.
  """
  if not _NAME.match(name):
    raise ValueError(
      f"dataset name {name!r} must be lower snake_case (letters, digits, _), starting with a letter"
    )
  bad = [s for s in splits if not _SPLIT.match(s)]
  if bad or not splits:
    raise ValueError(
      f"split names must be non-empty and made of letters, digits and _; got {list(splits)}"
    )
  tfds = _tfds()
  final = dataset_dir(data_dir, name, version)
  if final.exists() and not overwrite:
    raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
  root = pathlib.Path(data_dir)
  root.mkdir(parents=True, exist_ok=True)
  tmp_root = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
  try:
    builder = _make_builder(name, version, features, splits, description, tmp_root)
    config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    builder.download_and_prepare(download_dir=str(tmp_root / "downloads"), download_config=config)
    built = tmp_root / name / version
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
      old = tmp_root / "old"
      os.replace(final, old)
    try:
      os.replace(built, final)
    except BaseException:
      if old is not None:
        os.replace(old, final)
      raise
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)
  return final


def open_tfds_split(path: str | os.PathLike[str], split: str):
  """Random-access reader of one split: `tfds.builder_from_directory(path).as_data_source(split)`.

  Args:
    path: a dataset folder (`data_dir/name/version`, as returned by `write_tfds_dataset`).
    split: split name, or a TFDS slice such as `"train[:10%]"`.
  Returns:
    an `ArrayRecordDataSource`: `len(src)`, `src[i]` -> dict (text fields as bytes).
  Raises:
    FileNotFoundError / ValueError naming the folder or the split.
  """
  tfds = _tfds()
  path = pathlib.Path(path)
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(f"{path}: not a TFDS dataset folder (no dataset_info.json)")
  builder = tfds.builder_from_directory(str(path))
  base = re.split(r"[\[+]", split, maxsplit=1)[0]
  if base not in builder.info.splits:
    raise ValueError(f"{path}: no split {base!r}; available: {sorted(builder.info.splits)}")
  return builder.as_data_source(split)


def tfds_split_sizes(path: str | os.PathLike[str]) -> dict[str, int]:
  """Number of examples per split, read from `dataset_info.json`."""
  info = json.loads((pathlib.Path(path) / "dataset_info.json").read_text(encoding="utf-8"))
  out = {}
  for s in info.get("splits", []):
    out[s["name"]] = (
      sum(int(n) for n in s.get("shardLengths", []))
      if "shardLengths" in s
      else int(s.get("numExamples", 0))
    )
  return out


def decode_text_fields(example: Any) -> Any:
  """Turn the `bytes` values TFDS returns for Text features back into `str`: for a dict, each
  bytes value; a bare bytes value itself; anything else is returned unchanged."""
  if isinstance(example, bytes):
    return example.decode("utf-8")
  if isinstance(example, Mapping):
    return {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in example.items()}
  return example


def grain_dataset(
  source: Sequence,
  *,
  batch_size: int | None = None,
  shuffle_seed: int | None = None,
  num_epochs: int | None = 1,
  process_index: int = 0,
  process_count: int = 1,
  drop_remainder: bool = True,
  transform: Callable[[Any], Any] | None = decode_text_fields,
  batch_fn: Callable[[Sequence[Any]], Any] | None = None,
):
  """A `grain.MapDataset` pipeline over a random-access source, sharded per process.

  Order of operations: the source is truncated to a multiple of `process_count` (so every
  process gets the same number of records), globally shuffled with `shuffle_seed` (the same on
  every process), then process `process_index` takes records `process_index::process_count`;
  then `transform`, `repeat(num_epochs)` (a fresh shuffle each epoch), and `batch`. Shards are
  disjoint and together cover the truncated source in every epoch.

  Pass `process_index=jax.process_index(), process_count=jax.process_count()` from the caller;
  this module does not import jax.

  Args:
    source: anything with `len` and `__getitem__` (e.g. `open_tfds_split(...)`, a list).
    batch_size: records per batch (per process); None yields single records.
    shuffle_seed: None keeps the stored order.
    num_epochs: epochs to repeat; None repeats forever.
    transform: per-record function (default: bytes -> str for text fields); None for identity.
    batch_fn: how to combine records (grain's default stacks leaves into numpy arrays).
  Returns:
    grain.MapDataset (index it, iterate it, or call `.to_iter_dataset()`).
  """
  import grain

  if not (0 <= process_index < process_count):
    raise ValueError(
      f"process_index must be in [0, process_count={process_count}), got {process_index}"
    )
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
  ds = grain.MapDataset.source(source)
  usable = (len(ds) // process_count) * process_count
  if usable < len(ds):
    ds = ds[:usable]
  if shuffle_seed is not None:
    ds = ds.shuffle(seed=shuffle_seed)
  if process_count > 1:
    ds = ds[process_index::process_count]
  if transform is not None:
    ds = ds.map(transform)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  if batch_size is not None:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
  return ds


# ----------------------------------------------------------------------------------------------
# Typed writers for the project's prepared datasets


def write_documents_tfds(
  data_dir: str | os.PathLike[str],
  documents: Mapping[str, Iterable[Document]],
  *,
  name: str = "corpus_documents",
  version: str = "1.0.0",
  overwrite: bool = False,
) -> pathlib.Path:
  """Store corpus documents (e.g. `{"train": corpus.train, "heldout": corpus.heldout}`) with
  fields doc_id, source, title, text."""
  splits = {
    split: (
      {"doc_id": d.doc_id, "source": d.source, "title": d.title, "text": d.text} for d in docs
    )
    for split, docs in documents.items()
  }
  return write_tfds_dataset(
    data_dir,
    name,
    DOCUMENT_FEATURES,
    splits,
    version=version,
    overwrite=overwrite,
    description="Cleaned English documents (rlhf_jax.data.corpus).",
  )


def write_prompts_tfds(
  data_dir: str | os.PathLike[str],
  prompts: Mapping[str, Iterable[str]],
  *,
  name: str = "prompts",
  version: str = "1.0.0",
  overwrite: bool = False,
) -> pathlib.Path:
  """Store prompts (split -> list of str) with a single field `prompt`."""
  splits = {split: ({"prompt": p} for p in ps) for split, ps in prompts.items()}
  return write_tfds_dataset(
    data_dir,
    name,
    PROMPT_FEATURES,
    splits,
    version=version,
    overwrite=overwrite,
    description="Prompts for generation.",
  )


def write_preferences_tfds(
  data_dir: str | os.PathLike[str],
  records: Mapping[str, Iterable[PreferenceRecord]],
  *,
  name: str = "preferences",
  version: str = "1.0.0",
  overwrite: bool = False,
) -> pathlib.Path:
  """Store preference records with fields prompt, response_a, response_b, label (ClassLabel
  a/b/tie, stored as 0/1/2) and metadata_json (the metadata dict as JSON text)."""
  splits = {
    split: (
      {
        "prompt": r.prompt,
        "response_a": r.response_a,
        "response_b": r.response_b,
        "label": encode_label(r.label),
        "metadata_json": json.dumps(dict(r.metadata), ensure_ascii=False),
      }
      for r in recs
    )
    for split, recs in records.items()
  }
  return write_tfds_dataset(
    data_dir,
    name,
    PREFERENCE_FEATURES,
    splits,
    version=version,
    overwrite=overwrite,
    description="Pairwise preference records (rlhf_jax.data.preferences).",
  )


def write_token_rows_tfds(
  data_dir: str | os.PathLike[str],
  rows: Mapping[str, tuple[np.ndarray, np.ndarray]],
  *,
  name: str = "token_rows",
  version: str = "1.0.0",
  overwrite: bool = False,
) -> pathlib.Path:
  """Store fixed-width token rows: split -> (ids [N, T] int32, mask [N, T] int32), fields
  `ids` and `mask` of shape [T] (all splits must share T)."""
  widths = {np.asarray(ids).shape[1] for ids, _ in rows.values()}
  if len(widths) != 1:
    raise ValueError(f"all splits must have the same row width, got {sorted(widths)}")
  (width,) = widths
  for split, (ids, mask) in rows.items():
    if np.asarray(ids).shape != np.asarray(mask).shape:
      raise ValueError(
        f"split {split!r}: ids {np.shape(ids)} and mask {np.shape(mask)} differ in shape"
      )
  spec = {"ids": ("tensor", (width,), np.int32), "mask": ("tensor", (width,), np.int32)}
  splits = {
    split: (
      {"ids": np.asarray(i, np.int32), "mask": np.asarray(m, np.int32)} for i, m in zip(ids, mask)
    )
    for split, (ids, mask) in rows.items()
  }
  return write_tfds_dataset(
    data_dir,
    name,
    spec,
    splits,
    version=version,
    overwrite=overwrite,
    description="Fixed-width token rows (ids + mask).",
  )


def preference_from_example(example: Mapping[str, Any]) -> PreferenceRecord:
  """Inverse of `write_preferences_tfds` for one example read from the data source."""
  ex = decode_text_fields(example)
  return PreferenceRecord(
    prompt=ex["prompt"],
    response_a=ex["response_a"],
    response_b=ex["response_b"],
    label=decode_label(ex["label"]),
    metadata=json.loads(ex["metadata_json"]),
  )
