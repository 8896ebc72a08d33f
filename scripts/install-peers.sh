#!/usr/bin/env bash
# Installs the third-party tools Tern's tests use as oracles, into .peers/ (idempotent):
#   - binary-version-reader 3.1.3 (npm): Particle's own module reader;
#   - imgtool 2.5.0 and intelhex 2.3.0 (PyPI): MCUboot's signing tool, an Intel HEX reader;
#   - prometheus-client 0.26.0 (PyPI): the Prometheus project's text-format parser, for /metrics;
#   - srecord (Debian): srec_cat, a second Intel HEX reader;
#   - mosquitto-clients (Debian): mosquitto_pub/mosquitto_sub, real MQTT clients for the gateway tests
#     (plain and over TLS);
#   - curl (Debian): a real HTTPS client for the TLS tests;
#   - schemathesis 4.32.5 (PyPI, a venv of its own: its dependencies are many): the OpenAPI
#     fuzzer the contract test runs against the live server.
# Fast when everything is already there. Needs network access to the registries only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/.peers"
mkdir -p "$peers"

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v srec_cat >/dev/null || need_apt+=(srecord)
command -v mosquitto_sub >/dev/null || need_apt+=(mosquitto-clients)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-peers: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python peers in a venv.
if [ ! -x "$peers/venv/bin/imgtool" ] || ! "$peers/venv/bin/python" -c 'import intelhex, prometheus_client' 2>/dev/null; then
  echo "install-peers: python venv with imgtool, intelhex, prometheus-client"
  python3 -m venv "$peers/venv"
  "$peers/venv/bin/pip" install -q --disable-pip-version-check -r "$root/scripts/peers-requirements.txt"
fi

# schemathesis in its own venv, so its dependencies never meet imgtool's.
if ! "$peers/schemathesis/bin/st" --version 2>/dev/null | grep -qx 'schemathesis, version 4.32.5'; then
  echo "install-peers: python venv with schemathesis"
  python3 -m venv "$peers/schemathesis"
  "$peers/schemathesis/bin/pip" install -q --disable-pip-version-check -r "$root/scripts/schemathesis-requirements.txt"
fi

# npm peers.
if [ ! -d "$root/tests/oracle/node_modules/binary-version-reader" ]; then
  echo "install-peers: npm binary-version-reader"
  (cd "$root/tests/oracle" && npm ci --silent --no-audit --no-fund)
fi
echo "install-peers: ok"
