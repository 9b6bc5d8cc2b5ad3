"""A Python client of Tandem's gRPC API, with stubs generated from proto/tandem.proto by grpcio-tools.

Submits a job-graph (or TOML) manifest, follows it with the Watch stream until it ends, reads its results, and
prints one JSON object: what a lab's notebook or pipeline would do. The token is read from TANDEM_TOKEN, never
from the command line. Used by tests/tests/python_client.rs; set up with scripts/python-client/setup.sh.
"""

import argparse
import json
import os
import sys

import grpc

import tandem_pb2
import tandem_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest", help="a job graph (.json) or an experiment manifest (.toml)")
    parser.add_argument("--coordinator", default=os.environ.get("TANDEM_COORDINATOR", "http://127.0.0.1:7070"))
    args = parser.parse_args()

    target = args.coordinator.removeprefix("http://")
    token = os.environ.get("TANDEM_TOKEN", "")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    channel = grpc.insecure_channel(target)
    client = tandem_pb2_grpc.ClientServiceStub(channel)

    with open(args.manifest, "rb") as f:
        manifest = f.read()
    fmt = "toml" if args.manifest.endswith(".toml") else "jobgraph+json"
    try:
        submitted = client.SubmitExperiment(
            tandem_pb2.SubmitRequest(
                manifest=manifest, format=fmt, manifest_name=os.path.basename(args.manifest)
            ),
            metadata=metadata,
        )
    except grpc.RpcError as err:
        print(f"error: submit: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1

    events, state, finished = 0, "", set()
    for event in client.Watch(
        tandem_pb2.WatchRequest(experiment_id=submitted.experiment_id), metadata=metadata
    ):
        events += 1
        if event.job.state == tandem_pb2.JOB_STATE_SUCCEEDED:
            finished.add(event.job.name)
        if event.experiment_done:
            state = event.experiment_state
            break

    results = client.Results(
        tandem_pb2.ResultsRequest(experiment_id=submitted.experiment_id), metadata=metadata
    )
    names = {job.id: job.name for job in results.status.jobs}
    series = {
        f"{names[s.job_id]}/{s.name}": [[step, value] for step, value in zip(s.steps, s.values)]
        for s in results.series
    }
    print(
        json.dumps(
            {
                "experiment": submitted.experiment_id,
                "jobs": submitted.jobs,
                "state": state,
                "events": events,
                "succeeded": sorted(finished),
                "series": series,
                "manifest_format": results.manifest_format,
            },
            sort_keys=True,
        )
    )
    return 0 if state == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
