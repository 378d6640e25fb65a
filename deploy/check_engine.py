#!/usr/bin/env python3
"""Checks the actors' inference engines against the job spec each rendered overlay ships.

For each rendered overlay (RENDERED.yaml, from `kubectl kustomize`), the job spec is the key
job.toml of its ConfigMap grlo-job (what the coordinator mounts at /etc/grlo/job/job.toml), and
the actor pods are the workloads with a `grlo actor` container. The job's rollout.engine says
which checks apply:

* "builtin" (the default): no actor pod has an inference-engine container (it would hold a GPU
  for nothing), and the job sets no rollout.endpoints;
* "openai": rollout.endpoints is a list of http://127.0.0.1:PORT (or localhost) URLs, and in
  every actor pod each of them is served by an SGLang container (python3 -m
  sglang.launch_server, or `sglang serve`; the actor reloads weights with SGLang's
  POST /update_weights_from_disk, which vLLM's server lacks) with that --port and a --host the
  pod's loopback reaches; every engine container is named by an endpoint; and for each engine:
  - the volume that holds the actor's cache dir (--cache-dir, else GRLO_CACHE_DIR; absolute) is
    mounted in the engine at the same mountPath (and subPath), and writable in the actor: the
    paths the actor sends to the engine are the engine's paths too;
  - its --model-path is a directory on a volume of the engine that an init container, run
    before the engine, mounts at the same path, writable, and names; where that init container
    is `grlo model convert`, its --model is the job's model.policy (the engine keeps the
    tokenizer of the model it starts with);
  - readiness and liveness probes (and a startup probe, if any) ask /health on its port: an
    exec probe naming 127.0.0.1:PORT/health (or localhost:PORT) when it listens on loopback
    only, since kubelet's httpGet goes to the pod's IP, else httpGet /health on PORT;
  - /dev/shm is an emptyDir of medium Memory;
  - the GPU is the engine's: it requests nvidia.com/gpu (limits equal), the actor container
    none, and the actor's --accelerators KIND:COUNT (or GRLO_ACCELERATORS) counts the engines'
    GPUs, which is what the coordinator's budgets account;
  - as an init container it is a native sidecar (restartPolicy: Always);
  and the job has actor.tis_cap > 0 (the engine's log-probs differ slightly from the
  learner's), and rollout.max_in_flight, if set, is a positive integer.

Usage: check_engine.py RENDERED.yaml...
Exits 1 with one line per problem.
"""

from __future__ import annotations

import os
import posixpath
import sys
import urllib.parse

import yaml

from check_flags import WORKLOAD_TEMPLATES, dig, engine_image

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        raise SystemExit("error: check_engine.py needs Python 3.11 (tomllib) or the package tomli")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Where SGLang's server listens without --host / --port.
SGLANG_DEFAULT_HOST = "127.0.0.1"
SGLANG_DEFAULT_PORT = 30000
# The actor's --cache-dir default (src/cli/roles.rs): relative to the working directory.
ACTOR_DEFAULT_CACHE_DIR = "actor-cache"


class Problems:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, where: str, message: str) -> None:
        line = f"{where}: {message}"
        if line not in self.lines:
            self.lines.append(line)


def argv_of(container) -> list[str]:
    command = container.get("command")
    argv = list(command) if command else (["grlo"] if not engine_image(container) else [])
    return [str(a) for a in argv + list(container.get("args") or [])]


def flag(argv: list[str], *names: str) -> str | None:
    """The value of the last of `names` in argv (`--flag value` or `--flag=value`)."""
    value = None
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif token.startswith(name + "="):
                value = token.split("=", 1)[1]
    return value


def env_value(container, name: str) -> str | None:
    for env in container.get("env") or []:
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    return None


def grlo_path(argv: list[str]) -> list[str]:
    """The subcommands of a grlo command line: ["actor"], ["model", "convert"], ...

    (The roles' flags are all `--flag value`, but for the switches, which never come before a
    subcommand in these manifests.)"""
    if not argv or os.path.basename(argv[0]) != "grlo":
        return []
    path, i = [], 1
    while i < len(argv):
        token = argv[i]
        if token.startswith("-"):
            i += 1 if "=" in token else 2
            continue
        if path and path[0] not in ("model", "ctl", "rm"):
            break
        path.append(token)
        i += 1
        if len(path) == 2:
            break
    return path


def is_sglang(argv: list[str]) -> bool:
    if "-m" in argv and argv.index("-m") + 1 < len(argv):
        if argv[argv.index("-m") + 1] == "sglang.launch_server":
            return True
    return bool(argv) and os.path.basename(argv[0]) == "sglang" and argv[1:2] == ["serve"]


def gpus(container, field: str) -> int:
    value = dig(container, ("resources", field, "nvidia.com/gpu"))
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return -1


def normalized(path: str) -> str:
    return posixpath.normpath(path) if path else path


def mount_of(container, path: str):
    """The mount of `container` that holds `path` (the longest mountPath above or at it)."""
    path = normalized(path)
    best = None
    for mount in container.get("volumeMounts") or []:
        mount_path = normalized(str(mount.get("mountPath", "")))
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            if best is None or len(mount_path) > len(normalized(best["mountPath"])):
                best = mount
    return best


def same_mount(container, mount):
    """The mount of `container` of the same volume at the same mountPath and subPath."""
    for other in container.get("volumeMounts") or []:
        if (other.get("name") == mount.get("name")
                and normalized(str(other.get("mountPath", ""))) == normalized(str(mount.get("mountPath", "")))
                and (other.get("subPath") or "") == (mount.get("subPath") or "")):
            return other
    return None


def job_spec(path, documents, problem):
    for doc in documents:
        if doc.get("kind") == "ConfigMap" and str(dig(doc, ("metadata", "name")) or "").startswith("grlo-job"):
            text = (doc.get("data") or {}).get("job.toml")
            if text is None:
                problem(f"{path}: ConfigMap/{doc['metadata']['name']}", "has no key job.toml")
                return None
            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                problem(f"{path}: ConfigMap/{doc['metadata']['name']}", f"job.toml is not valid TOML: {e}")
                return None
    problem(path, "no ConfigMap grlo-job (the job spec the coordinator mounts)")
    return None


def actor_pods(path, documents):
    for doc in documents:
        keys = WORKLOAD_TEMPLATES.get(doc.get("kind"))
        if not keys:
            continue
        spec = dig(doc, keys) or {}
        containers = spec.get("containers") or []
        actors = [c for c in containers if grlo_path(argv_of(c))[:1] == ["actor"]]
        if actors:
            where = f"{path}: {doc['kind']}/{dig(doc, ('metadata', 'name'))}"
            yield where, spec, actors[0]


def engines_of(spec):
    """(container, is_init, index) of every inference-engine container of a pod."""
    found = []
    for is_init, field in ((False, "containers"), (True, "initContainers")):
        for index, container in enumerate(spec.get(field) or []):
            argv = argv_of(container)
            if engine_image(container) or is_sglang(argv):
                found.append((container, is_init, index))
    return found


def check_file(path, problem) -> str | None:
    with open(path, encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    job = job_spec(path, documents, problem)
    if job is None:
        return None
    rollout = job.get("rollout") or {}
    engine = rollout.get("engine", "builtin")
    pods = list(actor_pods(path, documents))
    if not pods:
        problem(path, "no actor pods (a workload with a `grlo actor` container)")
    if engine == "builtin":
        if "endpoints" in rollout:
            problem(f"{path}: job.toml", "rollout.endpoints without rollout.engine = \"openai\"")
        for where, spec, _ in pods:
            for container, _, _ in engines_of(spec):
                problem(f"{where} container {container.get('name')}",
                        "an inference engine beside actors of rollout.engine = \"builtin\": it holds "
                        "a GPU for nothing (set engine = \"openai\" and endpoints, or drop it)")
        return f"{path}: engine builtin, {len(pods)} actor pod(s) without an engine container"
    if engine != "openai":
        problem(f"{path}: job.toml", f"rollout.engine = {engine!r} is not \"builtin\" or \"openai\"")
        return None

    # The job's side.
    tis_cap = (job.get("actor") or {}).get("tis_cap", 0.0)
    if not isinstance(tis_cap, (int, float)) or tis_cap <= 0:
        problem(f"{path}: job.toml", f"actor.tis_cap = {tis_cap!r} with an external engine: set it "
                "(e.g. 2.0): the engine's log-probs differ slightly from the learner's, and "
                "truncated importance sampling corrects for that")
    in_flight = rollout.get("max_in_flight")
    if in_flight is not None and (not isinstance(in_flight, int) or isinstance(in_flight, bool) or in_flight <= 0):
        problem(f"{path}: job.toml", f"rollout.max_in_flight = {in_flight!r} is not a positive integer")
    endpoints = rollout.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints or not all(isinstance(e, str) for e in endpoints):
        problem(f"{path}: job.toml", f"rollout.endpoints = {endpoints!r}: want a list of URLs")
        return None
    ports = {}
    for url in endpoints:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            problem(f"{path}: job.toml", f"rollout.endpoints: {url!r} has no valid port")
            continue
        if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK:
            problem(f"{path}: job.toml", f"rollout.endpoints: {url!r} is not http://127.0.0.1:PORT: "
                    "the engine must be in the actor's pod to read the weights the actor "
                    "downloads (POST /update_weights_from_disk names a path of the actor's)")
            continue
        if port in ports:
            problem(f"{path}: job.toml", f"rollout.endpoints: port {port} twice")
        ports[port] = url
    model_policy = str((job.get("model") or {}).get("policy", ""))

    # The pods' side.
    summaries = []
    for where, spec, actor in pods:
        actor_argv = argv_of(actor)
        cache_dir = flag(actor_argv, "--cache-dir") or env_value(actor, "GRLO_CACHE_DIR") or ACTOR_DEFAULT_CACHE_DIR
        cache_mount = None
        if not cache_dir.startswith("/"):
            problem(f"{where} container {actor.get('name')}",
                    f"the actor's cache dir {cache_dir!r} (--cache-dir / GRLO_CACHE_DIR) is not an "
                    "absolute path: the engine cannot see it at the same path")
        else:
            cache_mount = mount_of(actor, cache_dir)
            if cache_mount is None:
                problem(f"{where} container {actor.get('name')}",
                        f"no volume is mounted at or above the actor's cache dir {cache_dir}: the "
                        "engine can only share it through a volume")
            elif cache_mount.get("readOnly"):
                problem(f"{where} container {actor.get('name')}",
                        f"the volume {cache_mount.get('name')!r} of the cache dir {cache_dir} is "
                        "mounted readOnly: the actor downloads weight versions into it")
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        init_containers = spec.get("initContainers") or []
        served = {}
        engine_gpus = 0
        for engine, is_init, index in engines_of(spec):
            name = engine.get("name", "?")
            here = f"{where} {'initContainer' if is_init else 'container'} {name}"
            argv = argv_of(engine)
            if not is_sglang(argv):
                kind = engine_image(engine) or "?"
                problem(here, f"runs {' '.join(argv) or 'its image entrypoint'!s} ({kind}), not an "
                        "SGLang server (python3 -m sglang.launch_server): the actor reloads weights "
                        "with POST /update_weights_from_disk, which vLLM's OpenAI server lacks")
                continue
            host = flag(argv, "--host") or SGLANG_DEFAULT_HOST
            try:
                port = int(flag(argv, "--port") or SGLANG_DEFAULT_PORT)
            except ValueError:
                problem(here, f"--port {flag(argv, '--port')!r} is not a number")
                continue
            if host not in LOOPBACK | {"0.0.0.0", "::"}:
                problem(here, f"--host {host} is not reachable on the pod's loopback (the endpoints' 127.0.0.1)")
            if port in served:
                problem(here, f"--port {port} is also the port of {served[port]}")
            served[port] = name
            if port not in ports:
                problem(here, f"listens on port {port}, which no rollout.endpoints URL names "
                        f"({', '.join(endpoints)}): the actor never reaches it")
            if is_init and engine.get("restartPolicy") != "Always":
                problem(here, "an init container without restartPolicy: Always: the pod would wait "
                        "for it to exit before starting the actor (a native sidecar needs Always)")

            # The actor's cache dir, at the same path.
            if cache_mount is not None:
                shared = same_mount(engine, cache_mount)
                if shared is None:
                    problem(here, f"does not mount the volume {cache_mount.get('name')!r} at "
                            f"{cache_mount.get('mountPath')} (the actor's cache dir {cache_dir} is "
                            "there): the paths the actor sends with /update_weights_from_disk "
                            "would not exist for the engine")

            # Where it starts from.
            model_path = flag(argv, "--model-path", "--model")
            if not model_path:
                problem(here, "no --model-path")
            elif not model_path.startswith("/"):
                problem(here, f"--model-path {model_path} is not a directory of the pod: the engine "
                        "must start from the job's policy (model.policy), written there by an init "
                        "container")
            else:
                mount = mount_of(engine, model_path)
                if mount is None:
                    problem(here, f"--model-path {model_path}: no volume is mounted above it")
                else:
                    before = init_containers[:index] if is_init else init_containers
                    writers = [c for c in before if (m := same_mount(c, mount)) is not None
                               and not m.get("readOnly")
                               and normalized(model_path) in {normalized(a) for a in argv_of(c)}]
                    if not writers:
                        problem(here, f"--model-path {model_path}: no init container before it "
                                f"mounts the volume {mount.get('name')!r} at {mount.get('mountPath')} "
                                "and writes that directory")
                    for writer in writers:
                        wargv = argv_of(writer)
                        if grlo_path(wargv) == ["model", "convert"]:
                            source = flag(wargv, "--model")
                            if normalized(flag(wargv, "--out") or "") != normalized(model_path):
                                problem(f"{where} initContainer {writer.get('name')}",
                                        f"writes {flag(wargv, '--out')}, not the engine's --model-path {model_path}")
                            if source != model_policy:
                                problem(f"{where} initContainer {writer.get('name')}",
                                        f"converts {source}, but the job's model.policy is "
                                        f"{model_policy}: the engine starts from (and keeps the "
                                        "tokenizer of) the model this container writes")

            # Probes.
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = engine.get(probe_name)
                if probe is None:
                    if probe_name != "startupProbe":
                        problem(here, f"no {probe_name} (on /health)")
                    continue
                if "httpGet" in probe:
                    get = probe["httpGet"] or {}
                    if get.get("path") != "/health" or str(get.get("port")) != str(port):
                        problem(here, f"{probe_name}: httpGet {get.get('path')} on port "
                                f"{get.get('port')}, not /health on {port}")
                    elif host in LOOPBACK:
                        problem(here, f"{probe_name}: httpGet goes to the pod's IP, but the engine "
                                f"listens on {host} only: use an exec probe on {host}:{port}/health")
                elif "exec" in probe:
                    text = " ".join(str(a) for a in dig(probe, ("exec", "command")) or [])
                    if not any(f"{h}:{port}/health" in text for h in ("127.0.0.1", "localhost")):
                        problem(here, f"{probe_name}: the exec probe does not ask "
                                f"127.0.0.1:{port}/health ({text!r})")
                else:
                    problem(here, f"{probe_name}: neither httpGet nor exec on /health")

            # Shared memory.
            shm = next((m for m in engine.get("volumeMounts") or []
                        if normalized(str(m.get("mountPath", ""))) == "/dev/shm"), None)
            if shm is None or dig(volumes.get(shm.get("name")), ("emptyDir", "medium")) != "Memory":
                problem(here, "no /dev/shm of an emptyDir with medium: Memory (SGLang needs more "
                        "than a container's 64 MiB)")

            # The GPU.
            requested, limited = gpus(engine, "requests"), gpus(engine, "limits")
            if limited < 1 or requested not in (0, limited):
                problem(here, f"nvidia.com/gpu: requests {requested}, limits {limited}: the engine "
                        "needs the pod's GPU (requests equal to limits)")
            engine_gpus += max(limited, 0)
            summaries.append(f"{where}: {name} on {host}:{port} sees {cache_dir} "
                             f"(volume {cache_mount.get('name') if cache_mount else '?'}), starts from {model_path}")

        for port, url in ports.items():
            if port not in served:
                problem(where, f"no SGLang container listens on port {port} of {url} "
                        "(rollout.endpoints of the job)")
        if gpus(actor, "requests") or gpus(actor, "limits"):
            problem(f"{where} container {actor.get('name')}",
                    "requests nvidia.com/gpu: with rollout.engine = \"openai\" the GPU is the engine's")
        accelerators = flag(actor_argv, "--accelerators") or env_value(actor, "GRLO_ACCELERATORS")
        count = (accelerators or "").rsplit(":", 1)[-1]
        if engine_gpus and (not accelerators or not count.isdigit() or int(count) != engine_gpus):
            problem(f"{where} container {actor.get('name')}",
                    f"--accelerators {accelerators}: want KIND:{engine_gpus}, the engines' GPUs, "
                    "which the coordinator's budgets account to the actor's work")
    return "\n".join(summaries) or None


def main() -> int:
    files = sys.argv[1:]
    if not files or any(f.startswith("-") for f in files):
        print(__doc__.split("\n\n")[0] + "\n\nUsage: check_engine.py RENDERED.yaml...", file=sys.stderr)
        return 2
    problem = Problems()
    summaries = []
    for path in files:
        summary = check_file(path, problem)
        if summary:
            summaries.append(summary)
    if problem.lines:
        for line in problem.lines:
            print(f"FAIL {line}", file=sys.stderr)
        print(f"check_engine: {len(problem.lines)} problem(s)", file=sys.stderr)
        return 1
    for summary in summaries:
        print(summary)
    print(f"check_engine: {len(files)} file(s): the actors' engines match their job specs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
