#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60). New inputs land in a scratch
# directory and only those that add coverage are merged into fuzz/corpus/<target>, so the
# committed regression set stays small and hand-made seeds (which tests name) are kept. `cargo test` replays fuzz/corpus on every run.
# Uses cargo-fuzz (installed if missing); RUSTC_BOOTSTRAP lets the stable toolchain take
# the instrumentation flags libFuzzer needs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$root/fuzz"
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  mkdir -p "corpus/$t"
  scratch="$(mktemp -d)"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --sanitizer none "$scratch" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 > "$scratch.log" 2>&1; then
    tail -60 "$scratch.log"
    exit 1
  fi
  # Runs, and runs per second (the device targets aim at 10,000 or more).
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec)" "$scratch.log"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --sanitizer none "corpus/$t" "$scratch" -- -merge=1
  rm -rf "$scratch" "$scratch.log"
done
