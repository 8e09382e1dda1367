"""Run an anchor peer script (``../shared/anchors``) on a Llama-family shape of bench/_common.

The anchors build GPT-2 models (``hf_common.causal_lm`` / ``seq_classifier``) for their "small"
and "medium" sizes. This wrapper adds the Llama-family sizes of :data:`_common.SIZES` (those
with an ``hf`` config: ``smollm2``) to ``hf_common`` and builds ``LlamaForCausalLM`` /
``LlamaForSequenceClassification`` (random init, same seeds) for them, then runs the anchor
script unchanged, so the peer's workload (batch, lengths, epochs, trainer settings) is the
anchor's own. The anchors' word-level tokenizer keeps its 8 192 ids (pad 8190, EOS 8191),
which index the larger vocabulary. Run in the peer's virtual environment:

  $VENVS/trl112/bin/python bench/peers/anchor_llama.py ppo_trl112.py --size smollm2 --batch 16
  $VENVS/torch/bin/python bench/peers/anchor_llama.py reward_trl.py --size smollm2 --batch 8
"""

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import _common  # noqa: E402  (stdlib only at import)

sys.path.insert(0, _common.ANCHORS)
import hf_common  # noqa: E402

_LLAMA = {name: s["hf"] for name, s in _common.SIZES.items() if "hf" in s}
_gpt2_causal_lm, _gpt2_seq_classifier = hf_common.causal_lm, hf_common.seq_classifier


def _llama_config(size, **kw):
  from transformers import LlamaConfig

  hf = {k: v for k, v in _LLAMA[size].items() if k not in ("architectures", "model_type")}
  vocab = hf_common.VOCAB
  return LlamaConfig(
    **hf, bos_token_id=vocab - 1, eos_token_id=vocab - 1, pad_token_id=vocab - 2, **kw
  )


def causal_lm(size="small", seed=0):
  if size not in _LLAMA:
    return _gpt2_causal_lm(size, seed)
  import torch
  from transformers import LlamaForCausalLM

  torch.manual_seed(seed)
  return LlamaForCausalLM(_llama_config(size))


def seq_classifier(size="small", seed=1):
  if size not in _LLAMA:
    return _gpt2_seq_classifier(size, seed)
  import torch
  from transformers import LlamaForSequenceClassification

  torch.manual_seed(seed)
  return LlamaForSequenceClassification(_llama_config(size, num_labels=1))


def main():
  if len(sys.argv) < 2:
    raise SystemExit(f"usage: {sys.argv[0]} ANCHOR_SCRIPT [its arguments]")
  script = os.path.join(_common.ANCHORS, sys.argv[1])
  if not os.path.exists(script):
    raise SystemExit(f"{sys.argv[0]}: no anchor script {script}")
  for name, s in _common.SIZES.items():
    if name in _LLAMA:  # the anchors' SIZES hold (n_layer, n_embd, n_head)
      hf_common.SIZES[name] = (s["n_layer"], s["n_embd"], s["n_head"])
  hf_common.causal_lm, hf_common.seq_classifier = causal_lm, seq_classifier
  sys.argv = [script, *sys.argv[2:]]
  runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main()
