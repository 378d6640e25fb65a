#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests against the grlo binary's own command line.

For every container of every workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
CronJob, Pod) in the given multi-document YAML files:

* the command line (`command`, else the image's ENTRYPOINT `grlo`, then `args`) must run `grlo`
  with a subcommand (the role: `grlo coordinator`, `grlo learner`, ...): a container whose role
  cannot be determined is an error;
* every `--flag` (and `-f`) must be one that `grlo <role> --help` lists, given at most once,
  with a value where the flag takes one;
* every environment variable named `GRLO_*` (in `env`, and the keys of a ConfigMap or Secret
  in the same files that `envFrom` names) must be one that `grlo <role> --help` lists
  (`[env: GRLO_...]`), or GRLO_LOG (the log filter) or GRLO_SETTINGS, or GRLO_WORKER_TOKEN /
  GRLO_ADMIN_TOKEN (the token itself) where the role takes --worker-token-file /
  --admin-token-file.

The one kind of container that does not run grlo is an inference engine beside an actor (the
image of ENGINE_IMAGES: lmsysorg/sglang, vllm/vllm-openai, under any registry): its flags are
not grlo's, so it is left to deploy/check_engine.py, and here only has to carry no GRLO_*
variable.

Usage: check_flags.py [--grlo PATH] RENDERED.yaml...
Exits 1 with one line per problem, naming the file, the object, the container and the flag.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import yaml

# Variables every role reads besides its flags' own.
ALWAYS_ALLOWED_ENV = {"GRLO_LOG", "GRLO_SETTINGS"}

# Variables a role reads where its help lists the flag: the token itself, in place of the file
# (`--worker-token-file FILE`, "or the token itself in GRLO_WORKER_TOKEN").
ENV_WITH_FLAG = {
    "--worker-token-file": "GRLO_WORKER_TOKEN",
    "--admin-token-file": "GRLO_ADMIN_TOKEN",
}

# An option line of clap's help: "  -h, --help", "      --listen <LISTEN>  ...".
OPTION_LINE = re.compile(
    r"^\s+(?:(?P<short>-[A-Za-z0-9]),\s+)?(?P<long>--[A-Za-z0-9][A-Za-z0-9-]*)"
    r"(?P<value>[ =]\[?<[^>]+>)?"
)
SHORT_ONLY_LINE = re.compile(r"^\s+(?P<short>-[A-Za-z0-9])(?P<value> <[^>]+>)?(?:\s|$)")
ENV_NAME = re.compile(r"\[env: (?P<name>[A-Z][A-Z0-9_]*)=")

# Images of the inference engines an actor may drive (rollout.engine = "openai"), as
# REPOSITORY[:TAG|@DIGEST] under any registry or mirror prefix: containers that run them are not
# grlo (deploy/check_engine.py checks them against the job spec).
ENGINE_IMAGES = {
    "lmsysorg/sglang": "sglang",
    "vllm/vllm-openai": "vllm",
}


def engine_image(container) -> str | None:
    """"sglang" or "vllm" for a container whose image is an inference engine's, else None."""
    image = str(container.get("image") or "")
    repository = re.split(r"@", image, maxsplit=1)[0]
    # A tag is a ':' after the last '/' (a ':' before it is a registry's port).
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    for name, kind in ENGINE_IMAGES.items():
        if repository == name or repository.endswith("/" + name):
            return kind
    return None


@dataclass
class Help:
    """What `grlo <path> --help` accepts."""

    path: tuple[str, ...]
    flags: dict[str, str] = field(default_factory=dict)  # flag -> "", "value" or "optional"
    env: set[str] = field(default_factory=set)
    subcommands: set[str] = field(default_factory=set)
    positionals: bool = False

    def describe(self) -> str:
        return "grlo " + " ".join(self.path) if self.path else "grlo"


class GrloHelp:
    """Runs `grlo ... --help` once per subcommand path and parses it."""

    def __init__(self, binary: str):
        self.binary = binary
        self.cache: dict[tuple[str, ...], Help] = {}

    def get(self, path: tuple[str, ...]) -> Help:
        if path in self.cache:
            return self.cache[path]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRLO_")}
        env["COLUMNS"] = "200"
        result = subprocess.run(
            [self.binary, *path, "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(
                f"error: `{self.binary} {' '.join(path)} --help` failed "
                f"(exit {result.returncode}): {result.stderr.strip()}"
            )
        self.cache[path] = parse_help(path, result.stdout)
        return self.cache[path]


def parse_help(path: tuple[str, ...], text: str) -> Help:
    help_ = Help(path)
    section = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            header = line.strip()
            section = header[:-1] if header.endswith(":") else None
            continue
        if section == "Commands":
            match = re.match(r"^\s+([a-z][a-z0-9-]*)\s", line + " ")
            if match and match.group(1) != "help":
                help_.subcommands.add(match.group(1))
        elif section == "Arguments":
            if line.strip():
                help_.positionals = True
        elif section == "Options":
            match = OPTION_LINE.match(line)
            if match:
                takes = value_kind(match.group("value"))
                help_.flags[match.group("long")] = takes
                if match.group("short"):
                    help_.flags[match.group("short")] = takes
            else:
                match = SHORT_ONLY_LINE.match(line)
                if match:
                    help_.flags[match.group("short")] = value_kind(match.group("value"))
        for env in ENV_NAME.finditer(line):
            help_.env.add(env.group("name"))
    if not help_.flags:
        raise SystemExit(f"error: found no options in the help of grlo {' '.join(path)}")
    return help_


def value_kind(text: str | None) -> str:
    """"" for a switch, "value" for a flag with a value, "optional" for `[<VALUE>]`."""
    if not text:
        return ""
    return "optional" if "[" in text else "value"


WORKLOAD_TEMPLATES = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


def dig(obj, keys):
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def config_keys(documents) -> dict[tuple[str, str, str], set[str]]:
    """(kind, namespace, name) -> keys, for ConfigMaps and Secrets in the rendered output."""
    keys = {}
    for doc in documents:
        kind = doc.get("kind")
        if kind not in ("ConfigMap", "Secret"):
            continue
        meta = doc.get("metadata") or {}
        names = set((doc.get("data") or {}).keys()) | set((doc.get("stringData") or {}).keys())
        names |= set((doc.get("binaryData") or {}).keys())
        keys[(kind, meta.get("namespace", ""), meta.get("name", ""))] = names
    return keys


class Checker:
    def __init__(self, grlo: GrloHelp):
        self.grlo = grlo
        self.problems: list[str] = []
        self.checked: list[str] = []
        self.engines: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def check_file(self, path: str) -> None:
        with open(path, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
        if not documents:
            self.problem(path, "no Kubernetes objects in the file")
            return
        keys = config_keys(documents)
        workloads = 0
        for doc in documents:
            kind = doc.get("kind")
            if kind == "List":
                self.problem(path, "a List object: render with `kubectl kustomize` (one object a document)")
                continue
            if kind not in WORKLOAD_TEMPLATES:
                continue
            workloads += 1
            meta = doc.get("metadata") or {}
            name = meta.get("name", "?")
            namespace = meta.get("namespace", "")
            pod = dig(doc, WORKLOAD_TEMPLATES[kind]) or {}
            containers = [("container", c) for c in pod.get("containers") or []]
            containers += [("initContainer", c) for c in pod.get("initContainers") or []]
            if not containers:
                self.problem(f"{path}: {kind}/{name}", "no containers")
            for what, container in containers:
                where = f"{path}: {kind}/{name} {what} {container.get('name', '?')}"
                self.check_container(where, container, keys, namespace)
        if workloads == 0:
            self.problem(path, "no workloads (Deployment, StatefulSet, ...) in the file")

    def check_container(self, where, container, keys, namespace) -> None:
        engine = engine_image(container)
        if engine:
            # Not grlo: its flags are the engine's (deploy/check_engine.py).
            for env in container.get("env") or []:
                if str(env.get("name", "")).startswith("GRLO_"):
                    self.problem(where, f"environment variable {env['name']} in an inference-engine "
                                 f"container ({engine}, image {container.get('image')}): it does not run grlo")
            self.engines.append(f"{where}: {engine} (image {container.get('image')})")
            return
        command = container.get("command")
        args = container.get("args") or []
        # Without `command`, the image's ENTRYPOINT runs: ["grlo"] (deploy/Dockerfile).
        argv = list(command) if command else ["grlo"]
        argv += list(args)
        argv = [str(a) for a in argv]
        if os.path.basename(argv[0]) != "grlo":
            self.problem(
                where,
                f"cannot determine the grlo role: the command is {argv[0]!r}, not grlo "
                f"(command+args: {' '.join(argv)})",
            )
            return
        help_ = self.grlo.get(())
        seen: set[str] = set()
        i = 1
        while i < len(argv):
            token = argv[i]
            i += 1
            if token == "--":
                break
            if token.startswith("-") and token != "-":
                flag, has_inline_value = (token.split("=", 1)[0], "=" in token)
                if flag not in help_.flags:
                    known = ", ".join(sorted(f for f in help_.flags if f.startswith("--")))
                    self.problem(
                        where,
                        f"flag {flag} is not accepted by `{help_.describe()}` (it takes: {known})",
                    )
                    continue
                if flag in seen and flag not in ("-h", "--help"):
                    self.problem(where, f"flag {flag} is given twice (clap refuses that)")
                seen.add(flag)
                takes = help_.flags[flag]
                if takes == "value" and not has_inline_value:
                    if i >= len(argv):
                        self.problem(where, f"flag {flag} needs a value and has none")
                    else:
                        i += 1
                elif takes == "optional" and not has_inline_value:
                    if i < len(argv) and not argv[i].startswith("-"):
                        i += 1
                elif not takes and has_inline_value:
                    self.problem(where, f"flag {flag} takes no value (got {token!r})")
                continue
            if token in help_.subcommands:
                help_ = self.grlo.get(help_.path + (token,))
                # Global flags (--settings) may repeat after the subcommand: clap allows it.
                seen = {f for f in seen if f in help_.flags}
                continue
            if help_.positionals:
                continue
            self.problem(
                where,
                f"unexpected argument {token!r} for `{help_.describe()}`"
                + (f" (its subcommands: {', '.join(sorted(help_.subcommands))})" if help_.subcommands else ""),
            )
        if not help_.path:
            self.problem(
                where,
                "cannot determine the grlo role: no subcommand (coordinator, learner, actor, "
                f"reward-server, ...) in command+args: {' '.join(argv)}",
            )
            return
        role = help_.describe()
        allowed = help_.env | ALWAYS_ALLOWED_ENV
        allowed |= {env for flag, env in ENV_WITH_FLAG.items() if flag in help_.flags}
        for env in container.get("env") or []:
            name = env.get("name", "")
            if name.startswith("GRLO_") and name not in allowed:
                self.problem(
                    where,
                    f"environment variable {name} is not read by `{role}` "
                    f"(it reads: {', '.join(sorted(allowed))})",
                )
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if ref not in source:
                    continue
                ref_name = (source.get(ref) or {}).get("name", "")
                names = keys.get((kind, namespace, ref_name))
                if names is None:
                    # Not in the rendered files (an optional Secret made by hand): the keys
                    # cannot be seen here.
                    continue
                for key in names:
                    name = prefix + key
                    if name.startswith("GRLO_") and name not in allowed:
                        self.problem(
                            where,
                            f"environment variable {name} (from {kind} {ref_name}) is not read "
                            f"by `{role}` (it reads: {', '.join(sorted(allowed))})",
                        )
        self.checked.append(f"{where}: {role}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grlo", default=os.environ.get("GRLO", "target/release/grlo"))
    parser.add_argument("-v", "--verbose", action="store_true", help="list every container checked")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    if not (os.path.isfile(args.grlo) and os.access(args.grlo, os.X_OK)):
        print(f"error: {args.grlo} is not an executable grlo binary (set --grlo or GRLO)", file=sys.stderr)
        return 2
    checker = Checker(GrloHelp(args.grlo))
    for path in args.files:
        checker.check_file(path)
    if args.verbose:
        for line in checker.checked:
            print(f"ok  {line}")
        for line in checker.engines:
            print(f"not grlo (deploy/check_engine.py)  {line}")
    if checker.problems:
        for line in checker.problems:
            print(f"FAIL {line}", file=sys.stderr)
        print(f"check_flags: {len(checker.problems)} problem(s)", file=sys.stderr)
        return 1
    engines = f" ({len(checker.engines)} inference-engine containers left to check_engine.py)" if checker.engines else ""
    print(f"check_flags: {len(checker.checked)} containers in {len(args.files)} file(s) use only flags and GRLO_* variables that grlo accepts{engines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
