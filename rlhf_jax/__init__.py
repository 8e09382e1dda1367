"""rlhf_jax: reinforcement learning from human feedback as pure JAX functions.

Public API (stable names; anything not listed here may change):

* ``rlhf_jax.losses``      preference losses with ties, DPO/IPO, PPO/GRPO policy and value
  losses, entropy
* ``rlhf_jax.labels``      the preference label codec: "a" / "b" / "tie" <-> 0 / 1 / 2
* ``rlhf_jax.kl``          KL estimators k1/k2/k3, adaptive and fixed KL controllers
* ``rlhf_jax.advantages``  reward shaping, GAE, GRPO/RLOO group advantages, reward normalisation
* ``rlhf_jax.ops``         masked statistics, whitening, fused token log-probs
* ``rlhf_jax.optim``       TensorFlow-style Adam
* ``rlhf_jax.generation``  KV-cache sampling (``sample``, ``sample_fn``)
* ``rlhf_jax.models``      the Flax transformer, Hugging Face import/export
* ``rlhf_jax.sharding``    meshes and logical-axis shardings
* ``rlhf_jax.lora``        LoRA as a params transform: adapters, merge, the trainable pytree
* ``rlhf_jax.ppo``, ``rlhf_jax.reward``, ``rlhf_jax.sft``   step builders (``ppo``: one
  compiled iteration for PPO and the critic-free GRPO, Dr.GRPO, RLOO, REINFORCE++)
* ``rlhf_jax.data``, ``rlhf_jax.feedback``, ``rlhf_jax.train``   data, judges, loops
  (imported on use: they pull in heavier dependencies)
"""

import importlib
from typing import Any

# The submodules load on first use (PEP 562): `import rlhf_jax.annotate` or
# `rlhf_jax.labels` must not pay for importing JAX. `rlhf_jax.losses` etc. work as before.
_SUBMODULES = (
  "advantages",
  "generation",
  "kl",
  "labels",
  "lora",
  "losses",
  "models",
  "ops",
  "optim",
  "ppo",
  "reward",
  "sft",
  "sharding",
)


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f"rlhf_jax.{name}")
  raise AttributeError(f"module 'rlhf_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_SUBMODULES))


__version__ = "0.1.0"

__all__ = [*_SUBMODULES, "__version__"]
