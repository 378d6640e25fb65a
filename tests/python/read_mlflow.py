#!/usr/bin/env python3
"""Read back every run of an MLflow experiment with MLflow's own client.

usage: python read_mlflow.py TRACKING_URI EXPERIMENT_NAME
       (e.g. http://127.0.0.1:5000 grlo-test)

Prints one JSON object on stdout, runs oldest first:

  {"runs": [{"run_id": str, "run_name": str, "status": "RUNNING|FINISHED|FAILED|...",
             "params": {key: value}, "tags": {key: value},   # tags include mlflow.*
             "metrics": {key: [[step, value], ...]}}]}       # full history, by step

Exits non-zero if the experiment does not exist. Needs only
`pip install mlflow-skinny` (the server may be any MLflow tracking server).
"""
import json
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
from mlflow.tracking import MlflowClient  # noqa: E402


def main():
    uri, name = sys.argv[1], sys.argv[2]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        sys.exit(f"no experiment named {name!r} at {uri}")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for r in runs:
        metrics = {}
        for key in sorted(r.data.metrics):
            hist = client.get_metric_history(r.info.run_id, key)
            hist = sorted(hist, key=lambda m: (m.step, m.timestamp))
            metrics[key] = [[m.step, m.value] for m in hist]
        out.append({
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "params": dict(r.data.params),
            "tags": dict(r.data.tags),
            "metrics": metrics,
        })
    json.dump({"runs": out}, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
