"""Test-session setup: 8 simulated CPU devices so mesh code runs in every test process, and a
session-local persistent compilation cache so identical programs built by different tests
(each trainer call builds fresh closures) compile once."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="rlhf_jax_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
