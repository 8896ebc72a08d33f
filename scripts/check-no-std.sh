#!/usr/bin/env bash
# Builds the device-side crates for a bare-metal Cortex-M4F target without std or an
# allocator, proving they are really no_std. Needs the target's core library, which
# rustup installs; without it the check fails (it is never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
target=thumbv7em-none-eabihf
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target"
fi
crates=(-p tern-image)
for c in tern-device tern-proto tern-delta; do
  [ -d "crates/$c" ] && crates+=(-p "$c")
done
cargo build --release --no-default-features --target "$target" "${crates[@]}"
echo "no_std build ok: ${crates[*]}"
