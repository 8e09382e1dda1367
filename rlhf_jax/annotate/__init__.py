"""Preference annotation web app: people choose the better of two responses (A, B or tie).

``python -m rlhf_jax.annotate serve --db labels.sqlite --queue RUN/annotation_queue`` serves the
pairs a pipeline round (``feedback.source = "human"``) waits for; see docs/annotate.md and
:mod:`rlhf_jax.annotate.cli`. Pieces:

* :mod:`rlhf_jax.annotate.store` — the SQLite (WAL) label store.
* :mod:`rlhf_jax.annotate.app` — the Starlette app (``create_app``); needs the ``annotate``
  extra (starlette, uvicorn).
* :mod:`rlhf_jax.annotate.queue_sync` — the bridge to :mod:`rlhf_jax.feedback.human` queues.
* :mod:`rlhf_jax.annotate.report` — inter-annotator agreement.

Nothing here imports JAX unless the demo mode loads a reward model.
"""

from rlhf_jax.annotate.store import Conflict, NotFound, Store, StoreError, majority_label

__all__ = ["Store", "StoreError", "Conflict", "NotFound", "majority_label"]
