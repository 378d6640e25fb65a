#!/usr/bin/env python3
"""Checks that the deployment files agree with each other and with grlo's metrics.

For the rendered manifests (RENDERED.yaml, from `kubectl kustomize`):

* files: every GRLO_*_FILE, GRLO_TLS_CERT, GRLO_TLS_KEY and GRLO_TLS_CA variable names a file
  that a read-only Secret or ConfigMap volume of the container provides (a key of the Secret
  when it is in the rendered files, or one of the volume's `items`); the Secret grlo-tokens
  holds a worker-token and an admin-token that grlo would accept (one word each, different);
* metrics: every grlo pod has the annotations prometheus.io/scrape "true", prometheus.io/port
  and prometheus.io/path /metrics; the port is a containerPort named `http` that the container
  serves metrics on (--http-listen or GRLO_HTTP_LISTEN); every Service in front of such a pod
  exposes it.

For the Prometheus configuration (--prometheus): it parses, its relabel rules are well formed,
and run over every grlo pod of the rendered manifests (as Kubernetes pod discovery would see
it) they keep exactly one target, at the `http` port and /metrics, with a `component` label;
the labels it adds never collide with grlo's own (`job`, `role`, ...), and honor_labels keeps
the coordinator's `job`.

For the Grafana dashboard (--dashboard): valid JSON with unique panel ids and the datasource
variable; every grlo_* name in its queries is in --metrics (NAME_bucket/_sum/_count of a
histogram), every label it matches or groups by is one the metric has (or one Prometheus
adds), rate() is only taken of counters and histogram series, and every $variable is defined.

With --promtool, the dashboard's PromQL is parsed by `promtool check rules` and the Prometheus
configuration by `promtool check config` (with static targets in place of pod discovery, which
Debian's promtool lacks).

Usage: check_wiring.py --metrics M --dashboard D --prometheus P [--promtool T] RENDERED.yaml...
Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

from check_flags import dig  # the same walk over nested objects

WORKLOAD_TEMPLATES = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
FILE_VARIABLES = re.compile(r"^GRLO_[A-Z0-9_]*_FILE$|^GRLO_TLS_(CERT|KEY|CA)$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])(grlo_[a-z0-9_]+)")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


class Problems:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, where: str, message: str) -> None:
        line = f"{where}: {message}"
        if line not in self.lines:
            self.lines.append(line)


# --- metrics list -----------------------------------------------------------------------------
def load_metrics(path: str, problem: Problems) -> dict[str, tuple[str, set[str]]]:
    """NAME -> (type, labels) from the list file."""
    metrics = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{path}:{number}"
            fields = line.split()
            if len(fields) != 3:
                problem(where, f"want NAME TYPE LABELS, got {line!r}")
                continue
            name, kind, labels = fields
            if not re.fullmatch(r"grlo_(coordinator|learner|actor|reward_server)_[a-z0-9_]+", name):
                problem(where, f"{name} is not grlo_<component>_<name>")
            if kind not in ("counter", "gauge", "histogram"):
                problem(where, f"{name}: type {kind!r} is not counter, gauge or histogram")
            if kind == "counter" and not name.endswith("_total"):
                problem(where, f"{name}: a counter's name ends in _total")
            if name in metrics:
                problem(where, f"{name} is listed twice")
            metrics[name] = (kind, set() if labels == "-" else set(labels.split(",")))
    if not metrics:
        problem(path, "no metrics listed")
    return metrics


def resolve(name: str, metrics) -> tuple[str, str] | None:
    """(listed name, series kind) for a name used in a query, or None if it is not grlo's."""
    if name in metrics:
        return name, metrics[name][0]
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and metrics.get(base, ("",))[0] == "histogram":
            return base, suffix
    return None


# --- manifests --------------------------------------------------------------------------------
def load_documents(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def workloads(documents):
    for doc in documents:
        keys = WORKLOAD_TEMPLATES.get(doc.get("kind"))
        if keys:
            template = dig(doc, keys) or {}
            yield doc, template


def is_grlo(container) -> bool:
    argv = list(container.get("command") or ["grlo"]) + list(container.get("args") or [])
    return bool(argv) and os.path.basename(str(argv[0])) == "grlo"


def http_listen(container) -> str | None:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    for i, token in enumerate(argv):
        if token == "--http-listen" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--http-listen="):
            return token.split("=", 1)[1]
    for env in container.get("env") or []:
        if env.get("name") == "GRLO_HTTP_LISTEN":
            return str(env.get("value", ""))
    return None


def check_manifests(path: str, documents, problem: Problems) -> list[dict]:
    """Checks files and metrics ports; returns the grlo pods (for the scrape simulation)."""
    sources = {}
    for doc in documents:
        if doc.get("kind") in ("Secret", "ConfigMap"):
            meta = doc.get("metadata") or {}
            keys = set()
            for field in ("data", "stringData", "binaryData"):
                keys |= set((doc.get(field) or {}).keys())
            sources[(doc["kind"], meta.get("namespace", ""), meta.get("name", ""))] = keys
            if doc["kind"] == "Secret" and meta.get("name") == "grlo-tokens":
                check_tokens(f"{path}: Secret/grlo-tokens", doc, problem)
    pods = []
    for doc, template in workloads(documents):
        meta = doc.get("metadata") or {}
        namespace = meta.get("namespace", "")
        name = f"{doc['kind']}/{meta.get('name', '?')}"
        spec = template.get("spec") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        containers = [c for c in spec.get("containers") or [] if is_grlo(c)]
        if not containers:
            continue
        pod_meta = template.get("metadata") or {}
        pods.append({"where": f"{path}: {name}", "name": meta.get("name", "?"),
                     "namespace": namespace, "metadata": pod_meta, "containers": containers})
        for container in containers:
            where = f"{path}: {name} container {container.get('name', '?')}"
            check_files(where, container, volumes, sources, namespace, problem)
        check_metrics_port(f"{path}: {name}", pod_meta, containers, problem)
    check_services(path, documents, pods, problem)
    return pods


def check_tokens(where, secret, problem) -> None:
    """The tokens as grlo takes them: each one word (trimmed), the two different."""
    values = {k: str(v) for k, v in (secret.get("stringData") or {}).items()}
    for key, value in (secret.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            problem(where, f"{key} is not base64 of UTF-8 text")
    for key in ("worker-token", "admin-token"):
        token = values.get(key, "").strip()
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            problem(where, f"{key} must be one word (no spaces or control characters)")
    if values.get("worker-token", "").strip() == values.get("admin-token", "").strip():
        problem(where, "worker-token and admin-token are the same: the roles refuse to start")


def check_files(where, container, volumes, sources, namespace, problem) -> None:
    mounts = container.get("volumeMounts") or []
    for env in container.get("env") or []:
        variable = env.get("name", "")
        if not FILE_VARIABLES.match(variable):
            continue
        if "value" not in env:
            problem(where, f"{variable} has no literal value (a path) to check")
            continue
        file = str(env["value"])
        mount = max(
            (m for m in mounts if file.startswith(m.get("mountPath", "").rstrip("/") + "/")),
            key=lambda m: len(m.get("mountPath", "")),
            default=None,
        )
        if mount is None:
            problem(where, f"{variable}={file}: no volume is mounted at a directory above it")
            continue
        relative = file[len(mount["mountPath"].rstrip("/")) + 1 :]
        volume = volumes.get(mount.get("name"))
        if volume is None:
            problem(where, f"{variable}={file}: the mount {mount.get('name')!r} has no volume")
            continue
        if mount.get("subPath"):
            problem(where, f"{variable}={file}: mounted with subPath (does not follow updates)")
        if not mount.get("readOnly"):
            problem(where, f"{variable}={file}: the volume {mount['name']!r} is not mounted readOnly")
        for kind, field, ref in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            source = volume.get(field)
            if source is None:
                continue
            source_name = source.get(ref, "")
            items = source.get("items")
            if items is not None:
                provided = {item.get("path") for item in items}
                if relative not in provided:
                    problem(where, f"{variable}={file}: the volume {mount['name']!r} ({kind} "
                            f"{source_name}) only provides {', '.join(sorted(provided))}")
                keys = sources.get((kind, namespace, source_name))
                for item in items:
                    if keys is not None and item.get("key") not in keys:
                        problem(where, f"{kind} {source_name} has no key {item.get('key')!r}")
            else:
                keys = sources.get((kind, namespace, source_name))
                # A Secret made by hand (grlo-tls) is not in the rendered files: its keys
                # cannot be seen here.
                if keys is not None and relative not in keys:
                    problem(where, f"{variable}={file}: {kind} {source_name} has no key "
                            f"{relative!r} (it has: {', '.join(sorted(keys))})")
            break
        else:
            problem(where, f"{variable}={file}: the volume {mount['name']!r} is not a Secret or ConfigMap")


def check_metrics_port(where, pod_meta, containers, problem) -> None:
    annotations = pod_meta.get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true":
        problem(where, 'the pod template lacks the annotation prometheus.io/scrape: "true"')
        return
    if annotations.get("prometheus.io/path") != "/metrics":
        problem(where, "the pod template's prometheus.io/path is not /metrics")
    port = str(annotations.get("prometheus.io/port", ""))
    serving = [c for c in containers if any(str(p.get("containerPort")) == port
                                            and p.get("name") == "http" for p in c.get("ports") or [])]
    if not serving:
        problem(where, f"prometheus.io/port {port!r} is no containerPort named http")
    for container in serving:
        listen = http_listen(container)
        if listen is None or listen.rsplit(":", 1)[-1] != port:
            problem(where, f"container {container.get('name')}: serves metrics on {listen!r} "
                    f"(--http-listen / GRLO_HTTP_LISTEN), not on port {port}")


def check_services(path, documents, pods, problem) -> None:
    for doc in documents:
        if doc.get("kind") != "Service":
            continue
        meta = doc.get("metadata") or {}
        selector = dig(doc, ("spec", "selector")) or {}
        if not selector:
            continue
        ports = dig(doc, ("spec", "ports")) or []
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            if pod["namespace"] != meta.get("namespace", "") or any(
                labels.get(k) != v for k, v in selector.items()
            ):
                continue
            port = str((pod["metadata"].get("annotations") or {}).get("prometheus.io/port", ""))
            if not any(str(p.get("targetPort")) in ("http", port) for p in ports):
                problem(f"{path}: Service/{meta.get('name')}",
                        f"does not expose the metrics port (targetPort http) of {pod['name']}")


# --- Prometheus -------------------------------------------------------------------------------
RELABEL_ACTIONS = {"replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap",
                   "labeldrop", "labelkeep", "lowercase", "uppercase"}


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def compile_regex(text, where, problem):
    try:
        return re.compile(str(text))
    except re.error as e:
        problem(where, f"regex {text!r} does not compile: {e}")
        return None


def expand(replacement: str, match: re.Match) -> str:
    """$1, ${1} and ${name} in a replacement; a group that does not exist expands to ""."""
    def group(m):
        key = m.group(1) or m.group(2)
        try:
            return match.group(int(key) if key.isdigit() else key) or ""
        except IndexError:
            return ""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", group, replacement)


def relabel(labels: dict, rules) -> dict | None:
    """Prometheus's relabelling, for the actions the checks need; None if dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        separator = rule.get("separator", ";")
        value = separator.join(labels.get(l, "") for l in rule.get("source_labels") or [])
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        target = rule.get("target_label", "")
        if action == "keep" and not regex.match(value):
            return None
        if action == "drop" and regex.match(value):
            return None
        if action == "keepequal" and value != labels.get(target, ""):
            return None
        if action == "dropequal" and value == labels.get(target, ""):
            return None
        if action == "replace":
            match = regex.match(value)
            if match:
                result = expand(str(rule.get("replacement", "$1")), match)
                if result:
                    labels[expand(target, match)] = result
                else:
                    labels.pop(expand(target, match), None)
        if action == "labelmap":
            for name in list(labels):
                match = regex.match(name)
                if match:
                    labels[expand(str(rule.get("replacement", "$1")), match)] = labels[name]
        if action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.match(k)}
        if action == "labelkeep":
            labels = {k: v for k, v in labels.items() if regex.match(k)}
    return labels


def discovered(pod) -> list[dict]:
    """The targets Kubernetes pod discovery makes for a pod: one per container port."""
    base = {
        "__meta_kubernetes_namespace": pod["namespace"],
        "__meta_kubernetes_pod_name": f"{pod['name']}-0",
        "__meta_kubernetes_pod_ip": "10.0.0.1",
        "__meta_kubernetes_pod_phase": "Running",
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
    }
    for kind, values in (("label", pod["metadata"].get("labels")),
                         ("annotation", pod["metadata"].get("annotations"))):
        for key, value in (values or {}).items():
            base[f"__meta_kubernetes_pod_{kind}_{sanitize(key)}"] = str(value)
            base[f"__meta_kubernetes_pod_{kind}present_{sanitize(key)}"] = "true"
    targets = []
    for container in pod["containers"]:
        for port in container.get("ports") or [{}]:
            labels = dict(base, __meta_kubernetes_pod_container_name=container.get("name", ""))
            if "containerPort" in port:
                labels["__meta_kubernetes_pod_container_port_number"] = str(port["containerPort"])
                labels["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
                labels["__address__"] = f"10.0.0.1:{port['containerPort']}"
            else:
                labels["__address__"] = "10.0.0.1"
            targets.append(labels)
    return targets


def check_prometheus(path, metrics, pods, problem) -> set[str]:
    """Checks the scrape configuration; returns the labels Prometheus adds to every series."""
    added = {"instance", "job"}
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as e:
        problem(path, f"not valid YAML: {e}")
        return added
    scrapes = (config or {}).get("scrape_configs") or []
    if not scrapes:
        problem(path, "no scrape_configs")
    metric_labels = set().union(*(labels for _, labels in metrics.values()))
    names = [s.get("job_name") for s in scrapes]
    if len(set(names)) != len(names) or None in names:
        problem(path, f"job_name missing or repeated: {names}")
    for scrape in scrapes:
        where = f"{path}: job {scrape.get('job_name')}"
        if "job" in metric_labels and scrape.get("honor_labels") is not True:
            problem(where, "grlo's series carry a `job` label (the grlo job): honor_labels: true "
                    "keeps it (otherwise it becomes exported_job and the dashboard's $job is empty)")
        rules = scrape.get("relabel_configs") or []
        for i, rule in enumerate(rules):
            here = f"{where} relabel_configs[{i}]"
            action = rule.get("action", "replace")
            if action not in RELABEL_ACTIONS:
                problem(here, f"unknown action {action!r}")
            compile_regex(f"^(?:{rule.get('regex', '(.*)')})$", here, problem)
            target = rule.get("target_label")
            if action in ("replace", "keepequal", "dropequal", "hashmod") and not target:
                problem(here, f"action {action} needs target_label")
            if action == "replace" and target and not target.startswith("__"):
                added.add(target)
        for static in scrape.get("static_configs") or []:
            added |= set((static.get("labels") or {}).keys())
        for label in sorted((added - {"job", "instance"}) & metric_labels):
            problem(where, f"adds the label {label!r}, which grlo's own series carry: the two "
                    f"would clash (exported_{label}, or with honor_labels one of them is lost)")
        if not any(sd.get("role") == "pod" for sd in scrape.get("kubernetes_sd_configs") or []):
            continue
        # Run the rules over every grlo pod, as pod discovery would present it.
        for pod in pods:
            kept = [t for t in (relabel(t, rules) for t in discovered(pod)) if t is not None]
            annotations = pod["metadata"].get("annotations") or {}
            if len(kept) != 1:
                problem(pod["where"], f"{where} keeps {len(kept)} targets for this pod, not one "
                        f"({', '.join(t['__address__'] for t in kept) or 'none'})")
                continue
            target = kept[0]
            port = str(annotations.get("prometheus.io/port", ""))
            if target["__address__"] != f"10.0.0.1:{port}":
                problem(pod["where"], f"{where} scrapes {target['__address__']}, not the "
                        f"metrics port {port}")
            if target.get("__metrics_path__") != "/metrics":
                problem(pod["where"], f"{where} scrapes the path {target.get('__metrics_path__')}")
            component = (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            if target.get("component") != component:
                problem(pod["where"], f"{where} labels it component={target.get('component')!r}, "
                        f"not {component!r}")
    return added


def promtool_config(promtool, path, problem) -> None:
    """`promtool check config` of a copy with static targets in place of pod discovery."""
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    for scrape in config.get("scrape_configs") or []:
        if scrape.pop("kubernetes_sd_configs", None) is not None:
            scrape["static_configs"] = [{"targets": ["127.0.0.1:9090"]}]
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "prometheus.yml")
        with open(copy, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)
        result = subprocess.run([promtool, "check", "config", "--syntax-only", copy],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problem(path, "promtool check config: " + (result.stdout + result.stderr).strip())


# --- Grafana ----------------------------------------------------------------------------------
def all_panels(panels):
    for panel in panels or []:
        yield panel
        yield from all_panels(panel.get("panels"))


def check_dashboard(path, metrics, added, problem) -> list[tuple[str, str]]:
    """Checks the dashboard; returns (where, PromQL) of its panel queries."""
    try:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        problem(path, f"not valid JSON: {e}")
        return []
    variables = {v.get("name"): v for v in dig(dashboard, ("templating", "list")) or []}
    datasource = variables.get("DS_PROMETHEUS")
    if not datasource or datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problem(path, "no datasource variable DS_PROMETHEUS (type datasource, query prometheus)")
    if not isinstance(dashboard.get("schemaVersion"), int):
        problem(path, "no schemaVersion")
    queries = []
    for name, variable in variables.items():
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            queries.append((f"{path}: variable {name}", text))
    ids = set()
    panel_queries = []
    for panel in all_panels(dashboard.get("panels")):
        where = f"{path}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids or not isinstance(panel.get("id"), int):
            problem(where, "panel id missing or repeated")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
            problem(where, f"gridPos {grid} is not within the 24 columns")
        if panel.get("type") == "row":
            continue
        if dig(panel, ("datasource", "uid")) != "${DS_PROMETHEUS}":
            problem(where, "its datasource is not ${DS_PROMETHEUS}")
        targets = panel.get("targets") or []
        if not targets:
            problem(where, "no queries")
        for target in targets:
            if dig(target, ("datasource", "uid")) not in (None, "${DS_PROMETHEUS}"):
                problem(where, f"query {target.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
            queries.append((f"{where} query {target.get('refId')}", target.get("expr", "")))
            panel_queries.append(queries[-1])
    for where, expr in queries:
        check_query(where, expr, metrics, added, variables, problem)
    return panel_queries


def check_query(where, expr, metrics, added, variables, problem) -> None:
    if not expr.strip():
        problem(where, "an empty query")
        return
    used = {}
    for name in METRIC_NAME.findall(expr):
        resolved = resolve(name, metrics)
        if resolved is None:
            problem(where, f"{name} is not a metric grlo exports (deploy/grafana/metrics.txt)")
        else:
            used[name] = resolved
    available = set(added) - {"job"}
    for name, (base, _) in used.items():
        available |= metrics[base][1]
        if name.endswith("_bucket"):
            available.add("le")
    # Label matchers: name{label="..."}.
    for name, matchers in re.findall(r"(grlo_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        if name not in used:
            continue
        base, _ = used[name]
        allowed = metrics[base][1] | (set(added) - {"job"}) | ({"le"} if name.endswith("_bucket") else set())
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", matchers):
            if label not in allowed:
                problem(where, f"{name} has no label {label!r} (it has: "
                        f"{', '.join(sorted(metrics[base][1])) or 'none'}; Prometheus adds: "
                        f"{', '.join(sorted(set(added) - {'job'}))})")
    # Grouping: by (...) / without (...).
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (l.strip() for l in clause.split(","))):
            if label not in available:
                problem(where, f"groups by {label!r}, which none of its metrics has")
    # label_values(metric, label) in a variable.
    for name, label in re.findall(r"label_values\(\s*(grlo_[a-z0-9_]+)\s*,\s*(\w+)\s*\)", expr):
        if name in used and label not in metrics[used[name][0]][1]:
            problem(where, f"label_values: {name} has no label {label!r}")
    # rate() and friends of counters and histogram series only.
    for function, name in re.findall(r"\b(rate|irate|increase)\s*\(\s*(grlo_[a-z0-9_]+)", expr):
        if name in used and used[name][1] == "gauge":
            problem(where, f"{function}() of the gauge {name}")
    if re.search(r"histogram_quantile", expr) and not re.search(r"\bby\s*\([^)]*\ble\b", expr):
        problem(where, "histogram_quantile without `le` among the grouping labels")
    for variable in re.findall(r"\$\{?(\w+)", expr):
        if variable not in variables and variable not in GRAFANA_BUILTINS:
            problem(where, f"${variable} is not a variable of the dashboard")


def promtool_queries(promtool, path, queries, problem) -> None:
    """`promtool check rules` on the panel queries, Grafana's variables filled in."""
    rules = []
    for i, (_, expr) in enumerate(queries):
        text = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        text = re.sub(r"\$\{?(\w+)\}?", ".*", text)
        rules.append({"record": f"grlo_dashboard:query_{i}", "expr": text})
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "dashboard-rules.yml")
        with open(file, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        result = subprocess.run([promtool, "check", "rules", file],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            for match in re.finditer(r"query_(\d+)", output):
                problem(queries[int(match.group(1))][0], "promtool cannot parse this query")
            problem(path, "promtool check rules: " + output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--promtool", help="parse the PromQL and the configuration with promtool")
    parser.add_argument("files", nargs="+", help="rendered manifests")
    args = parser.parse_args()
    problem = Problems()
    metrics = load_metrics(args.metrics, problem)
    pods = []
    for path in args.files:
        pods += check_manifests(path, load_documents(path), problem)
    if not pods:
        problem(" ".join(args.files), "no grlo pods in the rendered files")
    added = check_prometheus(args.prometheus, metrics, pods, problem)
    queries = check_dashboard(args.dashboard, metrics, added, problem)
    if args.promtool:
        promtool_config(args.promtool, args.prometheus, problem)
        promtool_queries(args.promtool, args.dashboard, queries, problem)
    if problem.lines:
        for line in problem.lines:
            print(f"FAIL {line}", file=sys.stderr)
        print(f"check_wiring: {len(problem.lines)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_wiring: {len(pods)} pods in {len(args.files)} file(s): mounted files, metrics "
          f"ports and the scrape config agree; {len(queries)} dashboard queries use "
          f"{len(metrics)} known metrics" + (" (and parse with promtool)" if args.promtool else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
