#!/usr/bin/env bash
# The tests, on a fresh machine or a prepared one: installs what the test binaries need from
# outside the Rust toolchain when it is missing, then runs the workspace's tests.
#
#   bash scripts/test.sh                      # every test
#   bash scripts/test.sh --test dashboard     # arguments go to `cargo test --release --workspace`
#
# What it installs (each step is a no-op when the thing is already there):
#   - moto's S3 server (`moto[server]` from PyPI), for model/tests/weights_store.rs;
#   - headless Chromium (Debian's `chromium`), for tests/dashboard.rs; skipped when $CHROMIUM
#     names a browser or one is on PATH;
#   - the official `openai` Python client (PyPI) in a venv at target/test-venv, for
#     tests/serve_openai.rs (which finds it there, or at $GRLO_TEST_PYTHON).
# Works as root or as a user: apt-get runs through sudo only when not root and sudo exists.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs a command as root: directly when we are root, else through sudo when there is one.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: '$*' needs root and there is no sudo; install it by hand and rerun" >&2
        return 1
    fi
}

# Installs Debian packages, refreshing the package lists once if the first try fails.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y --no-install-recommends "$@" >/dev/null \
        || { as_root apt-get update >/dev/null \
            && as_root apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

if ! python3 -c 'import moto.server' 2>/dev/null; then
    echo "== installing moto's S3 server, for model/tests/weights_store.rs"
    python3 -m pip install --quiet "moto[server]" \
        || python3 -m pip install --quiet --user "moto[server]"
fi

if [ -n "${CHROMIUM:-}" ]; then
    : # the test uses $CHROMIUM and says so if it does not exist
elif ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    echo "== installing headless Chromium, for tests/dashboard.rs"
    apt_install chromium
fi

if [ -z "${GRLO_TEST_PYTHON:-}" ]; then
    venv=target/test-venv
    if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
        echo "== installing the openai Python client into $venv, for tests/serve_openai.rs"
        mkdir -p target
        python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
        "$venv/bin/python" -m pip install --quiet openai
    fi
    export GRLO_TEST_PYTHON="$PWD/$venv/bin/python"
fi

echo "== cargo test --release --workspace $*"
exec cargo test --release --workspace "$@"
