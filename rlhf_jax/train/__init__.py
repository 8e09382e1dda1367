"""Training loops: the only Python loops of the library (SFT, reward model, PPO, pipeline).

Each trainer module ``rlhf_jax.train.<name>`` exposes a frozen dataclass ``Config`` and
``run(cfg: Config, workdir: str) -> dict``; ``rlhf_jax.main`` builds ``Config`` from an
ml-collections file and calls ``run``. Shared loop infrastructure lives in
:mod:`rlhf_jax.train.metrics` (metrics, text samples, progress), :mod:`rlhf_jax.checkpoint`
and :mod:`rlhf_jax.distributed`.

Nothing is imported here, so importing one trainer does not import the others.
"""
