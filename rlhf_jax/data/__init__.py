"""Data layer: corpus, tokenizers, preference records, TFDS (array_record) storage and grain feeding.

Library functions take explicit arguments; nothing here reads a config object or imports jax.
"""

from rlhf_jax.data.corpus import (
  SOURCES,
  Corpus,
  CorpusFetchError,
  Document,
  document_sentences,
  load_corpus,
  make_opening_prompts,
  prepare_corpus,
  split_of,
  split_sentences,
)
from rlhf_jax.data.files import (
  atomic_directory,
  atomic_write_bytes,
  atomic_write_json,
  atomic_write_jsonl,
  atomic_write_text,
  read_jsonl,
)
from rlhf_jax.data.preferences import (
  LABELS,
  PreferenceFormatError,
  PreferenceRecord,
  check_metadata,
  import_preferences,
  parse_preference_row,
  read_preferences,
  records_from_rows,
  render_chat,
  write_preferences_jsonl,
)
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
from rlhf_jax.data.tokenizer import (
  BOS_TOKEN,
  EOS_TOKEN,
  PAD_TOKEN,
  TokenizerFileError,
  encode_prompts,
  encode_texts,
  fetch_gpt2_bpe_files,
  load_gpt2_bpe,
  load_tokenizer,
  pack_texts,
  train_tokenizer,
)

__all__ = [
  # corpus
  "SOURCES",
  "Corpus",
  "CorpusFetchError",
  "Document",
  "document_sentences",
  "load_corpus",
  "make_opening_prompts",
  "prepare_corpus",
  "split_of",
  "split_sentences",
  # files
  "atomic_directory",
  "read_jsonl",
  "atomic_write_bytes",
  "atomic_write_json",
  "atomic_write_jsonl",
  "atomic_write_text",
  # preferences
  "LABELS",
  "PreferenceFormatError",
  "PreferenceRecord",
  "check_metadata",
  "import_preferences",
  "parse_preference_row",
  "read_preferences",
  "records_from_rows",
  "render_chat",
  "write_preferences_jsonl",
  # tfds / grain
  "decode_text_fields",
  "grain_dataset",
  "open_tfds_split",
  "preference_from_example",
  "tfds_split_sizes",
  "write_documents_tfds",
  "write_preferences_tfds",
  "write_prompts_tfds",
  "write_tfds_dataset",
  "write_token_rows_tfds",
  # tokenizers
  "BOS_TOKEN",
  "EOS_TOKEN",
  "PAD_TOKEN",
  "TokenizerFileError",
  "encode_prompts",
  "encode_texts",
  "fetch_gpt2_bpe_files",
  "load_gpt2_bpe",
  "load_tokenizer",
  "pack_texts",
  "train_tokenizer",
]
