//! The coordinator under a flood: a worker streaming far more metric bytes than a stream may hold, batches over
//! the point limit, a client opening more watch streams than a caller may hold, and an oversized manifest are
//! each refused with the limit named, and the coordinator's peak resident memory stays bounded meanwhile.

use std::time::Duration;

use serde_json::json;
use tandem_proto as pb;
use tandem_proto::client_service_client::ClientServiceClient;
use tandem_proto::worker_service_client::WorkerServiceClient;
use tandem_tests::{FAST, LONG, Lab, job, series, wait_for, with_token};
use tonic::transport::Channel;

/// Streams each worker sends at once, and the bytes each would carry unrefused (100 batches of ~1.2 MB).
const FLOODERS: usize = 4;
const BATCHES: u64 = 100;
const POINTS: usize = 60_000;
/// The coordinator's default open-stream limit per caller.
const MAX_OPEN_STREAMS: usize = 64;

/// The FAST settings with `extra` added.
fn with_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST.iter().copied().chain(extra.iter().copied()).collect()
}

fn batch(worker_id: &str, seq: u64, points: usize) -> pb::MetricBatch {
    pb::MetricBatch {
        job_id: "flood".into(),
        attempt: 1,
        seq,
        worker_id: worker_id.into(),
        points: (0..points)
            .map(|i| pb::MetricPoint {
                name: "flood/x".into(),
                step: i as u64,
                value: i as f64,
            })
            .collect(),
        time_ms: 0,
    }
}

async fn stream_metrics(
    url: String,
    token: String,
    worker_id: String,
    batches: u64,
    points: usize,
) -> tonic::Status {
    let mut client = WorkerServiceClient::connect(url).await.unwrap();
    let stream = tokio_stream::iter((0..batches).map(move |seq| batch(&worker_id, seq, points)));
    match client.stream_metrics(with_token(stream, &token)).await {
        Ok(reply) => panic!("a flood was accepted: {:?}", reply.into_inner()),
        Err(status) => status,
    }
}

async fn open_watch(
    client: &mut ClientServiceClient<Channel>,
    token: &str,
    experiment: &str,
) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
    let request = pb::WatchRequest {
        experiment_id: experiment.into(),
    };
    Ok(client.watch(with_token(request, token)).await?.into_inner())
}

#[test]
fn floods_of_metrics_streams_and_manifests_are_refused_with_memory_bounded() {
    // No per-job rate here (it would refuse the flood first): this test is about what a stream may hold.
    let lab = Lab::start_with(&with_args(&[
        "--metric-points-per-s",
        "1e12",
        "--metric-points-burst",
        "1e12",
    ]));
    let url = lab.coordinator.url.clone();
    // Queued work nobody runs (no worker serves it): something to watch.
    let experiment = lab.submit(
        "idle.json",
        json!({"name": "idle", "jobs": [{"name": "wait", "kind": "test.emit", "config": {}}]}),
    );
    let (_, before_mib) = lab.coordinator.resident_mib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut worker = WorkerServiceClient::connect(url.clone()).await.unwrap();
        let register = pb::RegisterRequest {
            name: "flooder".into(),
            ..Default::default()
        };
        let worker_id = worker
            .register(with_token(register, &lab.worker_token))
            .await
            .unwrap()
            .into_inner()
            .worker_id;

        // Metric streams of ~120 MB each, four at once: each is refused once it holds 16 MiB.
        let floods: Vec<_> = (0..FLOODERS)
            .map(|_| {
                tokio::spawn(stream_metrics(
                    url.clone(),
                    lab.worker_token.clone(),
                    worker_id.clone(),
                    BATCHES,
                    POINTS,
                ))
            })
            .collect();
        for flood in floods {
            let status = flood.await.unwrap();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("bytes of batches"), "{status:?}");
        }
        // One batch over the point limit.
        let status = stream_metrics(
            url.clone(),
            lab.worker_token.clone(),
            worker_id.clone(),
            1,
            70_000,
        )
        .await;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("70000 points"), "{status:?}");

        // Watch streams past the per-caller limit are refused; closing them gives the slots back.
        let mut client = ClientServiceClient::connect(url.clone()).await.unwrap();
        let mut open = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..MAX_OPEN_STREAMS + 16 {
            match open_watch(&mut client, &lab.team, &experiment).await {
                Ok(stream) => open.push(stream),
                Err(status) => refused.push(status),
            }
        }
        assert_eq!(open.len(), MAX_OPEN_STREAMS);
        assert_eq!(refused.len(), 16);
        assert!(
            refused
                .iter()
                .all(|s| s.code() == tonic::Code::ResourceExhausted
                    && s.message().contains("64 open streams")),
            "{:?}",
            refused[0]
        );
        drop(open);
        let start = std::time::Instant::now();
        loop {
            if open_watch(&mut client, &lab.team, &experiment)
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                start.elapsed() < LONG,
                "closed watch streams never gave their slots back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A manifest over 4 MiB is refused before it is parsed.
        let submit = pb::SubmitRequest {
            manifest: vec![b' '; 5 << 20],
            format: "jobgraph+json".into(),
            manifest_name: "huge.json".into(),
            ..Default::default()
        };
        let status = client
            .submit_experiment(with_token(submit, &lab.team))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("exceeds the limit of 4194304 bytes"),
            "{status:?}"
        );
    });
    // Still serving, and the floods never held more than their limits in memory.
    let status = wait_for("the coordinator to answer", LONG, || {
        Some(lab.status(&experiment))
    });
    assert_eq!(status["state"], "running");
    let (peak_mib, after_mib) = lab.coordinator.resident_mib();
    println!(
        "flood: {FLOODERS} metric streams of ~{} MB each refused at 16 MiB; coordinator resident memory \
         {before_mib} MiB before, peak {peak_mib} MiB, {after_mib} MiB after",
        BATCHES as usize * POINTS * 20 / 1_000_000
    );
    assert!(
        peak_mib < before_mib + 256,
        "peak resident memory {peak_mib} MiB (from {before_mib} MiB) under the flood"
    );
}

#[test]
fn a_job_sending_points_faster_than_its_rate_is_slowed_down_and_loses_nothing() {
    // 20,000 points per second and per burst; the job sends 10 batches of 10,000 points as fast as it can,
    // so at least 4 s pass before the last point is read.
    let lab = Lab::start_with(&with_args(&[
        "--metric-points-per-s",
        "20000",
        "--metric-points-burst",
        "20000",
    ]));
    let _worker = lab.worker("fast");
    let started = std::time::Instant::now();
    let experiment = lab.submit(
        "fast.json",
        json!({"name": "fast", "jobs": [{"name": "chatty", "kind": "test.emit",
            "config": {"steps": 10, "points_per_step": 10000}}]}),
    );
    let status = lab.wait_state(&experiment, "succeeded");
    let took = started.elapsed();
    assert_eq!(job(&status, "chatty")["attempts"], 1, "{status}");
    assert!(
        took >= Duration::from_secs(4),
        "the rate did not hold: {took:?}"
    );
    let series = series(&lab.coordinator.url, &lab.team, &experiment);
    let points: usize = series.values().map(Vec::len).sum();
    assert_eq!(points, 10 * 10_000, "every point stored once");
}

#[test]
fn a_job_over_its_artifact_bytes_fails_once_naming_the_sizes() {
    let lab = Lab::start_with(&with_args(&["--max-job-artifact-mib", "1"]));
    let _worker = lab.worker("w1");
    let experiment = lab.submit(
        "big.json",
        json!({"name": "big", "jobs": [{"name": "big", "kind": "test.emit",
            "config": {"steps": 2, "output_bytes": 2_000_000}}]}),
    );
    let status = lab.wait_state(&experiment, "failed");
    let big = job(&status, "big");
    assert_eq!(big["attempts"], 1, "a size limit is not retried: {big}");
    let error = big["last_error"].as_str().unwrap();
    assert!(
        error.contains("2000000 more bytes for output.bin")
            && error.contains("per-job limit of 1048576"),
        "{error}"
    );
}
