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
# Opt-in long power-cut run (docs/device.md, "The acceptance run"): every fault kind, every
# pair of faults and nearby triples on the synthetic scenarios, one part per scenario,
# single-threaded at the lowest priority (hours of CPU in all).
if [ "${TERN_LONG_SWEEP:-0}" = 1 ]; then
  failed=0
  for p in photon argon; do
    for s in app-update system-parts-and-app radio-stack-and-system-part statements-system-part-and-app \
      bootloader-update system-part-and-bootloader bad-app-rollback rollback-also-bad-factory-restore \
      factory-restore-on-request update-during-test-boot interrupted-download-resumed \
      delta-app-update compressed-system-part-and-delta-app; do
      # The Photon has no radio-stack slot.
      [ "$p" = photon ] && [ "$s" = radio-stack-and-system-part ] && continue
      env -u TERN_CORPUS nice -n 19 cargo run --release -q -p tern-cli -- sim powercut \
        --faults all --all-pairs --threads 1 --profile "$p" --scenario "$s" || failed=1
    done
  done
  exit "$failed"
fi
