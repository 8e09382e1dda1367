"""Preference records: every supported layout, validation messages, atomic writes and imports."""

import json

import pytest

from rlhf_jax.data.preferences import (
  PreferenceFormatError,
  PreferenceRecord,
  import_preferences,
  parse_preference_row,
  read_preferences,
  records_from_rows,
  render_chat,
  write_preferences_jsonl,
)


def _write_jsonl(path, rows):
  path.write_text(
    "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
  )
  return path


def test_record_properties_and_validation():
  r = PreferenceRecord(
    "p", "x", "y", "b", {"annotator": "ann", "round": 2, "probability": 0.25, "note": [1]}
  )
  assert (r.chosen, r.rejected, r.label_index) == ("y", "x", 1)
  tie = PreferenceRecord("p", "x", "y", "tie")
  assert tie.chosen is None and tie.rejected is None and tie.label_index == 2
  assert PreferenceRecord.from_chosen_rejected("p", "c", "r").to_json() == {
    "prompt": "p",
    "response_a": "c",
    "response_b": "r",
    "label": "a",
    "metadata": {},
  }
  with pytest.raises(PreferenceFormatError, match="field 'label'"):
    PreferenceRecord("p", "x", "y", "A")
  with pytest.raises(PreferenceFormatError, match=r"metadata.round': expected int"):
    PreferenceRecord("p", "x", "y", "a", {"round": "2"})
  with pytest.raises(PreferenceFormatError, match="field 'response_b': expected str"):
    PreferenceRecord("p", "x", None, "a")


def test_jsonl_both_plain_layouts(tmp_path):
  path = _write_jsonl(
    tmp_path / "p.jsonl",
    [
      {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
      {
        "prompt": "Say hi",
        "response_a": "Hey",
        "response_b": "Hello",
        "label": "tie",
        "metadata": {
          "annotator": "alice",
          "source": "human",
          "round": 1,
          "seed": 7,
          "probability": 0.5,
        },
      },
      "",
      {"prompt": "Q", "response_a": "x", "response_b": "y", "label": "b", "extra_column": 3},
    ],
  )
  recs = read_preferences(path)
  assert recs[0] == PreferenceRecord("Say hi", "Hi!", "No.", "a", {})
  assert recs[1].label == "tie" and recs[1].metadata["annotator"] == "alice"
  assert recs[2].label == "b"


def test_hf_chat_layouts():
  convo = [{"role": "user", "content": "What is 2+2?"}]
  row_full = {
    "chosen": convo + [{"role": "assistant", "content": "4"}],
    "rejected": convo + [{"role": "assistant", "content": "5"}],
  }
  rec, errs = parse_preference_row(row_full, "r:1")
  assert not errs
  assert rec.prompt == "User: What is 2+2?\n\nAssistant:" == render_chat(convo)
  assert (rec.response_a, rec.response_b, rec.label) == (" 4", " 5", "a")
  # UltraFeedback-style: a prompt column too, but the conversation in chosen wins.
  rec2, _ = parse_preference_row({"prompt": "What is 2+2?", **row_full}, "r:2")
  assert rec2 == rec
  # TRL conversational style: prompt as messages, chosen/rejected only the response.
  rec3, _ = parse_preference_row(
    {
      "prompt": convo,
      "chosen": [{"role": "assistant", "content": "4"}],
      "rejected": [{"role": "assistant", "content": "5"}],
    },
    "r:3",
  )
  assert rec3 == rec
  # prompt as a string with response-only lists; content given as text parts.
  rec4, _ = parse_preference_row(
    {
      "prompt": "What is 2+2?",
      "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "4"}]}],
      "rejected": [{"role": "assistant", "content": "5"}],
    },
    "r:4",
  )
  assert rec4 == rec
  system = [{"role": "system", "content": "Be brief."}] + convo
  rec5, _ = parse_preference_row(
    {
      "chosen": system + [{"role": "assistant", "content": "4"}],
      "rejected": system + [{"role": "assistant", "content": "5"}],
    },
    "r:5",
  )
  assert rec5.prompt == "System: Be brief.\n\nUser: What is 2+2?\n\nAssistant:"


def test_hh_transcripts_without_prompt_column():
  row = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: A joke?\n\nAssistant: Sure, here is one.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: A joke?\n\nAssistant: No.",
  }
  rec, errs = parse_preference_row(row, "hh:1")
  assert not errs
  assert (
    rec.prompt
    == "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: A joke?\n\nAssistant:"
  )
  assert (rec.response_a, rec.response_b) == (" Sure, here is one.", " No.")
  _, errs = parse_preference_row({"chosen": "just text", "rejected": "other text"}, "hh:2")
  assert errs == [
    "hh:2: field 'prompt': missing, and 'chosen'/'rejected' share no '\\n\\nAssistant:' turn "
    "to split the prompt from the response"
  ]


@pytest.mark.parametrize(
  "row, expected",
  [
    ({"prompt": "p", "chosen": "c"}, "field 'rejected': missing"),
    ({"prompt": 3, "chosen": "c", "rejected": "r"}, "field 'prompt': expected a string, got int"),
    ({"prompt": "p", "response_a": "a", "response_b": "b"}, "field 'label': missing"),
    (
      {"prompt": "p", "response_a": "a", "response_b": "b", "label": "A"},
      "field 'label': expected one of",
    ),
    ({"prompt": "p", "response_a": "a", "label": "a"}, "field 'response_b': missing"),
    ({"text": "hello"}, "unrecognised layout"),
    (
      {"chosen": "c", "rejected": [{"role": "assistant", "content": "r"}]},
      "expected both strings or both message lists",
    ),
    (
      {
        "chosen": [{"role": "user", "content": "u"}],
        "rejected": [{"role": "assistant", "content": "r"}],
      },
      "field 'chosen': the last message must be the assistant's response",
    ),
    (
      {
        "chosen": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "c"}],
        "rejected": [{"role": "user", "content": "v"}, {"role": "assistant", "content": "r"}],
      },
      "field 'rejected': the conversation before the final assistant turn differs",
    ),
    (
      {
        "chosen": [{"role": "assistant", "content": "c"}],
        "rejected": [{"role": "assistant", "content": "r"}],
      },
      "field 'prompt': missing, and 'chosen' has no turns",
    ),
    (
      {"chosen": [{"content": "c"}], "rejected": [{"role": "assistant", "content": "r"}]},
      "field 'chosen[0].role'",
    ),
    (
      {"prompt": "p", "chosen": "c", "rejected": "r", "metadata": {"probability": 1.5}},
      "metadata.probability",
    ),
    (
      {"prompt": "p", "chosen": "c", "rejected": "r", "metadata": [1]},
      "field 'metadata': expected an object",
    ),
    ([1, 2], "expected a JSON object"),
  ],
)
def test_row_errors_name_location_and_field(row, expected):
  rec, errs = parse_preference_row(row, "data.jsonl:7")
  assert rec is None and errs
  assert all(e.startswith("data.jsonl:7") for e in errs)
  assert any(expected in e for e in errs), errs


def test_all_errors_collected_with_file_and_line_and_capped(tmp_path):
  rows = (
    [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    + ["{broken json"]
    + [{"prompt": "p", "response_a": "a", "response_b": "b", "label": "x"} for _ in range(30)]
  )
  path = _write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(PreferenceFormatError) as info:
    read_preferences(path, max_errors=5)
  err = info.value
  assert err.num_errors == 31 and len(err.errors) == 5
  assert err.errors[0].startswith(f"{path}:2: invalid JSON")
  assert err.errors[1].startswith(f"{path}:3: field 'label'")
  assert "... and 26 more" in str(err)


def test_json_array_and_parquet_and_rows(tmp_path):
  rows = [
    {"prompt": "p", "chosen": "c", "rejected": "r"},
    {"prompt": "q", "chosen": "c2", "rejected": 5},
  ]
  (tmp_path / "d.json").write_text(json.dumps(rows))
  with pytest.raises(PreferenceFormatError, match=r"d.json: row 2: fields 'chosen'/'rejected'"):
    read_preferences(tmp_path / "d.json")
  import pyarrow as pa
  import pyarrow.parquet as pq

  table = pa.Table.from_pylist(
    [
      {
        "prompt": "p",
        "chosen": [{"role": "assistant", "content": "c"}],
        "rejected": [{"role": "assistant", "content": "r"}],
      },
    ]
  )
  pq.write_table(table, tmp_path / "d.parquet")
  assert read_preferences(tmp_path / "d.parquet") == [
    PreferenceRecord("User: p\n\nAssistant:", " c", " r", "a")
  ]
  assert records_from_rows(rows[:1]) == [PreferenceRecord("p", "c", "r", "a")]
  with pytest.raises(PreferenceFormatError, match=r"hf: row 2"):
    records_from_rows(rows, name="hf")
  with pytest.raises(ValueError, match="unsupported preference file type"):
    read_preferences(_write_jsonl(tmp_path / "d.csv", []))
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    read_preferences(tmp_path / "missing.jsonl")


def test_write_roundtrip_and_atomicity(tmp_path):
  recs = [
    PreferenceRecord("p", "a", "b", "tie", {"annotator": "bob", "seed": 3}),
    PreferenceRecord("p2", "é", "ü", "b"),
  ]
  path = write_preferences_jsonl(recs, tmp_path / "out" / "prefs.jsonl")
  assert read_preferences(path) == recs
  before = path.read_bytes()
  with pytest.raises(TypeError, match="record 1"):
    write_preferences_jsonl([recs[0], {"prompt": "not a record"}], path)
  assert path.read_bytes() == before
  assert sorted(p.name for p in path.parent.iterdir()) == ["prefs.jsonl"]


def test_import_preferences_writes_all_or_nothing(tmp_path):
  good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
  out = import_preferences(good, tmp_path / "store")
  assert out == tmp_path / "store" / "good.jsonl"
  assert json.loads(out.read_text()) == {
    "prompt": "p",
    "response_a": "c",
    "response_b": "r",
    "label": "a",
    "metadata": {},
  }
  with pytest.raises(FileExistsError):
    import_preferences(good, tmp_path / "store")
  bad = _write_jsonl(
    tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p"}]
  )
  with pytest.raises(PreferenceFormatError, match=r"bad.jsonl:2"):
    import_preferences(bad, tmp_path / "store2")
  assert not (tmp_path / "store2").exists()
  empty = _write_jsonl(tmp_path / "empty.jsonl", [])
  with pytest.raises(PreferenceFormatError, match="contains no records"):
    import_preferences(empty, tmp_path / "store3")


_CHAT_ROWS = [
  {
    "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
  },
  {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
]


def _arrow_stream(path, rows):
  """An Arrow IPC stream file, as Hugging Face `datasets` writes (`data-*.arrow`)."""
  import pyarrow as pa

  table = pa.Table.from_pylist(rows)
  with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
    w.write_table(table)


def test_hf_save_to_disk_directory(tmp_path):
  ds = tmp_path / "ds"
  ds.mkdir()
  _arrow_stream(ds / "data-00000-of-00001.arrow", [_CHAT_ROWS[0]])
  _arrow_stream(ds / "data-00001-of-00001.arrow", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
  (ds / "state.json").write_text(
    json.dumps(
      {
        "_data_files": [
          {"filename": "data-00000-of-00001.arrow"},
          {"filename": "data-00001-of-00001.arrow"},
        ]
      }
    )
  )
  (ds / "dataset_info.json").write_text("{}")
  records = read_preferences(ds)
  assert [(r.response_a.strip(), r.response_b, r.label) for r in records] == [
    ("Hello!", " Go away.", "a"),
    ("A", "B", "a"),
  ]
  # A saved DatasetDict: its train split is read.
  dd = tmp_path / "dd"
  (dd / "train").mkdir(parents=True)
  for f in ds.iterdir():
    (dd / "train" / f.name).write_bytes(f.read_bytes())
  (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
  assert len(read_preferences(dd)) == 2
  (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
  with pytest.raises(ValueError, match=r"without a 'train' split"):
    read_preferences(dd)


def test_hub_snapshot_directory_reads_the_train_split(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  data = tmp_path / "snap" / "data"
  data.mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(_CHAT_ROWS[:1]), data / "train-00000-of-00002.parquet")
  pq.write_table(pa.Table.from_pylist(_CHAT_ROWS[1:]), data / "train-00001-of-00002.parquet")
  pq.write_table(pa.Table.from_pylist(_CHAT_ROWS[:1]), data / "test-00000-of-00001.parquet")
  (tmp_path / "snap" / "README.md").write_text("card")
  records = read_preferences(tmp_path / "snap")
  assert len(records) == 2 and records[1].prompt == "Name a colour."


def test_directory_without_data_names_the_supported_layouts(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("x")
  with pytest.raises(
    ValueError,
    match=r"empty: a directory with no preference data.*supported: a \.jsonl.*"
    r"save_to_disk.*Hub snapshot",
  ):
    read_preferences(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"no such preference file \(supported: a \.jsonl"):
    read_preferences(tmp_path / "missing.jsonl")
