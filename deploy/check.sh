#!/usr/bin/env bash
# Checks the deployment files offline, from the repository root:
#
#   bash deploy/check.sh                   # GRLO=target/release/grlo, KUBECTL=kubectl
#   KUBECTL="/usr/bin/kubectl /opt/k8s-1.20/kubectl" GRLO=path/to/grlo bash deploy/check.sh
#
#  1. renders every overlay (deploy/k8s/overlays/*) with `kubectl kustomize`, with each kubectl
#     named in KUBECTL (space-separated: check the old kustomize of kubectl 1.20 and a new one);
#  2. validates the rendered objects against the Kubernetes API schemas, offline and strict
#     (unknown fields are errors), with the PyPI package kubernetes-validate, for each version
#     in K8S_VERSIONS;
#  3. checks that every flag and GRLO_* variable of every container is one that
#     `grlo <role> --help` lists (deploy/check_flags.py), and that this check does catch a
#     wrong flag and a wrong variable;
#  4. submits each overlay's job.toml to a throwaway coordinator on 127.0.0.1, which parses and
#     validates it as a real submission would, and checks that the in-image paths it names
#     (/opt/grlo/configs/...) exist in configs/.
#
# Needs python3 (with venv; kubernetes-validate and PyYAML are installed into
# target/deploy-check/venv on first use, or set PYTHON to an interpreter that has both).
# Rendered files are left in target/deploy-check/ for a look.
set -euo pipefail
cd "$(dirname "$0")/.."

GRLO=${GRLO:-target/release/grlo}
KUBECTL=${KUBECTL:-kubectl}
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.37.0"}
KUBERNETES_VALIDATE_VERSION=1.37.0
OUT=target/deploy-check

fail() { echo "check.sh: $*" >&2; exit 1; }

[ -x "$GRLO" ] || fail "$GRLO is not an executable grlo binary (build it, or set GRLO)"
mkdir -p "$OUT"
rm -f "$OUT"/*.yaml

# --- Python with kubernetes-validate and PyYAML ---------------------------------------------
if [ -n "${PYTHON:-}" ]; then
    "$PYTHON" -c 'import kubernetes_validate, yaml' \
        || fail "PYTHON=$PYTHON lacks kubernetes-validate or PyYAML"
else
    venv="$OUT/venv"
    if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
        echo "== installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $venv"
        python3 -m venv "$venv" \
            || fail "python3 -m venv failed (apt-get install python3-venv, or set PYTHON)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML>=6" \
            || fail "could not install kubernetes-validate from PyPI (or set PYTHON)"
    fi
    PYTHON="$venv/bin/python"
fi
echo "kubernetes-validate $("$PYTHON" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')"

# --- 1. render --------------------------------------------------------------------------------
overlays=()
for dir in deploy/k8s/overlays/*/; do
    overlays+=("$(basename "$dir")")
done
[ "${#overlays[@]}" -gt 0 ] || fail "no overlays under deploy/k8s/overlays"

rendered=()
n=0
for kubectl in $KUBECTL; do
    n=$((n + 1))
    version=$("$kubectl" version --client 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -1 || true)
    for overlay in "${overlays[@]}"; do
        file="$OUT/$overlay.kubectl$n.yaml"
        echo "== render overlays/$overlay with $kubectl ($version)"
        # New kustomize warns that bases/commonLabels/patchesStrategicMerge are deprecated:
        # they are kept for kubectl 1.20's kustomize. Other messages are shown.
        if ! "$kubectl" kustomize "deploy/k8s/overlays/$overlay" >"$file" 2>"$file.err"; then
            cat "$file.err" >&2
            fail "kubectl kustomize deploy/k8s/overlays/$overlay failed with $kubectl"
        fi
        grep -v "^# Warning: '\(bases\|commonLabels\|patchesStrategicMerge\)' is deprecated" \
            "$file.err" >&2 || true
        rm -f "$file.err"
        [ -s "$file" ] || fail "overlays/$overlay rendered nothing with $kubectl"
        rendered+=("$file")
    done
done

# --- 2. schemas -------------------------------------------------------------------------------
for version in $K8S_VERSIONS; do
    for file in "${rendered[@]}"; do
        echo "== kubernetes-validate --strict -k $version $file"
        "$PYTHON" -m kubernetes_validate --strict --quiet -k "$version" "$file" \
            || fail "$file does not validate against Kubernetes $version"
    done
done

# --- 3. flags and GRLO_* variables against the binary -----------------------------------------
echo "== deploy/check_flags.py (flags and GRLO_* variables against $GRLO)"
"$PYTHON" deploy/check_flags.py --grlo "$GRLO" "${rendered[@]}"

echo "== deploy/check_flags.py catches a wrong flag and a wrong variable"
first="${rendered[0]}"
broken="$OUT/broken.yaml.tmp"
sed -e 's/^\( *\)- --data-dir$/\1- --data-dri/' -e '0,/name: GRLO_LOG$/s//name: GRLO_LOGG/' \
    "$first" >"$broken"
grep -q -- '- --data-dri$' "$broken" && grep -q 'name: GRLO_LOGG$' "$broken" \
    || fail "self-test: could not plant the mistakes in a copy of $first"
if "$PYTHON" deploy/check_flags.py --grlo "$GRLO" "$broken" >"$broken.log" 2>&1; then
    cat "$broken.log" >&2
    fail "self-test: check_flags.py accepted --data-dri and GRLO_LOGG"
fi
grep -q -- 'flag --data-dri is not accepted by `grlo coordinator`' "$broken.log" \
    && grep -q 'environment variable GRLO_LOGG' "$broken.log" \
    || { cat "$broken.log" >&2; fail "self-test: check_flags.py failed without naming both mistakes"; }
rm -f "$broken" "$broken.log"
echo "ok: both refused"

# --- 4. job specs -----------------------------------------------------------------------------
for overlay in "${overlays[@]}"; do
    job="deploy/k8s/overlays/$overlay/job.toml"
    [ -f "$job" ] || continue
    for path in $(grep -o '"/opt/grlo/configs/[^"]*"' "$job" | tr -d '"' | sort -u); do
        [ -e "configs/${path#/opt/grlo/configs/}" ] \
            || fail "$job names $path, but configs/${path#/opt/grlo/configs/} does not exist"
    done
done

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
coordinator_pid=
stop_coordinator() {
    if [ -n "$coordinator_pid" ]; then
        kill "$coordinator_pid" 2>/dev/null || true
        wait "$coordinator_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
}
trap stop_coordinator EXIT
env -u GRLO_SETTINGS GRLO_LOG=warn "$GRLO" coordinator --listen "127.0.0.1:$port" \
    --data-dir "$data/db" >"$data/coordinator.log" 2>&1 &
coordinator_pid=$!
ctl() { env -u GRLO_SETTINGS -u GRLO_COORDINATOR "$GRLO" ctl --coordinator "http://127.0.0.1:$port" "$@"; }
for _ in $(seq 100); do
    ctl job list >/dev/null 2>&1 && break
    kill -0 "$coordinator_pid" 2>/dev/null || { cat "$data/coordinator.log" >&2; fail "the coordinator did not start"; }
    sleep 0.1
done
ctl job list >/dev/null || { cat "$data/coordinator.log" >&2; fail "the coordinator on 127.0.0.1:$port does not answer"; }
for overlay in "${overlays[@]}"; do
    job="deploy/k8s/overlays/$overlay/job.toml"
    [ -f "$job" ] || continue
    echo "== grlo ctl job submit $job (a throwaway coordinator on 127.0.0.1:$port)"
    ctl --json job submit "$job" >"$data/submit.json" \
        || fail "the coordinator refused $job"
    "$PYTHON" -c 'import json, sys; j = json.load(open(sys.argv[1])); print("ok:", j["id"], j["name"], j["status"])' \
        "$data/submit.json"
done

echo "deploy/check.sh: all checks passed (${#overlays[@]} overlays, kubectl: $KUBECTL, Kubernetes $K8S_VERSIONS)"
