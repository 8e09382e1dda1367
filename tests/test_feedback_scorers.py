"""Built-in gold scorers."""

import numpy as np
import pytest

from rlhf_jax.feedback.scorers import (
  BUILTIN_SCORERS,
  get_scorer,
  kind_and_clean,
  lexicon_offensiveness,
  make_kind_and_clean,
  offensiveness,
  offensiveness_backend,
  response_length,
  vader_sentiment,
)

RESPONSES = [
  "What a wonderful, lovely day!",
  "This is terrible and sad.",
  "The box is on the table.",
  "",
]


def test_vader_sentiment_orders_and_shapes():
  s = vader_sentiment([""] * 4, RESPONSES)
  assert s.dtype == np.float32 and s.shape == (4,)
  assert s[0] > 0.5 and s[1] < -0.3 and s[2] == 0.0 and s[3] == 0.0
  assert np.all((s >= -1) & (s <= 1))
  with pytest.raises(ValueError, match="2 prompts but 1 responses"):
    vader_sentiment(["a", "b"], ["x"])
  with pytest.raises(TypeError, match="single str"):
    vader_sentiment("a", "x")


def test_response_length():
  np.testing.assert_array_equal(response_length(["p"] * 3, ["one two", "", " a  b c "]), [2, 0, 3])


def test_lexicon_offensiveness():
  p = lexicon_offensiveness(["you stupid idiot", "a kind word", "SHIT."])
  np.testing.assert_allclose(p, [0.75, 0.0, 0.5])


def test_offensiveness_backends():
  texts = ["you are a fucking idiot", "thank you for the lovely flowers"]
  lex = offensiveness(["p"] * 2, texts, backend="lexicon")
  assert lex[0] > lex[1] == 0.0
  if offensiveness_backend() == "alt-profanity-check":
    model = offensiveness(["p"] * 2, texts, backend="profanity_check")
    assert model.dtype == np.float32 and model[0] > 0.9 and model[1] < 0.2
  else:
    with pytest.raises(ImportError, match="alt-profanity-check"):
      offensiveness(["p"] * 2, texts, backend="profanity_check")
  with pytest.raises(ValueError, match="backend"):
    offensiveness(["p"], ["x"], backend="nope")
  assert offensiveness([], []).shape == (0,)


def test_kind_and_clean_penalises_offence_at_equal_sentiment():
  prompts = ["p"] * 2
  texts = ["You did great, you clever idiot!", "You did great, you clever friend!"]
  k = kind_and_clean(prompts, texts)
  assert k.shape == (2,) and k[0] < k[1]
  v = vader_sentiment(prompts, texts)
  assert np.all(k <= v + 1e-6)
  strong = make_kind_and_clean(weight=3.0, backend="lexicon")(prompts, texts)
  np.testing.assert_allclose(strong, v - 3.0 * lexicon_offensiveness(texts), rtol=1e-6)


def test_get_scorer():
  assert get_scorer("vader_sentiment") is vader_sentiment
  assert set(BUILTIN_SCORERS) >= {"vader_sentiment", "kind_and_clean", "response_length"}
  assert get_scorer("rlhf_jax.feedback.scorers:response_length") is response_length
  with pytest.raises(ValueError, match="unknown scorer 'sentimentz'"):
    get_scorer("sentimentz")


def test_afinn_scorers_hand_values():
  import numpy as np

  from rlhf_jax.feedback import scorers

  # AFINN: "excellent" = +3 -> tanh(3/5); "hate" -3 and "idiot" -3 -> tanh(-6/5).
  got = scorers.afinn_sentiment(["", ""], ["This is excellent", "I hate you idiot"])
  np.testing.assert_allclose(got, [np.tanh(0.6), np.tanh(-1.2)], rtol=1e-6)
  kind = scorers.afinn_kindness(["", ""], ["This is excellent", "I hate you idiot"])
  off = scorers.lexicon_offensiveness(["This is excellent", "I hate you idiot"])
  np.testing.assert_allclose(kind, got - off, rtol=1e-6)
  assert scorers.get_scorer("afinn_kindness") is scorers.afinn_kindness
