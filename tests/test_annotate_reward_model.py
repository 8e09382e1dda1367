"""Demo mode's reward model from a checkpoint directory: `rlhf_jax.annotate.cli.load_reward_scorer`
scores (prompt, response) exactly as the reward trainer tokenises and scores its pairs."""

import numpy as np
import pytest

from rlhf_jax import data as data_lib
from rlhf_jax.models import Transformer, TransformerConfig, init_params, save_pretrained
from rlhf_jax.reward import score_sequences
from rlhf_jax.train import reward as reward_train


def _word_tokenizer():
  import transformers as tr
  from tokenizers import Tokenizer, models, pre_tokenizers

  words = "the day was good bad sad fine i am so very not".split()
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
  raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  return tr.PreTrainedTokenizerFast(
    tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
  )


def test_demo_scorer_equals_the_reward_trainers_scores(tmp_path):
  import jax

  from rlhf_jax.annotate.cli import load_reward_scorer

  tok = _word_tokenizer()
  cfg = TransformerConfig(
    vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=32, head="scalar"
  )
  model = Transformer(cfg)
  params = init_params(model, jax.random.PRNGKey(0))
  save_pretrained(model, params, tmp_path / "rm", tokenizer=tok)
  prompts = ["the day was", "i am", "the day was"]
  responses = ["good", "so very sad", "not fine"]
  got = load_reward_scorer(str(tmp_path / "rm"), prompt_len=6, response_len=5)(prompts, responses)

  records = [
    data_lib.PreferenceRecord(prompt=p, response_a=r, response_b=r, label="a")
    for p, r in zip(prompts, responses)
  ]
  pairs = reward_train.tokenize_pairs(tok, records, prompt_len=6, response_len=5)
  want = score_sequences(model, params, pairs["ids_a"], pairs["mask_a"])
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)
  assert len(set(np.round(got, 6))) == 3  # distinct inputs, distinct scores


def test_demo_scorer_refuses_a_language_model(tmp_path):
  import jax

  from rlhf_jax.annotate.cli import load_reward_scorer

  cfg = TransformerConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=32)
  model = Transformer(cfg)
  save_pretrained(model, init_params(model, jax.random.PRNGKey(0)), tmp_path / "lm")
  with pytest.raises(ValueError, match="not a reward model"):
    load_reward_scorer(str(tmp_path / "lm"))
