"""Google Tunix GRPO on the critic-free workload of bench/grpo.py, as a peer run in Tunix's venv.

  $VENVS/tunix/bin/python bench/peers/grpo_tunix.py --size small --iters 4 --prompts 32 \
    --num-generations 2 --prompt-len 32 --response-len 32 --epochs 4 --minibatches 4

venv: Python 3.12, jax 0.12.0.1, flax 0.12.12, optax 0.2.8, google-tunix 0.1.7 (the Tunix PPO
anchor's, ``../shared/anchors/ppo_tunix.py``).

Models (as in ppo_tunix.py): a Tunix Qwen3 of the anchors' "small" (4 layers x 256, 4 heads of
64) or "medium" (8 x 512, 8 heads) shape, SwiGLU width ~8/3 D (parameter-matched to GPT-2's 4D
MLP), vocabulary 8192, untied embeddings, f32, random init; the reference is the same init.
Tokenizer: ``tunix.tests.test_common.MockVocab`` with 8192 words ("t3".."t8191"; pad 0, BOS 1,
EOS 2). Prompts: ``prompt-len - 1`` random words, BOS prepended by the sampler.

Reward model. Tunix GRPO scores completions with reward *functions* on (prompt, completion)
strings, not a model. The workload's reward is a scalar reward model (random init), so the
reward function here is that model: ``rl_utils.create_critic_model(Qwen3(cfg, Rngs(2)),
seed=1)`` (lm_head -> Linear(D, 1), as ppo_tunix.py builds its reward model), applied to BOS +
prompt (left-padded to ``prompt-len``) + completion (right-padded to ``response-len``),
re-encoded from the strings with the same MockVocab, by a jitted ``tunix.rl.common.
compute_score`` forward (Tunix's own reward-model scoring: causal mask and positions from the
padding), taking the value at the last non-pad position. Its time (encoding, padding and the
forward) counts in Tunix's iteration, as the reward-model forward counts in ours and TRL's.

Configuration. In Tunix 0.1.7 (``rl_learner.RLLearner.train``), ``mini_batch_size`` and
``train_micro_batch_size`` are counted in PROMPTS (before the x G repeat): one element of the
data set is one global batch of ``prompts`` prompts; ``_run_global_step`` runs ``prompts //
mini_batch_size`` mini-batch steps, and each mini-batch step takes ``mini_batch_size /
train_micro_batch_size`` (= gradient accumulation steps) micro-batches of
``train_micro_batch_size`` prompts, repeats each prompt G times, rolls them out, scores them
(reference and old-policy log-probs, rewards, group advantages), then feeds the resulting
``train_micro_batch_size * G`` completions to the actor trainer ``num_iterations`` times; one
optimizer step per ``mini_batch_size`` prompts. Here ``mini_batch_size = train_micro_batch_size
= prompts / minibatches`` (8 prompts = 16 completions at the default workload), so one global
step = ``prompts * G`` sampled completions (64) and ``epochs x minibatches`` optimizer steps
(16) of ``prompts * G / minibatches`` completions (16) each, asserted from the actor trainer's
``train_steps``. GRPOConfig(num_generations=G, num_iterations=epochs, beta=0.05,
kl_loss_mode="low_var_kl" (the k3 estimator, as TRL's and ours), epsilon=0.2,
loss_agg_mode="token-mean" (TRL's "dapo" token mean over the minibatch; ours
loss_reduction="token")), AdamW lr 1e-5; rollout engine "vanilla" (Tunix's JAX sampler with a
KV cache), temperature 1, top_p 1, no top_k, stop token = id 8192 (outside the vocabulary,
never sampled: every completion is ``response-len`` tokens, as in ours). All roles share one
CPU device (the empty physical mesh), so rollout is synchronous and no weight sync happens.

Unavoidable differences from TRL / ours (same sampled completions, forwards and optimizer steps
per iteration; a different order): Tunix rolls out and scores each minibatch just before that
minibatch's ``epochs`` optimizer steps (4 rollouts of 16 completions per global step, the later
ones sampled from the already-updated policy), where TRL and ours sample all 64 completions in
one batch and then run the 4 epochs over the 4 minibatches; so Tunix's sampler and scoring
forwards run at a quarter of the batch, and each minibatch's epochs are consecutive. Tunix's
importance ratio and old log-probs are per token, as ours.

Seconds per iteration = wall time of one ``learner._run_global_step`` (the first = compilation,
excluded); samples/s = ``prompts * G`` / that time. The breakdown sums Tunix's RLCluster calls
(generate, reference and old log-probs, update_actor) and the reward function per global step.
Prints ``RESULT {json}`` (tag "grpo_tunix") and appends it to $BENCH_RESULTS_DIR/grpo_tunix.jsonl.
"""

import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import _common  # noqa: E402  (stdlib only at import)

sys.path.insert(0, _common.ANCHORS)
from benchutil import emit, env_info, summarize  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--size", default="small", choices=["small", "medium"])
ap.add_argument("--iters", type=int, default=4, help="global steps incl. 1 warm-up")
ap.add_argument("--prompts", type=int, default=32, help="prompts per global step")
ap.add_argument("--num-generations", type=int, default=2, help="completions per prompt (G)")
ap.add_argument("--prompt-len", type=int, default=32, help="incl. BOS")
ap.add_argument("--response-len", type=int, default=32)
ap.add_argument("--epochs", type=int, default=4, help="GRPO num_iterations")
ap.add_argument("--minibatches", type=int, default=4, help="optimizer steps per epoch")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
if args.iters < 2:
  ap.error("--iters must be >= 2 (the first global step is excluded)")
if args.num_generations < 2:
  ap.error("--num-generations must be >= 2 (GRPO's group advantage needs two completions)")
if args.prompts % args.minibatches:
  ap.error(f"--prompts {args.prompts} must be divisible by --minibatches {args.minibatches}")
if args.prompt_len < 2:
  ap.error("--prompt-len must be >= 2 (BOS + at least one word)")
if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = (
    "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=%d" % args.threads
  )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import tunix  # noqa: E402
from flax import nnx  # noqa: E402
from jax.interpreters import pxla  # noqa: E402
from tunix.models.qwen3 import model as qwen  # noqa: E402
from tunix.rl import common as rl_common  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl import utils as rl_utils  # noqa: E402
from tunix.rl.grpo import grpo_learner as grpo_lib  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402
from tunix.tests import test_common as tc  # noqa: E402

SIZES = {"small": (4, 256, 4), "medium": (8, 512, 8)}
VOCAB = 8192
PAD, BOS, EOS = 0, 1, 2
n_layer, d, h = SIZES[args.size]
cfg = qwen.ModelConfig(
  num_layers=n_layer,
  vocab_size=VOCAB,
  embed_dim=d,
  hidden_dim=int(round(d * 8 / 3 / 16)) * 16,
  num_heads=h,
  head_dim=d // h,
  num_kv_heads=h,
  rope_theta=10_000,
  norm_eps=1e-5,
  use_tied_embedding=False,
)

mapping = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}
mapping.update({"t%d" % i: i for i in range(3, VOCAB)})
vocab = tc.MockVocab(mapping_text_to_id=mapping)

actor = qwen.Qwen3(cfg, rngs=nnx.Rngs(0))
ref = qwen.Qwen3(cfg, rngs=nnx.Rngs(0))
reward_model = rl_utils.create_critic_model(qwen.Qwen3(cfg, rngs=nnx.Rngs(2)), seed=1)
n_params = sum(x.size for x in jax.tree.leaves(nnx.state(actor, nnx.Param)))

# ---- the reward model as a Tunix reward function ----
T = collections.defaultdict(float)
rm_graph, rm_state = nnx.split(reward_model)


@jax.jit
def _score_B(state, prompt_ids_BP, completion_ids_BN):
  """Reward-model value at each row's last non-pad position (prompt left-, completion
  right-padded; Tunix's compute_score builds the causal mask and positions from the pads)."""
  model = nnx.merge(rm_graph, state)
  scores_BT = rl_common.compute_score(model, prompt_ids_BP, completion_ids_BN, PAD, EOS)
  ids_BT = jnp.concatenate([prompt_ids_BP, completion_ids_BN], axis=1)
  t = jnp.arange(ids_BT.shape[1])
  last_B = jnp.max(jnp.where(ids_BT != PAD, t, 0), axis=1)
  return jnp.take_along_axis(scores_BT, last_B[:, None], axis=1)[:, 0]


def reward_model_fn(prompts, completions, **kwargs):
  """Scalar reward-model score of each (prompt, completion) string pair, re-encoded."""
  t0 = time.perf_counter()
  p, n = args.prompt_len, args.response_len
  prompt_ids_BP = np.full((len(prompts), p), PAD, np.int32)
  completion_ids_BN = np.full((len(prompts), n), PAD, np.int32)
  for i, (pr, co) in enumerate(zip(prompts, completions)):
    pi = ([BOS] + vocab.EncodeAsIds(pr))[-p:]
    ci = vocab.EncodeAsIds(co)[:n]
    prompt_ids_BP[i, p - len(pi) :] = pi
    completion_ids_BN[i, : len(ci)] = ci
  score_B = np.asarray(_score_B(rm_state, prompt_ids_BP, completion_ids_BN))
  T["reward_fn"] += time.perf_counter() - t0
  return score_B.tolist()


# ---- cluster and learner ----
mesh = pxla.thread_resources.env.physical_mesh  # empty mesh = single CPU device
rollout_cfg = base_rollout.RolloutConfig(
  max_tokens_to_generate=args.response_len,
  max_prompt_length=args.prompt_len,
  kv_cache_size=args.prompt_len + args.response_len + 8,
  temperature=1.0,
  top_p=1.0,
  top_k=None,
  eos_tokens=[VOCAB],  # outside the vocabulary: never sampled, full-length completions
  data_type=jnp.float32,
)
mini_batch_prompts = args.prompts // args.minibatches
steps_per_iter = args.epochs * args.minibatches
gen_batch = args.prompts * args.num_generations
cluster_cfg = rl_cluster_lib.ClusterConfig(
  role_to_mesh={
    r: mesh
    for r in (
      rl_cluster_lib.Role.ACTOR,
      rl_cluster_lib.Role.REFERENCE,
      rl_cluster_lib.Role.ROLLOUT,
    )
  },
  rollout_engine="vanilla",
  offload_to_cpu=False,
  training_config=rl_cluster_lib.RLTrainingConfig(
    actor_optimizer=optax.adamw(1e-5),
    eval_every_n_steps=10**9,
    max_steps=steps_per_iter * args.iters,
    mini_batch_size=mini_batch_prompts,  # prompts per optimizer step (x G completions)
    train_micro_batch_size=mini_batch_prompts,  # no gradient accumulation
  ),
  rollout_config=rollout_cfg,
)
cluster = rl_cluster_lib.RLCluster(
  actor=actor, reference=ref, tokenizer=vocab, cluster_config=cluster_cfg
)
grpo_cfg = grpo_lib.GRPOConfig(
  num_generations=args.num_generations,
  num_iterations=args.epochs,
  beta=0.05,
  kl_loss_mode="low_var_kl",
  epsilon=0.2,
  loss_agg_mode="token-mean",
)
learner = grpo_lib.GRPOLearner(
  rl_cluster=cluster, algo_config=grpo_cfg, reward_fns=[reward_model_fn]
)


# ---- timers ----
def wrap(obj, name, key):
  orig = getattr(obj, name)

  def w(*a, **k):
    t0 = time.perf_counter()
    try:
      out = orig(*a, **k)
      if out is not None:
        jax.block_until_ready(out)
      return out
    finally:
      T[key] += time.perf_counter() - t0

  setattr(obj, name, w)


for nm, key in [
  ("generate", "gen"),
  ("get_ref_per_token_logps", "ref_logps"),
  ("get_old_per_token_logps", "old_logps"),
  ("update_actor", "update_actor"),
]:
  wrap(cluster, nm, key)

marks, parts, steps = [], [], []
orig_global = learner._run_global_step


def timed_global(*a, **k):
  t0 = time.perf_counter()
  before = dict(T)
  s0 = cluster.actor_trainer.train_steps
  orig_global(*a, **k)
  marks.append(time.perf_counter() - t0)
  parts.append({kk: T[kk] - before.get(kk, 0.0) for kk in T})
  steps.append(cluster.actor_trainer.train_steps - s0)


learner._run_global_step = timed_global

rng = np.random.default_rng(0)
n_words = args.prompt_len - 1  # BOS is prepended by the sampler
train_ds = [
  {
    "prompts": [
      " ".join("t%d" % x for x in rng.integers(3, VOCAB, n_words)) for _ in range(args.prompts)
    ]
  }
  for _ in range(args.iters)
]
t0 = time.perf_counter()
learner.train(train_ds)
total = time.perf_counter() - t0
assert len(marks) == args.iters, (len(marks), args.iters)
assert steps == [steps_per_iter] * args.iters, (steps, steps_per_iter)
assert int(cluster.actor_trainer.train_steps) == steps_per_iter * args.iters
r = summarize(marks[1:])
bd = {k: round(summarize([p.get(k, 0.0) for p in parts[1:]])["median"], 4) for k in parts[-1]}
emit(
  "grpo_tunix",
  dict(
    algo="grpo",
    size=args.size,
    model="tunix Qwen3 tiny",
    model_cfg=dict(
      num_layers=cfg.num_layers,
      embed_dim=cfg.embed_dim,
      hidden_dim=cfg.hidden_dim,
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      vocab=cfg.vocab_size,
      tied=cfg.use_tied_embedding,
    ),
    n_params_actor=int(n_params),
    prompts=args.prompts,
    num_generations=args.num_generations,
    gen_batch=gen_batch,
    prompt_len=args.prompt_len,
    response_len=args.response_len,
    epochs=args.epochs,
    minibatches=args.minibatches,
    mini_batch_size_prompts=mini_batch_prompts,
    completions_per_opt_step=mini_batch_prompts * args.num_generations,
    opt_steps_per_iter=steps_per_iter,
    actor_train_steps=int(cluster.actor_trainer.train_steps),
    actor_train_steps_per_iter=steps,
    grpo_config=dict(
      beta=grpo_cfg.beta,
      epsilon=grpo_cfg.epsilon,
      kl_loss_mode=grpo_cfg.kl_loss_mode,
      loss_agg_mode=grpo_cfg.loss_agg_mode,
    ),
    s_per_iter=r,
    samples_per_s_best=gen_batch / r["min"],
    samples_per_s_median=gen_batch / r["median"],
    first_iter_s=marks[0],
    per_iter_s=[round(m, 3) for m in marks],
    breakdown_median_s=bd,
    total_train_s=total,
    versions=dict(
      jax=jax.__version__,
      tunix=getattr(tunix, "__version__", "0.1.7"),
      flax=__import__("flax").__version__,
      optax=optax.__version__,
      python=sys.version.split()[0],
    ),
    XLA_FLAGS=os.environ.get("XLA_FLAGS"),
    info=env_info(),
    loadavg=os.getloadavg(),
  ),
  out_dir=os.environ.get("BENCH_RESULTS_DIR", "/tmp/rlhf_jax_peer_results"),
)
