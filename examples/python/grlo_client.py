#!/usr/bin/env python3
"""A Python client of the grlo coordinator, built from the repository's protos.

The gRPC stubs are generated at run time with grpcio-tools from proto/protos/grlo/v1/*.proto
(into a temporary directory, or into --stubs-dir to keep them), so the client always speaks
the protos it sits beside. It submits, watches, pauses, resumes and cancels jobs and reads
their budgets, printing the same JSON as `grlo ctl --json`:

    python grlo_client.py submit configs/tiny.toml --set trainer.total_steps=3
    python grlo_client.py watch job-1            # a JSON line per event, until the job ends
    python grlo_client.py budget job-1
    python grlo_client.py pause job-2            # also: resume, cancel, get, list

Connection settings are flags, each with the environment variable `grlo ctl` reads:

    --coordinator URL      GRLO_COORDINATOR (default http://127.0.0.1:50051); https:// is TLS
    --tls-ca FILE          GRLO_TLS_CA: the CA that signed the coordinator's certificate
    --tls-cert/--tls-key   GRLO_TLS_CERT/GRLO_TLS_KEY: this client's certificate (mutual TLS)
    --tls-domain NAME      GRLO_TLS_DOMAIN: the name to check in the server's certificate
    --admin-token-file F   GRLO_ADMIN_TOKEN_FILE, else the token itself in GRLO_ADMIN_TOKEN

The token is sent as `authorization: Bearer <token>` metadata on every call. It is never a
flag, as flags show in `ps`.

A failed call prints `error: CODE: message` (CODE is the gRPC status, e.g. UNAUTHENTICATED)
and exits 1; a bad spec or flag exits 2. Needs Python 3.11+ (tomllib) and requirements.txt.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import json
import os
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
from grpc_tools import protoc

DEFAULT_PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "protos"
PROTO_FILES = ["grlo/v1/common.proto", "grlo/v1/coordinator.proto"]
UNARY_TIMEOUT_S = 30.0


class SpecError(Exception):
    """A job spec or a flag that cannot be used."""


# ----- stubs -----


def generate_stubs(proto_dir: Path, out_dir: Path) -> None:
    """Runs protoc (from grpcio-tools) on the grlo protos: out_dir/grlo/v1/*_pb2{,_grpc}.py."""
    # The well-known types (google/protobuf/*.proto) ship inside grpcio-tools.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SpecError(f"protoc failed on the protos in {proto_dir}")


def load_stubs(proto_dir: Path, out_dir: Path) -> SimpleNamespace:
    """Generates the stubs into out_dir and imports them: `.pb2` (messages) and `.grpc`."""
    generate_stubs(proto_dir, out_dir)
    # The generated files import each other as `grlo.v1.common_pb2`: out_dir is their root.
    sys.path.insert(0, str(out_dir))
    return SimpleNamespace(
        pb2=importlib.import_module("grlo.v1.coordinator_pb2"),
        grpc=importlib.import_module("grlo.v1.coordinator_pb2_grpc"),
    )


# ----- the connection -----


def open_channel(
    url: str,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_domain: str | None = None,
) -> grpc.Channel:
    """A channel to `http://host:port` (plaintext) or `https://host:port` (TLS)."""
    scheme, _, address = url.partition("://")
    address = address.rstrip("/")
    if scheme == "http" and address:
        return grpc.insecure_channel(address)
    if scheme != "https" or not address:
        raise SpecError(f"coordinator URL {url}: use http://host:port, or https:// with TLS")
    if (tls_cert is None) != (tls_key is None):
        raise SpecError("give both --tls-cert and --tls-key for mutual TLS, or neither")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_optional(tls_ca),  # None: the system's roots
        private_key=read_optional(tls_key),
        certificate_chain=read_optional(tls_cert),
    )
    options = [("grpc.ssl_target_name_override", tls_domain)] if tls_domain else []
    return grpc.secure_channel(address, credentials, options)


def read_optional(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path else None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e}") from e


class Coordinator:
    """The job calls of the grlo.v1.Coordinator service, with the admin token on each."""

    def __init__(self, channel: grpc.Channel, stubs: SimpleNamespace, token: str | None):
        self.pb2 = stubs.pb2
        self.stub = stubs.grpc.CoordinatorStub(channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def _call(self, method, request):
        return method(request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S)

    def _ref(self, job_id: str):
        return self.pb2.JobRef(job_id=job_id)

    def submit(self, spec_toml: str):
        return self._call(self.stub.SubmitJob, self.pb2.SubmitJobRequest(spec_toml=spec_toml))

    def get(self, job_id: str):
        return self._call(self.stub.GetJob, self._ref(job_id))

    def list(self):
        return self._call(self.stub.ListJobs, self.pb2.ListJobsRequest()).jobs

    def pause(self, job_id: str):
        return self._call(self.stub.PauseJob, self._ref(job_id))

    def resume(self, job_id: str):
        return self._call(self.stub.ResumeJob, self._ref(job_id))

    def cancel(self, job_id: str):
        return self._call(self.stub.CancelJob, self._ref(job_id))

    def budget(self, job_id: str):
        return self._call(self.stub.GetBudget, self._ref(job_id))

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator:
        """The job's JobEvents: its state now, then every change, until it has ended (the
        coordinator then closes the stream); DEADLINE_EXCEEDED after `timeout_s`."""
        return self.stub.WatchJob(self._ref(job_id), metadata=self.metadata, timeout=timeout_s)


# ----- job specs -----

# The settings that name files, which the coordinator would otherwise read relative to its
# own working directory: like `grlo ctl`, the client resolves them against the spec's folder.
PATH_SETTINGS = [
    ("model", "policy"),
    ("model", "critic"),
    ("model", "reference"),
    ("reward", "model"),
    ("data", "train_files"),
    ("data", "val_files"),
    ("trainer", "eval_data_dir"),
]


def load_spec(path: Path, overrides: list[str]) -> str:
    """A spec file as the TOML to submit: relative paths resolved against the file's folder,
    then `section.key=value` overrides applied (values are TOML: 3, 2e-3, true, "text"; what
    does not parse as TOML is taken as a string), as `grlo ctl job submit --set` does."""
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"cannot read the job spec {path}: {e}") from e
    base = path.resolve().parent

    def resolve(value: str) -> str:
        if not value or "://" in value or Path(value).is_absolute():
            return value
        return str(base / value)

    for section, key in PATH_SETTINGS:
        value = spec.get(section, {}).get(key)
        if isinstance(value, str):
            spec[section][key] = resolve(value)
        elif isinstance(value, list):
            spec[section][key] = [resolve(v) if isinstance(v, str) else v for v in value]
    for item in overrides:
        apply_override(spec, item)
    return dump_toml(spec)


def apply_override(spec: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f'--set: expected section.key=value, got "{item}"')
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    *sections, name = key.strip().split(".")
    table = spec
    for part in sections:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise SpecError(f"--set {key}: {part} is not a section")
    table[name] = value


def dump_toml(table: dict, path: tuple[str, ...] = ()) -> str:
    """Writes what tomllib read (strings, numbers, booleans, arrays, tables) back as TOML."""
    plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    out = ""
    if path and (plain or not tables):
        out += "[" + ".".join(toml_key(p) for p in path) + "]\n"
    out += "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in plain.items())
    for key, sub in tables.items():
        out += ("\n" if out else "") + dump_toml(sub, path + (key,))
    return out


def toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else toml_string(key)


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's too; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # Python writes inf, -inf and nan as TOML does
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    raise SpecError(f"cannot submit the TOML value {value!r} ({type(value).__name__})")


# ----- JSON views, as `grlo ctl --json` prints them -----


def parse_json(text: str):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def status_name(pb2, status: int) -> str:
    """JOB_STATUS_BUDGET_EXHAUSTED -> "budget_exhausted"."""
    try:
        return pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()
    except ValueError:
        return "unknown"


def job_json(pb2, job) -> dict:
    return {
        "id": job.id,
        "name": job.name,
        "status": status_name(pb2, job.status),
        "step": job.step,
        "total_steps": job.total_steps,
        "weight_version": job.weight_version,
        "message": job.message,
        "created_unix_ms": job.created_unix_ms,
        "updated_unix_ms": job.updated_unix_ms,
        "last_metrics": parse_json(job.last_metrics_json),
    }


def event_json(pb2, event) -> dict:
    """The job after the change, with `step_metrics` when the event is a finished step."""
    value = job_json(pb2, event.job)
    metrics = parse_json(event.step_metrics_json)
    if metrics is not None:
        value["step_metrics"] = metrics
    return value


def budget_json(budget) -> dict:
    return {
        "id": budget.job_id,
        "gpu_hours_budget": budget.gpu_hours_budget,
        "gpu_hours_used": budget.gpu_hours_used,
        "gpu_hours_remaining": max(budget.gpu_hours_budget - budget.gpu_hours_used, 0.0),
        "cpu_hours_budget": budget.cpu_hours_budget,
        "cpu_hours_used": budget.cpu_hours_used,
        "cost": budget.cost,
        "forecast_exhausted_unix_ms": budget.forecast_exhausted_unix_ms,
        "by_role": [
            {"role": r.role, "gpu_seconds": r.gpu_seconds, "cpu_seconds": r.cpu_seconds}
            for r in budget.by_role
        ],
    }


# ----- commands -----


def scenario(client: Coordinator, spec_toml: str, timeout_s: float | None) -> dict:
    """Job A runs to the end under watch while job B is paused, resumed and cancelled; A's
    budget is read once it has ended. Everything each call returned, as one object."""
    pb2 = client.pb2
    a = client.submit(spec_toml)
    watch = client.watch(a.id, timeout_s)
    # The first event is the job's state now; once it has come, the coordinator is
    # subscribed and every later change of A is queued on the stream while B is handled.
    events = [event_json(pb2, next(watch))]
    b = client.submit(spec_toml)
    b_calls = {
        "submitted": job_json(pb2, b),
        "paused": job_json(pb2, client.pause(b.id)),
        "resumed": job_json(pb2, client.resume(b.id)),
        "cancelled": job_json(pb2, client.cancel(b.id)),
        "final": job_json(pb2, client.get(b.id)),
    }
    events += [event_json(pb2, event) for event in watch if event.HasField("job")]
    return {
        "a": {
            "submitted": job_json(pb2, a),
            "events": events,
            "final": job_json(pb2, client.get(a.id)),
            "budget": budget_json(client.budget(a.id)),
        },
        "b": b_calls,
    }


def run(args: argparse.Namespace, client: Coordinator) -> None:
    pb2 = client.pb2

    def show(value) -> None:
        print(json.dumps(value, indent=2))

    match args.command:
        case "submit":
            show(job_json(pb2, client.submit(load_spec(args.spec, args.set))))
        case "scenario":
            show(scenario(client, load_spec(args.spec, args.set), args.timeout_s))
        case "watch":
            for event in client.watch(args.job, args.timeout_s):
                if event.HasField("job"):
                    print(json.dumps(event_json(pb2, event)), flush=True)
        case "list":
            show([job_json(pb2, job) for job in client.list()])
        case "budget":
            show(budget_json(client.budget(args.job)))
        case "get" | "pause" | "resume" | "cancel":
            show(job_json(pb2, getattr(client, args.command)(args.job)))


def parser() -> argparse.ArgumentParser:
    env = os.environ.get

    def path_or_none(variable: str) -> Path | None:
        return Path(env(variable)) if env(variable) else None

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--coordinator",
        default=env("GRLO_COORDINATOR", "http://127.0.0.1:50051"),
        help="http://host:port, or https://host:port for TLS",
    )
    p.add_argument("--tls-ca", type=Path, default=path_or_none("GRLO_TLS_CA"), help="CA (PEM)")
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=path_or_none("GRLO_TLS_CERT"),
        help="this client's certificate (PEM), for mutual TLS",
    )
    p.add_argument(
        "--tls-key", type=Path, default=path_or_none("GRLO_TLS_KEY"), help="its key (PEM)"
    )
    p.add_argument(
        "--tls-domain",
        default=env("GRLO_TLS_DOMAIN"),
        help="the name to check in the server's certificate (default: the URL's host)",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=path_or_none("GRLO_ADMIN_TOKEN_FILE"),
        help="a file holding the admin token (else GRLO_ADMIN_TOKEN holds the token)",
    )
    p.add_argument(
        "--proto-dir",
        type=Path,
        default=DEFAULT_PROTO_DIR,
        help="the folder holding grlo/v1/*.proto (default: the repository's)",
    )
    p.add_argument(
        "--stubs-dir", type=Path, help="generate the stubs here and keep them (default: a temp dir)"
    )
    commands = p.add_subparsers(dest="command", required=True)

    def command(name: str, what: str, spec=False, job=False, timeout=False) -> None:
        c = commands.add_parser(name, help=what)
        if spec:
            c.add_argument("spec", type=Path, help="a job spec (a grlo train TOML)")
            c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        if job:
            c.add_argument("job", help="a job id, e.g. job-1")
        if timeout:
            c.add_argument("--timeout-s", type=float, help="give up on the watch after this long")

    command("submit", "queue a job; prints it", spec=True)
    command("scenario", "submit A and B; pause, resume, cancel B; watch A", spec=True, timeout=True)
    command("watch", "a JSON line per event until the job ends", job=True, timeout=True)
    command("get", "the job now", job=True)
    command("budget", "device-hours used, per role, against the budget", job=True)
    command("pause", "hand out no more rollout tasks", job=True)
    command("resume", "hand out rollout tasks again", job=True)
    command("cancel", "end the job (its learner writes a final checkpoint)", job=True)
    command("list", "every job")
    return p


def admin_token(args: argparse.Namespace) -> str | None:
    if args.admin_token_file:
        try:
            return args.admin_token_file.read_text().strip()
        except OSError as e:
            raise SpecError(f"cannot read the admin token file: {e}") from e
    return os.environ.get("GRLO_ADMIN_TOKEN", "").strip() or None


HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: " (set GRLO_ADMIN_TOKEN or --admin-token-file)",
    grpc.StatusCode.UNAVAILABLE: (
        " (is the coordinator running at --coordinator? if it serves TLS use https:// and"
        " --tls-ca; if not, http://)"
    ),
}


def main() -> int:
    args = parser().parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="grlo-stubs-") as scratch:
            stubs = load_stubs(args.proto_dir, args.stubs_dir or Path(scratch))
            channel = open_channel(
                args.coordinator, args.tls_ca, args.tls_cert, args.tls_key, args.tls_domain
            )
            with channel:
                run(args, Coordinator(channel, stubs, admin_token(args)))
        return 0
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        # A failed call is also a grpc.Call: its status code and the server's message.
        hint = HINTS.get(e.code(), "")
        print(f"error: {e.code().name}: {e.details()}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
