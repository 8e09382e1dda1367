#!/usr/bin/env bash
# Sourced by setup_env.sh (every launcher): the process environment for XLA:CPU's buffers.
# XLA:CPU allocates a step's buffers with malloc, and glibc serves the large ones with fresh
# mmap'd pages that are unmapped again on free: every step page-faults its whole working set
# (a pretraining step spent 20% of its CPU time in the kernel, 117 000 faults per step;
# docs/performance.md). Transparent huge pages for those mappings (glibc >= 2.35; older
# versions ignore the tunable) cut that to ~500 faults per step.
case ":${GLIBC_TUNABLES:-}:" in
  *:glibc.malloc.hugetlb=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
