//! `WorkerService`: what `tandem-worker` calls. A worker token may only act as workers registered under its
//! own name.

use std::time::Duration;

use prost::Message;
use tandem_experiments::planner::artifacts::ArtifactRole;
use tandem_proto as pb;
use tandem_proto::worker_service_server::WorkerService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    artifact_ref, cluster_job_from_pb, devices_from_pb, job_spec_to_pb, resources_from_pb,
};
use super::{ChunkStream, Shared};
use crate::auth::{Principal, require_worker, require_worker_identity, validate_name};
use crate::chaos::crash_point;
use crate::scheduler::{LeaseGrant, MetricBatchIn, ProgressReport};
use crate::store::{ArtifactRecord, TokenRole, WorkerRecord, is_sha256_hex, now_ms};

pub struct WorkerApi {
    shared: Shared,
}

/// An artifact name is one plain path component: it is used for file names on export.
pub fn validate_artifact_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0', ':']);
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "artifact name {name:?} must be one plain file name (no path separators, not starting with '.')"
        )))
    }
}

impl WorkerApi {
    pub fn new(shared: Shared) -> WorkerApi {
        WorkerApi { shared }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = self.shared.authenticate(request)?;
        require_worker(&principal)?;
        Ok(principal)
    }

    /// A worker token may act only as a worker registered under its name.
    fn check_worker(&self, principal: &Principal, worker_id: &str) -> Result<(), Status> {
        let registered = self.shared.scheduler.worker(worker_id);
        Ok(require_worker_identity(
            principal,
            worker_id,
            registered.as_ref(),
        )?)
    }

    fn lease_to_pb(grant: LeaseGrant) -> pb::Lease {
        let job = &grant.job;
        pb::Lease {
            job: Some(job_spec_to_pb(job, grant.config.clone())),
            attempt: grant.attempt,
            deadline_ms: grant.deadline_ms,
            checkpoint: grant.checkpoint.as_ref().map(|c| pb::Checkpoint {
                sha256: c.sha256.clone(),
                metric_seq: c.metric_seq,
            }),
            parents: grant.parents.iter().map(artifact_ref).collect(),
            experiment_id: grant.experiment_id.clone(),
        }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        let name = if principal.role == TokenRole::Worker {
            principal.name.clone()
        } else {
            req.name.clone()
        };
        validate_name("name", &name).map_err(Status::invalid_argument)?;
        let known = (!req.worker_id.is_empty()).then_some(req.worker_id.as_str());
        if let Some(id) = known
            && self.shared.scheduler.worker(id).is_some()
        {
            self.check_worker(&principal, id)?;
        }
        let devices = devices_from_pb(&req.devices).map_err(Status::invalid_argument)?;
        let record = WorkerRecord {
            id: String::new(),
            name,
            resources: resources_from_pb(req.resources.as_ref()),
            kinds: req.kinds,
            version: req.version,
            git_commit: req.git_commit,
            cargo_lock_sha256: req.cargo_lock_sha256,
            host: req.host,
            registered_ms: 0,
            last_seen_ms: 0,
            devices,
            cluster_job: cluster_job_from_pb(req.cluster_job.as_ref())
                .map_err(Status::invalid_argument)?,
        };
        let worker_id = self.shared.scheduler.register_worker(known, record).await?;
        let config = self.shared.scheduler.config();
        Ok(Response::new(pb::RegisterReply {
            worker_id,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            lease_ttl_ms: config.lease_ttl_ms,
        }))
    }

    async fn lease_job(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        self.check_worker(&principal, &req.worker_id)?;
        let grant = self
            .shared
            .scheduler
            .lease(&req.worker_id, Duration::from_millis(req.wait_ms))
            .await?;
        if grant.is_some() {
            crash_point("lease.committed");
        }
        Ok(Response::new(pb::LeaseReply {
            lease: grant.map(Self::lease_to_pb),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        if self.shared.scheduler.worker(&req.worker_id).is_none() {
            return Ok(Response::new(pb::HeartbeatReply {
                cancel: req.jobs.iter().map(|j| j.job_id.clone()).collect(),
                lease_deadline_ms: 0,
                reregister: true,
            }));
        }
        self.check_worker(&principal, &req.worker_id)?;
        let reports: Vec<ProgressReport> = req
            .jobs
            .iter()
            .map(|j| ProgressReport {
                job_id: j.job_id.clone(),
                attempt: j.attempt,
                step: j.step,
                total: j.total,
            })
            .collect();
        let outcome = self
            .shared
            .scheduler
            .heartbeat(&req.worker_id, &reports)
            .await?;
        crash_point("heartbeat.committed");
        Ok(Response::new(pb::HeartbeatReply {
            cancel: outcome.cancel,
            lease_deadline_ms: outcome.lease_deadline_ms,
            reregister: false,
        }))
    }

    async fn stream_metrics(
        &self,
        request: Request<Streaming<pb::MetricBatch>>,
    ) -> Result<Response<pb::MetricAck>, Status> {
        let principal = self.caller(&request)?;
        let mut stream = request.into_inner();
        let mut worker_id: Option<String> = None;
        let mut _slot = None;
        let mut batches = Vec::new();
        let mut held_bytes = 0usize;
        let limits = self.shared.limits;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            match &worker_id {
                None => {
                    self.check_worker(&principal, &batch.worker_id)?;
                    _slot = Some(
                        self.shared
                            .stream_slot(&format!("worker {}", batch.worker_id))?,
                    );
                    worker_id = Some(batch.worker_id.clone());
                }
                Some(id) if *id != batch.worker_id => {
                    return Err(Status::invalid_argument(
                        "one metric stream carries one worker's batches",
                    ));
                }
                Some(_) => {}
            }
            if batches.len() >= limits.max_batches_per_stream {
                return Err(Status::resource_exhausted(format!(
                    "more than {} batches in one stream",
                    limits.max_batches_per_stream
                )));
            }
            if batch.points.len() > limits.max_points_per_batch {
                return Err(Status::resource_exhausted(format!(
                    "metric batch {} of job {} has {} points; the limit is {}",
                    batch.seq,
                    batch.job_id,
                    batch.points.len(),
                    limits.max_points_per_batch
                )));
            }
            let last = batch
                .points
                .first()
                .map(|p| (p.name.clone(), p.step, p.value));
            // A batch may carry thousands of distinct names: deduplicated through a set.
            let names: Vec<String> = batch
                .points
                .iter()
                .map(|p| p.name.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(str::to_string)
                .collect();
            let stored = pb::MetricBatch {
                job_id: String::new(),
                attempt: batch.attempt,
                seq: batch.seq,
                points: batch.points,
                worker_id: String::new(),
                time_ms: batch.time_ms,
            };
            let wait = self.shared.metric_points.charge(
                &batch.job_id,
                stored.points.len(),
                limits.metric_points_per_s,
                limits.metric_points_burst,
            );
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            held_bytes += stored.encoded_len();
            if held_bytes > limits.max_metric_stream_bytes {
                return Err(Status::resource_exhausted(format!(
                    "one metric stream carries more than {} bytes of batches; send them in several streams",
                    limits.max_metric_stream_bytes
                )));
            }
            batches.push(MetricBatchIn {
                job_id: batch.job_id,
                attempt: batch.attempt,
                seq: batch.seq,
                points: stored.points.len() as u64,
                encoded: stored.encode_to_vec(),
                names,
                last,
            });
        }
        let Some(worker_id) = worker_id else {
            return Ok(Response::new(pb::MetricAck::default()));
        };
        crash_point("metrics.received");
        let counts = self
            .shared
            .scheduler
            .ingest_metrics(&worker_id, batches)
            .await?;
        crash_point("metrics.stored");
        Ok(Response::new(pb::MetricAck {
            batches: counts.batches,
            duplicates: counts.duplicates,
            points: counts.points,
        }))
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::UploadArtifactReply>, Status> {
        let principal = self.caller(&request)?;
        let mut stream = request.into_inner();
        let Some(first) = stream.next().await else {
            return Err(Status::invalid_argument(
                "empty upload: the first chunk must carry the header",
            ));
        };
        let first = first?;
        let header = first.header.clone().ok_or_else(|| {
            Status::invalid_argument("the first chunk of an upload must carry the header")
        })?;
        self.check_worker(&principal, &header.worker_id)?;
        let _slot = self
            .shared
            .stream_slot(&format!("worker {}", header.worker_id))?;
        validate_artifact_name(&header.name)?;
        if ArtifactRole::parse(&header.role).is_none() {
            return Err(Status::invalid_argument(format!(
                "role {:?}: expected {}",
                header.role,
                ArtifactRole::ACCEPTED
            )));
        }
        if !is_sha256_hex(&header.sha256) {
            return Err(Status::invalid_argument(format!(
                "sha256 {:?}: expected 64 lower-case hex digits",
                header.sha256
            )));
        }
        let limit = self.shared.limits.max_upload_bytes;
        if header.size > limit {
            return Err(Status::resource_exhausted(format!(
                "artifact of {} bytes exceeds the upload limit of {limit}",
                header.size
            )));
        }
        let scheduler = &self.shared.scheduler;
        let held: u64 = scheduler
            .artifacts(&header.job_id)?
            .iter()
            .filter(|a| a.name != header.name)
            .map(|a| a.size)
            .sum();
        let job_limit = self.shared.limits.max_job_artifact_bytes;
        if held.saturating_add(header.size) > job_limit {
            return Err(Status::resource_exhausted(format!(
                "job {} holds {held} bytes of artifacts; {} more bytes for {} would pass the per-job limit of {job_limit}",
                header.job_id, header.size, header.name
            )));
        }
        let mut upload = scheduler.begin_artifact_upload(
            &header.worker_id,
            &header.job_id,
            header.attempt,
            limit,
        )?;
        upload.write(&first.data)?;
        while let Some(chunk) = stream.next().await {
            upload.write(&chunk?.data)?;
        }
        crash_point("artifact.received");
        let size = upload.finish(header.size, &header.sha256)?;
        let record = ArtifactRecord {
            job_id: header.job_id.clone(),
            name: header.name.clone(),
            sha256: header.sha256.clone(),
            size,
            role: header.role.clone(),
            attempt: header.attempt,
            metric_seq: header.metric_seq,
            created_ms: now_ms(),
        };
        scheduler
            .record_artifact(&header.worker_id, record.clone())
            .await?;
        crash_point("artifact.recorded");
        Ok(Response::new(pb::UploadArtifactReply {
            artifact: Some(artifact_ref(&record)),
        }))
    }

    type DownloadArtifactStream = ChunkStream;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        self.caller(&request)?;
        Ok(Response::new(
            self.shared.stream_blob(&request.get_ref().sha256)?,
        ))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        self.check_worker(&principal, &req.worker_id)?;
        self.shared
            .scheduler
            .complete(&req.worker_id, &req.job_id, req.attempt)
            .await?;
        crash_point("outcome.committed");
        Ok(Response::new(pb::CompleteReply {}))
    }

    async fn fail_job(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        self.check_worker(&principal, &req.worker_id)?;
        let will_retry = self
            .shared
            .scheduler
            .fail(
                &req.worker_id,
                &req.job_id,
                req.attempt,
                &req.reason,
                req.permanent,
            )
            .await?;
        crash_point("outcome.committed");
        Ok(Response::new(pb::FailReply { will_retry }))
    }

    async fn release_job(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        self.check_worker(&principal, &req.worker_id)?;
        self.shared
            .scheduler
            .release(&req.worker_id, &req.job_id, req.attempt, &req.reason)
            .await?;
        crash_point("outcome.committed");
        Ok(Response::new(pb::ReleaseReply {}))
    }

    async fn report_rung(
        &self,
        request: Request<pb::RungRequest>,
    ) -> Result<Response<pb::RungReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        self.check_worker(&principal, &req.worker_id)?;
        let decision = self
            .shared
            .scheduler
            .report_rung(
                &req.worker_id,
                &req.job_id,
                req.attempt,
                req.rung,
                req.step,
                req.value,
            )
            .await?;
        Ok(Response::new(pb::RungReply {
            stop: decision.stop,
            cutoff: decision.cutoff,
            recorded: decision.recorded,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_artifact_name;

    #[test]
    fn artifact_names_are_single_plain_components() {
        for ok in ["adapter_model.safetensors", "checkpoint", "metrics-1.csv"] {
            assert!(validate_artifact_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "c:x", "a\0b",
        ] {
            assert!(validate_artifact_name(bad).is_err(), "{bad:?}");
        }
    }
}
