import sys

from rlhf_jax.annotate.cli import main

sys.exit(main())
