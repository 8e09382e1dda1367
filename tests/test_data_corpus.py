"""Corpus cleaning, splitting, caching and prompt making, on tiny hand-made inputs (no network),
plus one slow test that fetches the real corpus."""

import gzip
import json
import math
import os
import stat
import warnings
import zlib

import numpy as np
import pytest

from rlhf_jax.data import corpus as corpus_lib
from rlhf_jax.data.corpus import (
  CorpusFetchError,
  Document,
  document_sentences,
  load_corpus,
  make_opening_prompts,
  parse_austen_novel,
  parse_bible_text,
  parse_fortune_file,
  parse_shakespeare_text,
  prepare_corpus,
  read_r_lazyload_database,
  split_of,
  split_sentences,
)


def test_split_sentences_respects_abbreviations_and_initials():
  text = 'Mr. Bennet replied that he had not.  "But it is," returned she!\nThen J. R. Smith left St. Paul\'s. Why? Because.'
  assert split_sentences(text) == [
    "Mr. Bennet replied that he had not.",
    '"But it is," returned she!',
    "Then J. R. Smith left St. Paul's.",
    "Why?",
    "Because.",
  ]
  assert split_sentences("   ") == []


def test_document_sentences_drop_speakers_headings_directions_and_attributions():
  doc = Document(
    "x/1",
    "shakespeare",
    "t",
    (
      "SCENE I. An open Place.",
      "[Enter three Witches.]",
      "FIRST WITCH.\nWhen shall we three meet again?\nIn thunder, lightning, or in rain?",
      "A dream will always triumph over reality.\n-- Stanislaw Lem",
      "Too short.",
    ),
  )
  assert document_sentences(doc) == [
    "When shall we three meet again?",
    "In thunder, lightning, or in rain?",
    "A dream will always triumph over reality.",
  ]


def test_parse_fortune_file_splits_quotes_and_drops_art_and_scraps():
  text = (
    "A clash of doctrine is not a disaster -- it is an opportunity.\n%\n"
    "A dream will always triumph over reality, once it is given the chance.\n"
    "\t\t-- Stanislaw Lem\n%\n"
    "  /\\__/\\  \n ( o.o ) \n  > ^ <  ||| ### ***\n%\n"
    "Hi.\n%\n"
    "First paragraph here,\nstill the first.\n\n\tSecond paragraph now.\n"
  )
  docs = parse_fortune_file(text, "wisdom")
  assert [d.doc_id for d in docs] == [
    "fortunes/wisdom/00000",
    "fortunes/wisdom/00001",
    "fortunes/wisdom/00004",
  ]
  assert docs[1].paragraphs == (
    "A dream will always triumph over reality, once it is given the chance.\n-- Stanislaw Lem",
  )
  assert docs[2].paragraphs == ("First paragraph here,\nstill the first.", "Second paragraph now.")
  assert all(d.source == "fortunes" for d in docs)


def test_parse_bible_text_one_document_per_chapter():
  text = (
    "\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n"
    "  2 And the earth was without form, and void; and darkness was upon the face of\n"
    "the deep.\n\nI Samuel 2\n\n  1 And Hannah prayed, and said.\n"
  )
  docs = parse_bible_text(text)
  assert [d.doc_id for d in docs] == ["bible/Genesis_1", "bible/I_Samuel_2"]
  assert docs[0].paragraphs == (
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
  )
  assert docs[1].title == "King James Bible, I Samuel 2"


AUSTEN_LINES = [
  "EMMA",
  "",
  "By Jane Austen",
  "",
  "VOLUME I",
  "",
  "CHAPTER I",
  "",
  "",
  "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
  "and happy disposition.",
  "",
  '"It is _very_ kind," said she.',
  "",
  "",
  "CHAPTER II",
  "",
  "Mr. Weston was a native of Highbury.",
  "",
  "THE END",
]


def test_parse_austen_novel_chapters_paragraphs_and_italics():
  docs = parse_austen_novel(AUSTEN_LINES, "emma", "Emma")
  assert [d.doc_id for d in docs] == ["austen/emma/ch001", "austen/emma/ch002"]
  assert docs[0].paragraphs == (
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
    '"It is very kind," said she.',
  )
  assert docs[1].paragraphs == ("Mr. Weston was a native of Highbury.",)
  assert docs[1].title == "Emma, chapter 2"


def _serialize_r(obj):
  from rdata.conversion import convert_python_to_r_data
  from rdata.unparser import unparse_data

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return unparse_data(convert_python_to_r_data(obj), file_type="rds")


def test_read_r_lazyload_database_roundtrip(tmp_path):
  pytest.importorskip("rdata")
  novel = np.array(AUSTEN_LINES)
  other = np.array(["PERSUASION", "", "Chapter 1", "", "Sir Walter Elliot, of Kellynch Hall."])
  blobs, variables, offset = b"", {}, 0
  for name, obj in (("emma", novel), ("persuasion", other)):
    raw = _serialize_r(obj)
    entry = len(raw).to_bytes(4, "big") + zlib.compress(raw)
    variables[name] = np.array([offset, len(entry)], dtype=np.int32)
    blobs += entry
    offset += len(entry)
  index = _serialize_r({"variables": variables, "references": {}, "compressed": np.array([True])})
  (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(index))
  (tmp_path / "Rdata.rdb").write_bytes(blobs)
  out = read_r_lazyload_database(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb")
  assert sorted(out) == ["emma", "persuasion"]
  assert list(out["persuasion"]) == list(other)
  assert (
    parse_austen_novel(list(out["emma"]), "emma", "Emma")[0].paragraphs[1]
    == '"It is very kind," said she.'
  )
  (tmp_path / "bad.rdx").write_bytes(b"not gzip")
  with pytest.raises(ValueError, match="bad.rdx"):
    read_r_lazyload_database(tmp_path / "bad.rdx", tmp_path / "Rdata.rdb")


PLAY = """MACBETH

by William Shakespeare

Persons Represented

DUNCAN, King of Scotland.

ACT I.

SCENE I. An open Place. Thunder and Lightning.

[Enter three Witches.]

FIRST WITCH.
When shall we three meet again?
In thunder, lightning, or in rain?

SCENE II. A Camp near Forres.

DUNCAN.
What bloody man is that?
"""


def test_parse_shakespeare_play_one_document_per_scene():
  docs = parse_shakespeare_text(PLAY, "macbeth", "Macbeth")
  assert [d.doc_id for d in docs] == ["shakespeare/macbeth/s001", "shakespeare/macbeth/s002"]
  assert docs[0].paragraphs == (
    "SCENE I. An open Place. Thunder and Lightning.",
    "[Enter three Witches.]",
    "FIRST WITCH.\nWhen shall we three meet again?\nIn thunder, lightning, or in rain?",
  )
  assert docs[0].title == "Macbeth, act I scene i"
  assert docs[1].paragraphs[-1] == "DUNCAN.\nWhat bloody man is that?"


def test_parse_shakespeare_poem_is_chunked():
  stanzas = "\n\n".join(
    f"I\n\nline {i} of the sonnet with several words in it\nanother line" for i in range(20)
  )
  docs = parse_shakespeare_text(
    "THE SONNETS\nby William Shakespeare\n\n" + stanzas, "sonnets", "The Sonnets", chunk_words=40
  )
  assert len(docs) > 1 and all(d.doc_id.startswith("shakespeare/sonnets/c") for d in docs)
  assert "by William Shakespeare" not in docs[0].text
  assert sum(len(d.paragraphs) for d in docs) == 40


def test_split_of_is_deterministic_and_matches_fraction():
  ids = [f"src/doc{i}" for i in range(20000)]
  splits = [split_of(i, 0.1) for i in ids]
  assert splits == [split_of(i, 0.1) for i in ids]
  frac = splits.count("heldout") / len(ids)
  assert abs(frac - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(ids))
  assert all(split_of(i, 0.0) == "train" for i in ids[:100])


def _write_cache(cache, source, docs):
  folder = cache / f"corpus_v{corpus_lib.CORPUS_FORMAT_VERSION}"
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / f"{source}.jsonl", "w") as f:
    for d in docs:
      f.write(json.dumps(d.to_json()) + "\n")


def test_prepare_corpus_reads_cache_without_fetching(tmp_path, monkeypatch):
  docs = [
    Document(f"fortunes/f/{i:05d}", "fortunes", "fortune: f", (f"Quote number {i} is wise.",))
    for i in range(200)
  ]
  _write_cache(tmp_path, "fortunes", docs)

  def no_fetch(*args, **kwargs):
    raise AssertionError("a cached corpus must not be fetched again")

  monkeypatch.setattr(corpus_lib, "_download", no_fetch)
  monkeypatch.setattr(corpus_lib, "_run", no_fetch)
  c = prepare_corpus(tmp_path, sources=("fortunes",), heldout_fraction=0.2, progress=False)
  again = prepare_corpus(tmp_path, sources=("fortunes",), heldout_fraction=0.2, progress=False)
  assert c.train == again.train and c.heldout == again.heldout
  assert len(c.train) + len(c.heldout) == 200 and 0 < len(c.heldout) < 100
  assert {d.doc_id for d in c.heldout} == {
    d.doc_id for d in docs if split_of(d.doc_id, 0.2) == "heldout"
  }
  stats = c.stats()
  assert stats["train"]["total"]["documents"] == len(c.train)
  assert stats["heldout"]["fortunes"]["words"] == 5 * len(c.heldout)
  assert c.sentences("heldout")[0].startswith("Quote number")
  with pytest.raises(FileNotFoundError, match="bible.jsonl"):
    load_corpus(tmp_path, sources=("bible",))


def test_prepare_corpus_rejects_unknown_source(tmp_path):
  with pytest.raises(ValueError, match="wikipedia"):
    prepare_corpus(tmp_path, sources=("wikipedia",), progress=False)


def test_fetch_failure_names_source_and_command_and_leaves_nothing(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "apt-get"
  fake.write_text("#!/bin/sh\necho 'E: simulated mirror failure' >&2\nexit 100\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  cache = tmp_path / "cache"
  with pytest.raises(CorpusFetchError) as info:
    prepare_corpus(cache, sources=("fortunes",), progress=False)
  msg = str(info.value)
  assert "'fortunes'" in msg and "apt-get download fortunes fortunes-min" in msg
  assert "simulated mirror failure" in msg and "sources=" in msg
  assert not (cache / "downloads" / "fortunes").exists()
  assert not list(cache.rglob("*.jsonl"))


def test_corrupt_cache_line_is_named(tmp_path):
  _write_cache(
    tmp_path, "bible", [Document("bible/Genesis_1", "bible", "t", ("In the beginning.",))]
  )
  path = tmp_path / f"corpus_v{corpus_lib.CORPUS_FORMAT_VERSION}" / "bible.jsonl"
  with open(path, "a") as f:
    f.write("{not json\n")
  with pytest.raises(ValueError, match=r"bible.jsonl:2"):
    load_corpus(tmp_path, sources=("bible",))


SENTENCES = [
  "It is a truth universally acknowledged that a single man must want a wife.",
  '"My dear Mr. Bennet," said his lady to him one day.',
  "Short one.",
  "The evening and the morning were the first day.",
  "Stop. Here we go again and again.",
]


def test_make_opening_prompts_fixed_k():
  prompts = make_opening_prompts(SENTENCES, num_words=3, seed=0)
  assert sorted(prompts) == sorted(["It is a", "My dear Mr.", "The evening and"])
  assert prompts == make_opening_prompts(SENTENCES, num_words=3, seed=0)
  assert make_opening_prompts(SENTENCES, num_words=3, num_prompts=2, seed=0) == prompts[:2]


def test_make_opening_prompts_range_and_errors():
  prompts = make_opening_prompts(SENTENCES * 5, num_words=(2, 4), seed=1, dedupe=False)
  assert prompts and all(2 <= len(p.split()) <= 4 for p in prompts)
  assert len(set(make_opening_prompts(SENTENCES * 5, num_words=(2, 4), seed=1))) == len(
    make_opening_prompts(SENTENCES * 5, num_words=(2, 4), seed=1)
  )
  with pytest.raises(ValueError, match="num_words"):
    make_opening_prompts(SENTENCES, num_words=(3, 2))


@pytest.mark.slow
def test_prepare_real_corpus(tmp_path):
  c = prepare_corpus(tmp_path, progress=False)
  stats = c.stats()
  total = stats["train"]["total"]["words"] + stats["heldout"]["total"]["words"]
  assert total > 2_000_000
  assert {d.source for d in c.train} == set(corpus_lib.SOURCES)
  prompts = make_opening_prompts(c.sentences("heldout"), num_words=4, num_prompts=100, seed=0)
  assert len(prompts) == 100
  again = prepare_corpus(tmp_path, progress=False)  # cached: no fetch
  assert len(again.train) == len(c.train)
