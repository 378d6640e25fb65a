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
#  4. checks that the manifests, deploy/prometheus/prometheus.yml and
#     deploy/grafana/grlo-dashboard.json agree (deploy/check_wiring.py): the token and TLS files
#     the variables name are in read-only Secret mounts, the metrics port is annotated, served
#     and exposed, the scrape config keeps one target per pod at that port, and the dashboard
#     uses only metrics and labels of deploy/grafana/metrics.txt; and that this check does catch
#     a wrong metric name and a wrong token file. With promtool (PROMTOOL, on PATH, or extracted
#     from Debian's `prometheus` package into target/deploy-check on first use) it also parses
#     the dashboard's PromQL and the scrape config;
#  5. checks that the actors' inference engines agree with the job spec each overlay mounts
#     (deploy/check_engine.py): with rollout.engine = "openai" (overlays/gpu-sglang) an SGLang
#     sidecar in every actor pod listens on the port of rollout.endpoints, mounts the volume of
#     the actor's --cache-dir at the same path, starts from the job's model.policy (written by an
#     init container), has /health probes, /dev/shm and the pod's GPU, and actor.tis_cap is on;
#     with the built-in engine no actor pod has an engine; and that this check does catch a wrong
#     engine port and a cache volume mounted elsewhere;
#  6. submits each overlay's job.toml to a throwaway coordinator on 127.0.0.1, which parses and
#     validates it as a real submission would, and checks that the in-image paths it names
#     (/opt/grlo/configs/...) exist in configs/. The coordinator runs as the manifests run it:
#     the base's tokens (grlo ctl presents the admin token, and a worker token is refused) and,
#     where openssl is installed, mutual TLS with certificates from deploy/tls-certs.sh. Every
#     job.toml is submitted, and then the refused ones are named.
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

# --- 4. tokens, TLS, metrics, the scrape config and the dashboard agree ------------------------
promtool=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$promtool" ] && [ -x "$OUT/promtool/promtool" ]; then
    promtool="$OUT/promtool/promtool"
elif [ -z "$promtool" ] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    echo "== extracting promtool from Debian's prometheus package into $OUT/promtool"
    rm -rf "$OUT/promtool" && mkdir -p "$OUT/promtool/deb"
    if (cd "$OUT/promtool/deb" && apt-get download prometheus >/dev/null 2>&1) \
        && dpkg -x "$OUT"/promtool/deb/prometheus_*.deb "$OUT/promtool/deb/root" \
        && mv "$OUT/promtool/deb/root/usr/bin/promtool" "$OUT/promtool/promtool"; then
        promtool="$OUT/promtool/promtool"
        rm -rf "$OUT/promtool/deb"
    else
        rm -rf "$OUT/promtool"
    fi
fi
wiring=(--metrics deploy/grafana/metrics.txt --dashboard deploy/grafana/grlo-dashboard.json
    --prometheus deploy/prometheus/prometheus.yml)
if [ -n "$promtool" ]; then
    wiring+=(--promtool "$promtool")
else
    echo "(no promtool: the dashboard's PromQL is checked by pattern only, not parsed)"
fi
echo "== deploy/check_wiring.py (token and TLS files, metrics ports, prometheus.yml, the dashboard)"
"$PYTHON" deploy/check_wiring.py "${wiring[@]}" "${rendered[@]}"

echo "== deploy/check_wiring.py catches a wrong metric name and a wrong token file"
broken="$OUT/broken-dashboard.json.tmp"
sed 's/grlo_learner_approx_kl/grlo_learner_aprox_kl/' deploy/grafana/grlo-dashboard.json >"$broken"
sed '0,/value: \/var\/run\/grlo\/tokens\/admin-token$/s//value: \/var\/run\/grlo\/tokens\/admin_token/' \
    "$first" >"$broken.yaml"
grep -q grlo_learner_aprox_kl "$broken" && grep -q 'tokens/admin_token$' "$broken.yaml" \
    || fail "self-test: could not plant the mistakes in copies of the dashboard and $first"
if "$PYTHON" deploy/check_wiring.py --metrics deploy/grafana/metrics.txt --dashboard "$broken" \
    --prometheus deploy/prometheus/prometheus.yml "$broken.yaml" >"$broken.log" 2>&1; then
    cat "$broken.log" >&2
    fail "self-test: check_wiring.py accepted grlo_learner_aprox_kl and tokens/admin_token"
fi
grep -q 'grlo_learner_aprox_kl is not a metric grlo exports' "$broken.log" \
    && grep -q "Secret grlo-tokens has no key 'admin_token'" "$broken.log" \
    || { cat "$broken.log" >&2; fail "self-test: check_wiring.py failed without naming both mistakes"; }
rm -f "$broken" "$broken.yaml" "$broken.log"
echo "ok: both refused"

# --- 5. the actors' inference engines against the job specs ------------------------------------
echo "== deploy/check_engine.py (the actors' engines against the job spec of each overlay)"
"$PYTHON" deploy/check_engine.py "${rendered[@]}"

echo "== deploy/check_engine.py catches a wrong engine port and a cache volume mounted elsewhere"
broken="$OUT/broken-engine.yaml.tmp"
# In a copy of the first rendered overlay whose job has rollout.engine = "openai": the engine
# listens on another port than rollout.endpoints names, and mounts the actor's cache volume at
# another path.
"$PYTHON" - "$broken" "${rendered[@]}" <<'PY' || fail "self-test: no rendered overlay with an SGLang engine container to plant the mistakes in"
import sys, yaml
sys.path.insert(0, "deploy")
from check_engine import argv_of, is_sglang
for path in sys.argv[2:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    planted = set()
    for doc in docs:
        spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            if not is_sglang(argv_of(container)) or planted:
                continue
            command = container["command"]
            command[command.index("--port") + 1] = "30001"
            for mount in container.get("volumeMounts") or []:
                if mount.get("mountPath") == "/var/cache/grlo":
                    mount["mountPath"] = "/var/cache/engine"
                    planted.add(path)
    if planted:
        with open(sys.argv[1], "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
        sys.exit(0)
sys.exit(1)
PY
if "$PYTHON" deploy/check_engine.py "$broken" >"$broken.log" 2>&1; then
    cat "$broken.log" >&2
    fail "self-test: check_engine.py accepted an engine on port 30001 and its cache at /var/cache/engine"
fi
grep -q 'listens on port 30001, which no rollout.endpoints URL names' "$broken.log" \
    && grep -q "does not mount the volume 'cache' at /var/cache/grlo" "$broken.log" \
    || { cat "$broken.log" >&2; fail "self-test: check_engine.py failed without naming both mistakes"; }
rm -f "$broken" "$broken.log"
echo "ok: both refused"

# --- 6. job specs -----------------------------------------------------------------------------
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
# The tokens of the base's Secret grlo-tokens (as rendered), as the pods get them: files.
mkdir -m 700 "$data/tokens"
"$PYTHON" - "$first" "$data/tokens" <<'PY' || fail "no Secret grlo-tokens with worker-token and admin-token in $first"
import base64, os, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "Secret" and doc["metadata"]["name"] == "grlo-tokens":
        values = dict(doc.get("stringData") or {})
        values.update({k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()})
        for key in ("worker-token", "admin-token"):
            with open(os.path.join(sys.argv[2], key), "w") as f:
                f.write(values[key])
        sys.exit(0)
sys.exit(1)
PY
security=(GRLO_WORKER_TOKEN_FILE="$data/tokens/worker-token" GRLO_ADMIN_TOKEN_FILE="$data/tokens/admin-token")
url="http://127.0.0.1:$port"
if command -v openssl >/dev/null; then
    bash deploy/tls-certs.sh "$data/tls" >/dev/null || fail "deploy/tls-certs.sh failed"
    security+=(GRLO_TLS_CERT="$data/tls/grlo.crt" GRLO_TLS_KEY="$data/tls/grlo.key"
        GRLO_TLS_CA="$data/tls/ca.crt" GRLO_TLS_CLIENT_AUTH=true)
    url="https://localhost:$port"
else
    echo "(no openssl: the throwaway coordinator runs without TLS)"
fi
coordinator_pid=
stop_coordinator() {
    if [ -n "$coordinator_pid" ]; then
        kill "$coordinator_pid" 2>/dev/null || true
        wait "$coordinator_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
}
trap stop_coordinator EXIT
clean_env=(env $(env | sed -n 's/^\(GRLO_[A-Z0-9_]*\)=.*/-u \1/p'))
"${clean_env[@]}" GRLO_LOG=warn "${security[@]}" "$GRLO" coordinator --listen "127.0.0.1:$port" \
    --data-dir "$data/db" >"$data/coordinator.log" 2>&1 &
coordinator_pid=$!
# grlo ctl as `kubectl exec grlo-coordinator-0 -- grlo ctl` runs it: the same variables.
ctl() { "${clean_env[@]}" "${security[@]}" "$GRLO" ctl --coordinator "$url" "$@"; }
for _ in $(seq 100); do
    ctl job list >/dev/null 2>&1 && break
    kill -0 "$coordinator_pid" 2>/dev/null || { cat "$data/coordinator.log" >&2; fail "the coordinator did not start"; }
    sleep 0.1
done
ctl job list >/dev/null || { cat "$data/coordinator.log" >&2; fail "the coordinator at $url does not answer"; }
echo "== the throwaway coordinator ($url) refuses grlo ctl with the worker token"
if "${clean_env[@]}" "${security[@]}" GRLO_ADMIN_TOKEN_FILE="$data/tokens/worker-token" \
    "$GRLO" ctl --coordinator "$url" job list >"$data/refused.log" 2>&1; then
    fail "the coordinator accepted ListJobs with the worker token: are the token files read?"
fi
grep -q 'needs the admin token' "$data/refused.log" || { cat "$data/refused.log" >&2; fail "ListJobs with the worker token failed for another reason"; }
echo "ok: refused"
refused=()
for overlay in "${overlays[@]}"; do
    job="deploy/k8s/overlays/$overlay/job.toml"
    [ -f "$job" ] || continue
    echo "== grlo ctl job submit $job (a throwaway coordinator at $url)"
    if ! ctl --json job submit "$job" >"$data/submit.json"; then
        refused+=("$job")
        continue
    fi
    "$PYTHON" -c 'import json, sys; j = json.load(open(sys.argv[1])); print("ok:", j["id"], j["name"], j["status"])' \
        "$data/submit.json"
done
[ "${#refused[@]}" -eq 0 ] || fail "the coordinator ($GRLO) refused ${refused[*]}"

echo "deploy/check.sh: all checks passed (${#overlays[@]} overlays, kubectl: $KUBECTL, Kubernetes $K8S_VERSIONS)"
