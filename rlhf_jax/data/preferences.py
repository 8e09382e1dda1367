"""Preference records and their readers/writers, with validation that names file, line and field.

A `PreferenceRecord` is `(prompt, response_a, response_b, label in {"a", "b", "tie"}, metadata)`.
Readers accept these layouts, per row (JSONL line, JSON array element or Parquet row):

1. `{prompt, response_a, response_b, label}` (+ optional `metadata` object) — this library's own.
2. `{prompt, chosen, rejected}` with plain-text values — becomes `response_a=chosen`, label "a".
3. Hugging Face chat layout: `chosen` / `rejected` are message lists
   `[{"role": ..., "content": ...}, ...]` whose last message is the assistant's response. The
   conversation before it must be the same in both; it is the prompt. If `chosen` holds only the
   response, the prompt comes from the `prompt` column (a string, taken as one user turn, or a
   message list). Conversations are rendered to text with `render_chat` (replaceable), ending in
   `"\\n\\nAssistant:"`; the response is the content with one leading space, so that
   `prompt + response` reads as the conversation.
4. Plain-text conversations with no `prompt` column (Anthropic HH style): `chosen` / `rejected`
   are full transcripts; the prompt is their shared text up to and including the last
   `"\\n\\nAssistant:"`, the response is the rest.

Files: `.jsonl`, `.json` (an array) or `.parquet`; or a directory in a Hugging Face dataset
layout: `save_to_disk` output (`state.json` + `.arrow` files, or `dataset_dict.json` with a
`train` split), or a Hub dataset snapshot (`.parquet` / `.jsonl` / `.json` data files, e.g.
`data/train-00000-of-00001.parquet`; files naming a split other than `train` are skipped).

Other columns are ignored. Metadata comes only from an optional `metadata` object; its known keys
are type-checked (annotator: str, source: str, round: int, seed: int, probability: float in
[0, 1]); other keys must be JSON values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from rlhf_jax.data.files import atomic_write_jsonl
from rlhf_jax.labels import LABELS, encode_label  # the label codec: 0 = a, 1 = b, 2 = tie

__all__ = [
  "LABELS",
  "METADATA_FIELDS",
  "PreferenceRecord",
  "PreferenceFormatError",
  "render_chat",
  "check_metadata",
  "parse_preference_row",
  "records_from_rows",
  "read_preferences",
  "write_preferences_jsonl",
  "import_preferences",
]

METADATA_FIELDS: dict[str, type | tuple[type, ...]] = {
  "annotator": str,
  "source": str,
  "round": int,
  "seed": int,
  "probability": (int, float),
}
_DEFAULT_MAX_ERRORS = 20
_ASSISTANT_MARKER = "\n\nAssistant:"


class PreferenceFormatError(ValueError):
  """One or more invalid preference records. `errors` holds one message per problem (each naming
  file, 1-based line or row, and field); `num_errors` counts all, even past the listing cap."""

  def __init__(self, errors: Sequence[str], num_errors: int | None = None, where: str = ""):
    self.errors = list(errors)
    self.num_errors = len(self.errors) if num_errors is None else num_errors
    head = (
      f"{self.num_errors} invalid preference record field(s)"
      + (f" in {where}" if where else "")
      + ":"
    )
    lines = [head] + [f"  {e}" for e in self.errors]
    if self.num_errors > len(self.errors):
      lines.append(f"  ... and {self.num_errors - len(self.errors)} more")
    super().__init__("\n".join(lines))


def _metadata_errors(meta: Any, where: str) -> list[str]:
  if not isinstance(meta, Mapping):
    return [f"{where}: field 'metadata': expected an object, got {type(meta).__name__}"]
  errors = []
  for key, value in meta.items():
    if not isinstance(key, str):
      errors.append(f"{where}: field 'metadata': keys must be strings, got {key!r}")
      continue
    expected = METADATA_FIELDS.get(key)
    if expected is not None:
      if isinstance(value, bool) or not isinstance(value, expected):
        names = expected.__name__ if isinstance(expected, type) else "number"
        errors.append(f"{where}: field 'metadata.{key}': expected {names}, got {value!r}")
      elif key == "probability" and not (0.0 <= float(value) <= 1.0 and math.isfinite(value)):
        errors.append(
          f"{where}: field 'metadata.probability': expected a number in [0, 1], got {value!r}"
        )
    else:
      try:
        json.dumps(value)
      except (TypeError, ValueError):
        errors.append(f"{where}: field 'metadata.{key}': not a JSON value ({type(value).__name__})")
  return errors


def check_metadata(meta: Any, where: str = "metadata") -> None:
  """Raise `PreferenceFormatError` if `meta` is not a valid record metadata dict (known keys
  type-checked, all values JSON)."""
  errors = _metadata_errors(meta, where)
  if errors:
    raise PreferenceFormatError(errors, where=where)


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
  """A judged pair of responses to one prompt.

  Attributes:
    prompt: str.
    response_a, response_b: str, the two responses.
    label: "a" (a preferred), "b" (b preferred) or "tie".
    metadata: dict; known keys annotator (str), source (str), round (int), seed (int),
      probability (float, the judge's P(label) or P(a ≻ b)); others free-form JSON values.
  """

  prompt: str
  response_a: str
  response_b: str
  label: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    errors = []
    for name in ("prompt", "response_a", "response_b"):
      if not isinstance(getattr(self, name), str):
        errors.append(f"field {name!r}: expected str, got {type(getattr(self, name)).__name__}")
    if self.label not in LABELS:
      errors.append(f"field 'label': expected one of {LABELS}, got {self.label!r}")
    errors.extend(_metadata_errors(self.metadata, "PreferenceRecord"))
    if errors:
      raise PreferenceFormatError(errors, where="PreferenceRecord(...)")
    object.__setattr__(self, "metadata", dict(self.metadata))

  @classmethod
  def from_chosen_rejected(
    cls, prompt: str, chosen: str, rejected: str, metadata: Mapping[str, Any] | None = None
  ) -> PreferenceRecord:
    """A record with `response_a=chosen`, `response_b=rejected`, label "a"."""
    return cls(prompt, chosen, rejected, "a", dict(metadata or {}))

  @property
  def label_index(self) -> int:
    """0 = a, 1 = b, 2 = tie."""
    return encode_label(self.label)

  @property
  def chosen(self) -> str | None:
    """The preferred response, or None for a tie."""
    return {"a": self.response_a, "b": self.response_b}.get(self.label)

  @property
  def rejected(self) -> str | None:
    """The dispreferred response, or None for a tie."""
    return {"a": self.response_b, "b": self.response_a}.get(self.label)

  def to_json(self) -> dict[str, Any]:
    """The JSONL row written by `write_preferences_jsonl` (layout 1)."""
    return {
      "prompt": self.prompt,
      "response_a": self.response_a,
      "response_b": self.response_b,
      "label": self.label,
      "metadata": dict(self.metadata),
    }


# ----------------------------------------------------------------------------------------------
# Row parsing


def render_chat(messages: Sequence[Mapping[str, str]]) -> str:
  """Default rendering of a conversation prefix as a prompt:
  `"User: hi\\n\\nAssistant: hello\\n\\nUser: more?\\n\\nAssistant:"` (roles capitalised,
  `system` first if present), always ending with the assistant cue."""
  parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
  return "\n\n".join(parts + ["Assistant:"])


def _message_content(
  msg: Any, where: str, field: str, i: int, errors: list[str]
) -> dict[str, str] | None:
  if not isinstance(msg, Mapping):
    errors.append(
      f"{where}: field '{field}[{i}]': expected a message object {{role, content}}, got {type(msg).__name__}"
    )
    return None
  role, content = msg.get("role"), msg.get("content")
  if not isinstance(role, str) or not role:
    errors.append(f"{where}: field '{field}[{i}].role': expected a non-empty string, got {role!r}")
    return None
  if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
    texts = [
      p.get("text") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"
    ]
    if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
      errors.append(f"{where}: field '{field}[{i}].content': only text parts are supported")
      return None
    content = "".join(texts)
  if not isinstance(content, str):
    errors.append(
      f"{where}: field '{field}[{i}].content': expected a string, got {type(content).__name__}"
    )
    return None
  return {"role": role, "content": content}


def _messages(value: Any, where: str, field: str, errors: list[str]) -> list[dict[str, str]] | None:
  n_before = len(errors)
  out = [_message_content(m, where, field, i, errors) for i, m in enumerate(value)]
  return None if len(errors) > n_before else out


def _require_str(row: Mapping, field: str, where: str, errors: list[str]) -> str | None:
  if field not in row:
    errors.append(f"{where}: field '{field}': missing")
    return None
  value = row[field]
  if not isinstance(value, str):
    errors.append(f"{where}: field '{field}': expected a string, got {type(value).__name__}")
    return None
  return value


def _parse_chat(
  row: Mapping, where: str, errors: list[str], render: Callable
) -> tuple[str, str, str] | None:
  chosen = _messages(row["chosen"], where, "chosen", errors)
  rejected = _messages(row["rejected"], where, "rejected", errors)
  if chosen is None or rejected is None:
    return None
  ok = True
  for field, conv in (("chosen", chosen), ("rejected", rejected)):
    if not conv:
      errors.append(f"{where}: field '{field}': empty conversation")
      ok = False
    elif conv[-1]["role"] != "assistant":
      errors.append(
        f"{where}: field '{field}': the last message must be the assistant's response, "
        f"got role {conv[-1]['role']!r}"
      )
      ok = False
  if not ok:
    return None
  context = chosen[:-1]
  if rejected[:-1] != context:
    errors.append(
      f"{where}: field 'rejected': the conversation before the final assistant turn differs from 'chosen'"
    )
    return None
  if not context:
    prompt = row.get("prompt")
    if prompt is None:
      errors.append(
        f"{where}: field 'prompt': missing, and 'chosen' has no turns before the response"
      )
      return None
    if isinstance(prompt, str):
      context = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
      context = _messages(prompt, where, "prompt", errors)
      if context is None:
        return None
    else:
      errors.append(
        f"{where}: field 'prompt': expected a string or a message list, got {type(prompt).__name__}"
      )
      return None
  return (
    render(context),
    " " + chosen[-1]["content"].lstrip(),
    " " + rejected[-1]["content"].lstrip(),
  )


def _split_transcripts(
  chosen: str, rejected: str, where: str, errors: list[str], marker: str
) -> tuple[str, str, str] | None:
  n = 0
  limit = min(len(chosen), len(rejected))
  while n < limit and chosen[n] == rejected[n]:
    n += 1
  cut = chosen[:n].rfind(marker)
  if cut < 0:
    errors.append(
      f"{where}: field 'prompt': missing, and 'chosen'/'rejected' share no {marker!r} turn "
      f"to split the prompt from the response"
    )
    return None
  cut += len(marker)
  return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_preference_row(
  row: Any,
  where: str,
  *,
  render: Callable[[Sequence[Mapping[str, str]]], str] = render_chat,
  assistant_marker: str = _ASSISTANT_MARKER,
) -> tuple[PreferenceRecord | None, list[str]]:
  """Parse one row in any supported layout.

  Args:
    row: the decoded row (dict).
    where: location prefix for messages, e.g. `"data.jsonl:12"`.
    render: renders a message-list prompt to text.
    assistant_marker: turn marker used to split plain-text transcripts (layout 4).
  Returns:
    (record or None, list of error messages naming `where` and the field).
  """
  errors: list[str] = []
  if not isinstance(row, Mapping):
    return None, [f"{where}: expected a JSON object, got {type(row).__name__}"]
  metadata = row.get("metadata", {})
  if metadata is None:
    metadata = {}
  errors.extend(_metadata_errors(metadata, where))
  parsed: tuple[str, str, str] | None = None
  label = "a"
  if any(k in row for k in ("response_a", "response_b", "label")):
    prompt = _require_str(row, "prompt", where, errors)
    a = _require_str(row, "response_a", where, errors)
    b = _require_str(row, "response_b", where, errors)
    if "label" not in row:
      errors.append(f"{where}: field 'label': missing (expected one of {LABELS})")
    elif row["label"] not in LABELS:
      errors.append(f"{where}: field 'label': expected one of {LABELS}, got {row['label']!r}")
    else:
      label = row["label"]
    if None not in (prompt, a, b):
      parsed = (prompt, a, b)
  elif "chosen" in row or "rejected" in row:
    for field in ("chosen", "rejected"):
      if field not in row:
        errors.append(f"{where}: field '{field}': missing")
    if "chosen" in row and "rejected" in row:
      chosen, rejected = row["chosen"], row["rejected"]
      if isinstance(chosen, list) and isinstance(rejected, list):
        parsed = _parse_chat(row, where, errors, render)
      elif isinstance(chosen, str) and isinstance(rejected, str):
        if "prompt" in row:
          prompt = _require_str(row, "prompt", where, errors)
          parsed = None if prompt is None else (prompt, chosen, rejected)
        else:
          parsed = _split_transcripts(chosen, rejected, where, errors, assistant_marker)
      else:
        errors.append(
          f"{where}: fields 'chosen'/'rejected': expected both strings or both message lists, "
          f"got {type(chosen).__name__} and {type(rejected).__name__}"
        )
  else:
    errors.append(
      f"{where}: unrecognised layout: expected fields (prompt, chosen, rejected) or "
      f"(prompt, response_a, response_b, label); got {sorted(map(str, row))}"
    )
  if errors or parsed is None:
    return None, errors
  return PreferenceRecord(parsed[0], parsed[1], parsed[2], label, dict(metadata)), []


# ----------------------------------------------------------------------------------------------
# Readers and writers


def _collect(
  rows: Iterable[tuple[str, Any]], where: str, max_errors: int, **parse_kwargs
) -> list[PreferenceRecord]:
  records: list[PreferenceRecord] = []
  errors: list[str] = []
  n_errors = 0
  for loc, row in rows:
    if isinstance(row, _RowError):
      rec, errs = None, [row.message]
    else:
      rec, errs = parse_preference_row(row, loc, **parse_kwargs)
    if errs:
      n_errors += len(errs)
      errors.extend(errs[: max(0, max_errors - len(errors))])
    elif rec is not None:
      records.append(rec)
  if n_errors:
    raise PreferenceFormatError(errors, n_errors, where)
  return records


class _RowError:
  def __init__(self, message: str):
    self.message = message


def _jsonl_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      loc = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield loc, _RowError(f"{loc}: not UTF-8 ({e})")
        continue
      if not line.strip():
        continue
      try:
        yield loc, json.loads(line)
      except json.JSONDecodeError as e:
        yield loc, _RowError(f"{loc}: invalid JSON ({e.msg} at column {e.colno})")


def _json_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    yield str(path), _RowError(f"{path}: invalid JSON ({e})")
    return
  if not isinstance(data, list):
    yield (
      str(path),
      _RowError(f"{path}: expected a JSON array of records, got {type(data).__name__}"),
    )
    return
  for i, row in enumerate(data, 1):
    yield f"{path}: row {i}", row


def _parquet_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  import pyarrow.parquet as pq

  try:
    table = pq.read_table(path)
  except Exception as e:
    yield str(path), _RowError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})")
    return
  for i, row in enumerate(table.to_pylist(), 1):
    yield f"{path}: row {i}", row


_SUPPORTED_LAYOUTS = (
  "a .jsonl, .json (array) or .parquet file; or a Hugging Face dataset directory: "
  "save_to_disk output (state.json + .arrow files, or dataset_dict.json with a 'train' "
  "split) or a Hub snapshot of data files (e.g. data/train-00000-of-00001.parquet)"
)
_SPLIT_WORDS = ("train", "test", "validation", "valid", "dev", "eval")


def _arrow_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  import pyarrow as pa

  try:
    with pa.OSFile(str(path)) as f:
      try:
        table = pa.ipc.open_stream(f).read_all()
      except pa.ArrowInvalid:
        f.seek(0)
        table = pa.ipc.open_file(f).read_all()
  except Exception as e:
    yield str(path), _RowError(f"{path}: not a readable Arrow file ({type(e).__name__}: {e})")
    return
  for i, row in enumerate(table.to_pylist(), 1):
    yield f"{path}: row {i}", row


def _file_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  suffix = path.suffix.lower()
  if suffix == ".jsonl":
    return _jsonl_rows(path)
  if suffix == ".json":
    return _json_rows(path)
  if suffix == ".parquet":
    return _parquet_rows(path)
  if suffix == ".arrow":
    return _arrow_rows(path)
  raise ValueError(
    f"{path}: unsupported preference file type {suffix!r}; expected .jsonl, .json or .parquet"
  )


def _split_of(path: pathlib.Path, root: pathlib.Path) -> str | None:
  for part in reversed(path.relative_to(root).parts):
    stem = part.split(".")[0].lower()
    for word in _SPLIT_WORDS:
      if stem == word or stem.startswith(word + "-") or stem.startswith(word + "_"):
        return word
  return None


def _directory_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The data files of a Hugging Face dataset directory (the `train` split), or raises."""
  dict_file = path / "dataset_dict.json"
  if dict_file.is_file():  # DatasetDict.save_to_disk: one sub-directory per split
    try:
      splits = json.loads(dict_file.read_text(encoding="utf-8")).get("splits", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
      raise ValueError(f"{dict_file}: invalid JSON ({e})") from None
    if "train" not in splits:
      raise ValueError(
        f"{path}: a saved DatasetDict without a 'train' split (splits: {splits}); pass the "
        f"split's directory, e.g. {path / (splits[0] if splits else 'train')}"
      )
    return _directory_files(path / "train")
  state = path / "state.json"
  if state.is_file():  # Dataset.save_to_disk
    try:
      names = [d["filename"] for d in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
      raise ValueError(
        f"{state}: not a Hugging Face save_to_disk state file ({type(e).__name__}: {e})"
      ) from None
    files = [path / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
      raise FileNotFoundError(f"{state} names data files missing from {path}: {missing}")
    return files
  data = sorted(
    p
    for p in path.rglob("*")
    if p.is_file()
    and p.suffix.lower() in (".parquet", ".jsonl", ".json")
    and not any(part.startswith(".") for part in p.relative_to(path).parts)
    and p.name not in ("dataset_info.json", "dataset_infos.json")
  )
  if any(_split_of(p, path) for p in data):
    data = [p for p in data if _split_of(p, path) == "train"]
  if not data:
    raise ValueError(
      f"{path}: a directory with no preference data rlhf_jax can read; supported: {_SUPPORTED_LAYOUTS}"
    )
  return data


def read_preferences(
  path: str | os.PathLike[str],
  *,
  max_errors: int = _DEFAULT_MAX_ERRORS,
  render: Callable[[Sequence[Mapping[str, str]]], str] = render_chat,
  assistant_marker: str = _ASSISTANT_MARKER,
) -> list[PreferenceRecord]:
  """Read and validate every record of a `.jsonl`, `.json` (array) or `.parquet` file, or of a
  Hugging Face dataset directory (`save_to_disk` output or a Hub snapshot of data files; the
  `train` split).

  Args:
    path: the file or directory.
    max_errors: how many error messages to list (all are counted).
    render, assistant_marker: see `parse_preference_row`.
  Returns:
    list of PreferenceRecord, in file order.
  Raises:
    FileNotFoundError: naming the file.
    PreferenceFormatError: listing `path:line: field 'x': ...` for the invalid records.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    files = _directory_files(path)
    rows = (row for f in files for row in _file_rows(f))
    return _collect(rows, str(path), max_errors, render=render, assistant_marker=assistant_marker)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such preference file (supported: {_SUPPORTED_LAYOUTS})")
  rows = _file_rows(path)
  return _collect(rows, str(path), max_errors, render=render, assistant_marker=assistant_marker)


def records_from_rows(
  rows: Iterable[Mapping[str, Any]],
  *,
  name: str = "rows",
  max_errors: int = _DEFAULT_MAX_ERRORS,
  render: Callable[[Sequence[Mapping[str, str]]], str] = render_chat,
  assistant_marker: str = _ASSISTANT_MARKER,
) -> list[PreferenceRecord]:
  """Validate in-memory rows (e.g. iterating a Hugging Face `datasets.Dataset`); errors name
  `name: row N` (1-based)."""
  located = ((f"{name}: row {i}", row) for i, row in enumerate(rows, 1))
  return _collect(located, name, max_errors, render=render, assistant_marker=assistant_marker)


def write_preferences_jsonl(
  records: Iterable[PreferenceRecord], path: str | os.PathLike[str]
) -> pathlib.Path:
  """Write records as JSONL (layout 1, one `to_json()` per line) atomically: on any error the
  destination is untouched."""

  def rows():
    for i, r in enumerate(records):
      if not isinstance(r, PreferenceRecord):
        raise TypeError(f"record {i}: expected PreferenceRecord, got {type(r).__name__}")
      yield r.to_json()

  return atomic_write_jsonl(path, rows())


def import_preferences(
  src: str | os.PathLike[str],
  dst_dir: str | os.PathLike[str],
  *,
  name: str | None = None,
  overwrite: bool = False,
  max_errors: int = _DEFAULT_MAX_ERRORS,
  render: Callable[[Sequence[Mapping[str, str]]], str] = render_chat,
  assistant_marker: str = _ASSISTANT_MARKER,
) -> pathlib.Path:
  """Validate every record of `src` (any supported layout and file type), then write them in
  this library's layout to `dst_dir/<name or src stem>.jsonl`.

  Nothing is written (not even `dst_dir`) unless every record is valid; the file is written
  atomically.

  Returns:
    the written path.
  Raises:
    PreferenceFormatError (all problems, capped listing), FileExistsError, FileNotFoundError.
  """
  src = pathlib.Path(src)
  dst = pathlib.Path(dst_dir) / f"{name or src.stem}.jsonl"
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists (pass overwrite=True to replace it)")
  records = read_preferences(
    src, max_errors=max_errors, render=render, assistant_marker=assistant_marker
  )
  if not records:
    raise PreferenceFormatError([f"{src}: contains no records"], where=str(src))
  return write_preferences_jsonl(records, dst)
