"""Test-session setup: 8 simulated CPU devices so mesh code runs in every test process."""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
