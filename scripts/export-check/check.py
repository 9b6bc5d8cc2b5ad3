"""Reads an experiment's MLflow and TensorBoard exports back with the mlflow package and TensorBoard's event
reader, and checks every metric point against the store's own export (metrics.csv of `tandem export --format
files`): same runs, same steps, same values (TensorBoard holds float32), same wall-clock times. Exit 0 and one
summary line when everything matches; exit 1 naming the first difference."""

import argparse
import csv
import os
import sys
from collections import defaultdict

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def fail(message):
    print(f"MISMATCH: {message}")
    sys.exit(1)


def read_csv(path):
    rows = defaultdict(list)
    names = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            time = int(row["time_ms"]) if row["time_ms"] else None
            rows[(row["job_id"], row["series"])].append((int(row["step"]), float(row["value"]), time))
            names[row["job_id"]] = row["job_name"]
    return rows, names


def check_mlflow(mlruns, name, jobs, rows):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file://{os.path.abspath(mlruns)}")
    found = [e for e in client.search_experiments() if e.name.startswith(f"{name} (")]
    if len(found) != 1:
        fail(f"mlflow: {len(found)} experiments named {name!r}")
    runs = client.search_runs([found[0].experiment_id], max_results=10000)
    by_job = {r.data.tags.get("tandem.job_id"): r for r in runs}
    if set(by_job) != set(jobs):
        fail(f"mlflow: runs for {sorted(by_job)} but the experiment has jobs {sorted(jobs)}")
    points = 0
    for (job, series), expected in rows.items():
        run = by_job[job]
        history = sorted(client.get_metric_history(run.info.run_id, series), key=lambda m: (m.step, m.timestamp))
        got = [(m.step, m.value, m.timestamp) for m in history]
        want = sorted((s, v, t) for s, v, t in expected)
        if [(s, v) for s, v, _ in got] != [(s, v) for s, v, _ in want]:
            fail(f"mlflow: {job} {series}: {got[:3]}... != {want[:3]}...")
        for (_, _, t_got), (_, _, t_want) in zip(got, want):
            if t_want is not None and t_got != t_want:
                fail(f"mlflow: {job} {series}: timestamp {t_got} != {t_want}")
        points += len(got)
    for job, run in by_job.items():
        if run.data.tags.get("tandem.kind") == "train":
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            if "adapter_model.safetensors" not in names:
                fail(f"mlflow: train run {job} has artifacts {sorted(names)}")
            if "training.lr" not in run.data.params:
                fail(f"mlflow: train run {job} has params {sorted(run.data.params)}")
    return len(runs), points


def check_tensorboard(logdir, rows, names):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_prefix = defaultdict(list)
    for (job, series), expected in rows.items():
        by_prefix[job[:8]].append((job, series, expected))
    scalars = 0
    folders = sorted(os.listdir(logdir))
    seen = set()
    for folder in folders:
        prefix = folder.rsplit("-", 1)[-1]
        acc = EventAccumulator(os.path.join(logdir, folder), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        for job, series, expected in by_prefix.get(prefix, []):
            seen.add(job)
            if series not in tags:
                fail(f"tensorboard: {folder} has no scalar {series!r} (tags {sorted(tags)})")
            got = sorted((e.step, e.value) for e in acc.Scalars(series))
            want = sorted((s, float(np.float32(v))) for s, v, _ in expected)
            if got != want:
                fail(f"tensorboard: {folder} {series}: {got[:3]}... != {want[:3]}...")
            scalars += len(got)
    missing = {job for job, _ in rows} - seen
    if missing:
        fail(f"tensorboard: no run folder for jobs {sorted(missing)}")
    return len(folders), scalars


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mlruns", required=True)
    parser.add_argument("--tensorboard", required=True)
    parser.add_argument("--metrics", required=True, help="metrics.csv of tandem export --format files")
    parser.add_argument("--experiment-name", required=True)
    parser.add_argument("--jobs", required=True, help="comma-separated job ids of the experiment")
    args = parser.parse_args()
    rows, names = read_csv(args.metrics)
    if not rows:
        fail("metrics.csv has no points")
    jobs = set(args.jobs.split(","))
    runs, points = check_mlflow(args.mlruns, args.experiment_name, jobs, rows)
    folders, scalars = check_tensorboard(args.tensorboard, rows, names)
    print(f"OK mlflow: {runs} runs, {points} metric points match; tensorboard: {folders} runs, {scalars} scalars match")


if __name__ == "__main__":
    main()
