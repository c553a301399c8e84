#!/bin/bash
# Soak: SOAK_CYCLES (default 10000) connect/disconnect cycles with traffic against
# rng_backend, net_backend --backend null and blk_backend, one after the other; prints
# each backend's fd count and resident memory every 1000 cycles and at the end, and
# fails if either grew. Release build; takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_CYCLES=${SOAK_CYCLES:-10000}
exec cargo test --release --test soak -- --ignored --test-threads=1 --nocapture "$@"
