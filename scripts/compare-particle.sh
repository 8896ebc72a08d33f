#!/usr/bin/env bash
# Compares `tern module inspect --json` with Particle's own reader (npm binary-version-reader
# 3.1.3, HalModuleParser) on every file under a directory, recursively.
#
# Usage: bash scripts/compare-particle.sh DIR
#
# Installs the peers if needed (scripts/install-peers.sh), then runs the oracle test
# `particle_oracle::inspect_agrees_with_binary_version_reader` of tern-cli on DIR instead of
# the corpus. It prints a summary line
#   particle oracle: N files under DIR: P parsed by both, R rejected by both, M not a module
#   for either; F fields compared; D disagreements
# followed by one line per disagreement, and exits non-zero if there is any.
# Fields compared per module: platform, function, index, version, flags, dependencies,
# prefix offset, start and end address, SHA-256, CRC validity, size, product id and version.
set -euo pipefail
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 DIR  (a directory of Particle module binaries)" >&2
  exit 2
fi
dir="$(cd "$1" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-peers.sh >&2
# CI=true makes a missing peer (node, the npm package) an error instead of a skipped test.
TERN_PARTICLE_DIR="$dir" CI=true cargo test --release --quiet -p tern-cli --test it \
  particle_oracle::inspect_agrees_with_binary_version_reader -- --exact --nocapture
