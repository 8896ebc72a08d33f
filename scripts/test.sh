#!/usr/bin/env bash
# The whole test suite: installs the peer tools the oracle tests need, then runs every test.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-peers.sh
bash scripts/install-delta-peers.sh
export TERN_PEERS="$root/.peers"
export TERN_ORACLE_DIR="$root/tests/oracle"
export TERN_CORPUS="${TERN_CORPUS:-$root/../shared/corpus}"
cargo test --workspace --release "$@"
# Opt-in long power-cut run (docs/device.md, "What the power-cut explorer proves"): every
# fault kind, every pair of faults on the synthetic scenarios.
if [ "${TERN_LONG_SWEEP:-0}" = 1 ]; then
  cargo run --release -p tern-cli -- sim powercut --faults all --all-pairs
fi
