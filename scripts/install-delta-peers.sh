#!/usr/bin/env bash
# Installs the delta-update tools `tern delta bench` compares Tern's patches against
# (idempotent, fast when everything is there):
#   - bsdiff4, detools, hdiffpatch (PyPI), into the peers venv .peers/venv;
#   - xdelta3, zstd (Debian).
# Needs network access to the registries only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/.peers"
mkdir -p "$peers"

need_apt=()
command -v xdelta3 >/dev/null || need_apt+=(xdelta3)
command -v zstd >/dev/null || need_apt+=(zstd)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-delta-peers: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x "$peers/venv/bin/python" ] || python3 -m venv "$peers/venv"
if ! "$peers/venv/bin/python" -c 'import bsdiff4, detools, hdiffpatch' 2>/dev/null; then
  echo "install-delta-peers: python venv with bsdiff4, detools, hdiffpatch"
  "$peers/venv/bin/pip" install -q --disable-pip-version-check -r "$root/scripts/delta-peers-requirements.txt"
fi
echo "install-delta-peers: ok"
