//! `ClientService`: what the `tandem` CLI calls. Every call authenticates and is scoped to the caller's team.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;

use prost::Message;
use tandem_proto as pb;
use tandem_proto::client_service_server::ClientService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{artifact_ref, experiment_status, job_status};
use super::{CHUNK_BYTES, Shared, status_of, store_status};
use crate::auth::{Principal, new_token, require_admin, require_client, validate_name};
use crate::planning;
use crate::scheduler::{Submission, TeamScope};
use crate::store::{AuditEntry, JobRecord, TokenRole, WorkerRecord, now_ms, sha256_hex};

/// The planner's training job kind, whose stage and fold the results carry for plots.
const TRAIN_KIND: &str = "train";

pub struct ClientApi {
    shared: Shared,
}

impl ClientApi {
    pub fn new(shared: Shared) -> ClientApi {
        ClientApi { shared }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = self.shared.auth.authenticate(request.metadata())?;
        require_client(&principal)?;
        Ok(principal)
    }

    /// Blob hashes the scope may download: inputs of its experiments and artifacts of their jobs.
    fn visible_blob(&self, scope: TeamScope<'_>, sha256: &str) -> Result<bool, Status> {
        let scheduler = &self.shared.scheduler;
        for (experiment, _, _) in scheduler.experiments(scope) {
            if experiment.inputs.iter().any(|i| i.sha256 == sha256) {
                return Ok(true);
            }
            for job_id in &experiment.job_ids {
                let artifacts = scheduler.store().artifacts(job_id).map_err(store_status)?;
                if artifacts.iter().any(|a| a.sha256 == sha256) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

/// Streams blob `sha256` in chunks after verifying its hash.
pub(super) fn stream_blob(shared: &Shared, sha256: &str) -> Result<ChunkStream, Status> {
    let bytes = shared
        .scheduler
        .store()
        .blobs()
        .read_verified(sha256)
        .map_err(store_status)?;
    let header = pb::ArtifactHeader {
        sha256: sha256.to_string(),
        size: bytes.len() as u64,
        ..Default::default()
    };
    let mut chunks: Vec<Result<pb::ArtifactChunk, Status>> = Vec::new();
    let mut first = Some(header);
    if bytes.is_empty() {
        chunks.push(Ok(pb::ArtifactChunk {
            header: first.take(),
            data: Vec::new(),
        }));
    }
    for piece in bytes.chunks(CHUNK_BYTES) {
        chunks.push(Ok(pb::ArtifactChunk {
            header: first.take(),
            data: piece.to_vec(),
        }));
    }
    Ok(Box::pin(tokio_stream::iter(chunks)))
}

/// Every stored metric series of `job_id`, points in batch order.
fn series_of(shared: &Shared, job_id: &str) -> Result<Vec<pb::MetricSeries>, Status> {
    let mut by_name: BTreeMap<String, (Vec<u64>, Vec<f64>)> = BTreeMap::new();
    for (_, encoded) in shared
        .scheduler
        .store()
        .metric_batches(job_id)
        .map_err(store_status)?
    {
        let batch = pb::MetricBatch::decode(encoded.as_slice()).map_err(|e| {
            Status::data_loss(format!("stored metric batch of {job_id} undecodable: {e}"))
        })?;
        for point in batch.points {
            let entry = by_name.entry(point.name).or_default();
            entry.0.push(point.step);
            entry.1.push(point.value);
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, (steps, values))| pb::MetricSeries {
            job_id: job_id.to_string(),
            name,
            steps,
            values,
        })
        .collect())
}

/// The worker (and its code version) that ran `job`'s last successful attempt (else its last attempt).
fn environment(shared: &Shared, job: &JobRecord) -> Option<pb::JobEnvironment> {
    let worker_id = job
        .attempt_log
        .iter()
        .rev()
        .find(|a| a.outcome == "succeeded")
        .or(job.attempt_log.last())
        .map(|a| a.worker.clone())?;
    let worker = shared.scheduler.worker(&worker_id);
    let field =
        |f: fn(&WorkerRecord) -> &String| worker.as_ref().map(f).cloned().unwrap_or_default();
    Some(pb::JobEnvironment {
        job_id: job.id.clone(),
        worker: worker_id.clone(),
        worker_version: field(|w| &w.version),
        git_commit: field(|w| &w.git_commit),
        cargo_lock_sha256: field(|w| &w.cargo_lock_sha256),
        host: field(|w| &w.host),
        devices: worker
            .as_ref()
            .map(|w| super::convert::devices_to_pb(&w.devices))
            .unwrap_or_default(),
    })
}

/// The top-level `stage` and `fold` of a job config (a planner JobSpec, or a job-graph config that has them).
#[derive(serde::Deserialize)]
struct StageFold {
    stage: Option<String>,
    fold: Option<u32>,
}

/// Where a training job sits (stage, fold), read from its stored config; `None` when the config names no stage.
pub fn placement(job_id: &str, config: &[u8]) -> Option<pb::JobPlacement> {
    let parsed: StageFold = serde_json::from_slice(config).ok()?;
    Some(pb::JobPlacement {
        job_id: job_id.to_string(),
        stage: parsed.stage.filter(|s| !s.is_empty())?,
        fold: parsed.fold,
    })
}

#[tonic::async_trait]
impl ClientService for ClientApi {
    async fn submit_experiment(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        let mut names = HashSet::new();
        let mut inputs = Vec::new();
        for (i, file) in req.inputs.iter().enumerate() {
            if file.name.is_empty() || file.name.contains('\0') || !names.insert(file.name.clone())
            {
                return Err(Status::invalid_argument(format!(
                    "inputs[{i}].name: empty, invalid or duplicate {:?}",
                    file.name
                )));
            }
            inputs.push(crate::store::InputRef {
                name: file.name.clone(),
                sha256: sha256_hex(&file.content),
                size: file.content.len() as u64,
            });
        }
        let manifest_name = if req.manifest_name.is_empty() {
            "manifest".to_string()
        } else {
            req.manifest_name.clone()
        };
        let plan = planning::expand(
            &req.format,
            &manifest_name,
            &req.manifest,
            &req.plan,
            &inputs,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let team = principal
            .team_scope()
            .unwrap_or(&principal.name)
            .to_string();
        let outcome = self
            .shared
            .scheduler
            .submit(Submission {
                name: plan.name,
                team,
                submitter: principal.actor(),
                manifest: req.manifest,
                manifest_format: req.format,
                manifest_name,
                inputs: req
                    .inputs
                    .into_iter()
                    .map(|f| (f.name, f.content))
                    .collect(),
                priority: req.priority,
                jobs: plan.jobs,
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SubmitReply {
            experiment_id: outcome.experiment_id,
            jobs: outcome.jobs as u32,
            cached: outcome.cached as u32,
        }))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsReply>, Status> {
        let principal = self.caller(&request)?;
        let experiments = self
            .shared
            .scheduler
            .experiments(principal.team_scope())
            .into_iter()
            .map(|(e, state, done)| pb::ExperimentSummary {
                id: e.id,
                name: e.name,
                team: e.team,
                submitter: e.submitter,
                state: state.to_string(),
                created_ms: e.created_ms,
                jobs: e.job_ids.len() as u32,
                jobs_done: done as u32,
            })
            .collect();
        Ok(Response::new(pb::ListExperimentsReply { experiments }))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::ExperimentStatus>, Status> {
        let principal = self.caller(&request)?;
        let view = self
            .shared
            .scheduler
            .experiment(principal.team_scope(), &request.get_ref().experiment_id)
            .map_err(status_of)?;
        Ok(Response::new(experiment_status(&view)))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let principal = self.caller(&request)?;
        let experiment_id = request.into_inner().experiment_id;
        let scheduler = self.shared.scheduler.clone();
        let team = principal.team_scope().map(str::to_string);
        // Subscribe before the snapshot so no change falls between them.
        let mut events = scheduler.subscribe();
        let view = scheduler
            .experiment(team.as_deref(), &experiment_id)
            .map_err(status_of)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let done_event = |state: &str| pb::WatchEvent {
                experiment_id: experiment_id.clone(),
                job: None,
                message: format!("experiment {state}"),
                experiment_done: true,
                experiment_state: state.to_string(),
            };
            let mut view = view;
            'snapshot: loop {
                for job in &view.jobs {
                    let event = pb::WatchEvent {
                        experiment_id: experiment_id.clone(),
                        job: Some(job_status(job)),
                        message: String::new(),
                        experiment_done: false,
                        experiment_state: view.state.to_string(),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if view.state != "running" {
                    let _ = tx.send(Ok(done_event(view.state))).await;
                    return;
                }
                loop {
                    let event = match events.recv().await {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            match scheduler.experiment(team.as_deref(), &experiment_id) {
                                Ok(fresh) => {
                                    view = fresh;
                                    continue 'snapshot;
                                }
                                Err(_) => return,
                            }
                        }
                        Err(_) => return,
                    };
                    if !event.experiments.contains(&experiment_id) {
                        continue;
                    }
                    let Ok(fresh) = scheduler.experiment(team.as_deref(), &experiment_id) else {
                        return;
                    };
                    if let Some(job) = fresh.jobs.iter().find(|j| j.job.id == event.job_id) {
                        let out = pb::WatchEvent {
                            experiment_id: experiment_id.clone(),
                            job: Some(job_status(job)),
                            message: event.message.clone(),
                            experiment_done: false,
                            experiment_state: fresh.state.to_string(),
                        };
                        if tx.send(Ok(out)).await.is_err() {
                            return;
                        }
                    }
                    if fresh.state != "running" {
                        let _ = tx.send(Ok(done_event(fresh.state))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let principal = self.caller(&request)?;
        let cancelled = self
            .shared
            .scheduler
            .cancel(
                principal.team_scope(),
                &principal.actor(),
                &request.get_ref().experiment_id,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::CancelReply {
            cancelled: cancelled as u32,
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryReply>, Status> {
        let principal = self.caller(&request)?;
        let requeued = self
            .shared
            .scheduler
            .retry(
                principal.team_scope(),
                &principal.actor(),
                &request.get_ref().experiment_id,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RetryReply {
            requeued: requeued as u32,
        }))
    }

    async fn results(
        &self,
        request: Request<pb::ResultsRequest>,
    ) -> Result<Response<pb::ResultsReply>, Status> {
        let principal = self.caller(&request)?;
        let scheduler = &self.shared.scheduler;
        let view = scheduler
            .experiment(principal.team_scope(), &request.get_ref().experiment_id)
            .map_err(status_of)?;
        let store = scheduler.store();
        let mut series = Vec::new();
        let mut artifacts = Vec::new();
        let mut placements = Vec::new();
        for job in &view.jobs {
            series.extend(series_of(&self.shared, &job.job.id)?);
            artifacts.extend(
                store
                    .artifacts(&job.job.id)
                    .map_err(store_status)?
                    .iter()
                    .map(artifact_ref),
            );
            if job.job.kind == TRAIN_KIND
                && let Some(config) = store.job_config(&job.job.id).map_err(store_status)?
            {
                placements.extend(placement(&job.job.id, &config));
            }
        }
        let manifest = store
            .manifest(&view.record.id)
            .map_err(store_status)?
            .unwrap_or_default();
        Ok(Response::new(pb::ResultsReply {
            manifest_format: view.record.manifest_format.clone(),
            status: Some(experiment_status(&view)),
            series,
            artifacts,
            manifest,
            placements,
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        let scheduler = &self.shared.scheduler;
        let view = scheduler
            .experiment(principal.team_scope(), &req.experiment_id)
            .map_err(status_of)?;
        let store = scheduler.store();
        let mut checks = Vec::new();
        let manifest = store
            .manifest(&view.record.id)
            .map_err(store_status)?
            .unwrap_or_default();
        let actual = sha256_hex(&manifest);
        checks.push(pb::AuditCheck {
            subject: format!("manifest {}", view.record.manifest_name),
            ok: actual == view.record.manifest_sha256,
            expected: view.record.manifest_sha256.clone(),
            actual,
            detail: String::new(),
        });
        let mut check_blob = |subject: String, expected: &str| {
            let (actual, detail) = match store.blobs().rehash(expected) {
                Ok(actual) => (actual, String::new()),
                Err(err) => (String::new(), err.to_string()),
            };
            checks.push(pb::AuditCheck {
                subject,
                ok: actual == expected,
                expected: expected.to_string(),
                actual,
                detail,
            });
        };
        for input in &view.record.inputs {
            check_blob(format!("input {}", input.name), &input.sha256);
        }
        let mut environments = Vec::new();
        for job in &view.jobs {
            for artifact in store.artifacts(&job.job.id).map_err(store_status)? {
                check_blob(
                    format!(
                        "artifact {}/{} ({})",
                        job.job.name, artifact.name, artifact.role
                    ),
                    &artifact.sha256,
                );
            }
            environments.extend(environment(&self.shared, &job.job));
        }
        let log = if req.include_log {
            scheduler
                .audit_log(&view.record)
                .map_err(status_of)?
                .into_iter()
                .map(|e: AuditEntry| pb::AuditLogEntry {
                    time_ms: e.time_ms,
                    actor: e.actor,
                    action: e.action,
                    experiment_id: e.experiment_id.unwrap_or_default(),
                    job_id: e.job_id.unwrap_or_default(),
                    detail: e.detail,
                })
                .collect()
        } else {
            Vec::new()
        };
        let ok = checks.iter().all(|c| c.ok);
        Ok(Response::new(pb::AuditReply {
            checks,
            environments,
            log,
            coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            ok,
        }))
    }

    async fn replay_job(
        &self,
        request: Request<pb::ReplayJobRequest>,
    ) -> Result<Response<pb::ReplayJobReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        let replay_id = self
            .shared
            .scheduler
            .replay(
                principal.team_scope(),
                &principal.actor(),
                &req.experiment_id,
                &req.job_id,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ReplayJobReply { replay_id }))
    }

    async fn get_replay(
        &self,
        request: Request<pb::GetReplayRequest>,
    ) -> Result<Response<pb::ReplayStatus>, Status> {
        let principal = self.caller(&request)?;
        let replay_id = request.into_inner().replay_id;
        let (replay, original) = self
            .shared
            .scheduler
            .replay_view(principal.team_scope(), &replay_id)
            .map_err(status_of)?;
        let store = self.shared.scheduler.store();
        let artifacts = |job_id: &str| -> Result<Vec<pb::ArtifactRef>, Status> {
            Ok(store
                .artifacts(job_id)
                .map_err(store_status)?
                .iter()
                .map(artifact_ref)
                .collect())
        };
        let done = replay.job.state.is_terminal();
        Ok(Response::new(pb::ReplayStatus {
            replay_id: replay_id.clone(),
            experiment_id: replay.job.experiments.first().cloned().unwrap_or_default(),
            job_id: original.id.clone(),
            done,
            original_artifacts: artifacts(&original.id)?,
            replay_artifacts: artifacts(&replay_id)?,
            original_series: series_of(&self.shared, &original.id)?,
            replay_series: series_of(&self.shared, &replay_id)?,
            original_environment: environment(&self.shared, &original),
            replay_environment: environment(&self.shared, &replay.job),
            replay: Some(job_status(&replay)),
        }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersReply>, Status> {
        self.caller(&request)?;
        let workers = self
            .shared
            .scheduler
            .workers()
            .into_iter()
            .map(|w| pb::WorkerInfo {
                id: w.record.id,
                name: w.record.name,
                resources: Some(super::convert::resources_to_pb(&w.record.resources)),
                kinds: w.record.kinds,
                last_seen_ms: w.record.last_seen_ms,
                alive: w.alive,
                jobs: w.jobs,
                version: w.record.version,
                host: w.record.host,
                devices: super::convert::devices_to_pb(&w.record.devices),
            })
            .collect();
        Ok(Response::new(pb::ListWorkersReply { workers }))
    }

    type DownloadArtifactStream = ChunkStream;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let principal = self.caller(&request)?;
        let sha256 = request.into_inner().sha256;
        if !self.visible_blob(principal.team_scope(), &sha256)? {
            return Err(Status::not_found(format!(
                "no artifact {sha256} in your team's experiments"
            )));
        }
        Ok(Response::new(stream_blob(&self.shared, &sha256)?))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let principal = self.shared.auth.authenticate(request.metadata())?;
        require_admin(&principal)?;
        let req = request.into_inner();
        let (role, name) = match (req.team.is_empty(), req.worker.is_empty(), req.admin) {
            (false, true, false) => (TokenRole::Team, req.team),
            (true, false, false) => (TokenRole::Worker, req.worker),
            (true, true, true) => (TokenRole::Admin, "admin".to_string()),
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of team, worker or admin",
                ));
            }
        };
        validate_name(role.label(), &name).map_err(Status::invalid_argument)?;
        let (secret, record) = new_token(role, &name);
        let store = self.shared.scheduler.store();
        store.put_token(&record).map_err(store_status)?;
        store
            .append_audit(&AuditEntry {
                time_ms: now_ms(),
                actor: principal.actor(),
                action: "token-create".into(),
                experiment_id: None,
                job_id: None,
                detail: format!("{} {} ({})", role.label(), name, record.id),
            })
            .map_err(store_status)?;
        store.commit().await.map_err(Status::internal)?;
        let token_id = record.id.clone();
        self.shared.auth.upsert(record);
        Ok(Response::new(pb::CreateTokenReply {
            token: secret,
            token_id,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        let principal = self.shared.auth.authenticate(request.metadata())?;
        require_admin(&principal)?;
        let tokens = self
            .shared
            .auth
            .tokens()
            .into_iter()
            .map(|t| pb::TokenInfo {
                token_id: t.id,
                role: t.role.label().to_string(),
                name: t.name,
                created_ms: t.created_ms,
                revoked: t.revoked,
            })
            .collect();
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        let principal = self.shared.auth.authenticate(request.metadata())?;
        require_admin(&principal)?;
        let token_id = request.into_inner().token_id;
        let Some(mut record) = self
            .shared
            .auth
            .tokens()
            .into_iter()
            .find(|t| t.id == token_id)
        else {
            return Err(Status::not_found(format!("no token {token_id}")));
        };
        record.revoked = true;
        let store = self.shared.scheduler.store();
        store.put_token(&record).map_err(store_status)?;
        store
            .append_audit(&AuditEntry {
                time_ms: now_ms(),
                actor: principal.actor(),
                action: "token-revoke".into(),
                experiment_id: None,
                job_id: None,
                detail: token_id,
            })
            .map_err(store_status)?;
        store.commit().await.map_err(Status::internal)?;
        self.shared.auth.upsert(record);
        Ok(Response::new(pb::RevokeTokenReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::placement;

    #[test]
    fn placements_read_the_top_level_stage_and_fold() {
        let p = placement(
            "j",
            br#"{"id":"j","stage":"stage2","fold":3,"config":{"type":"train"}}"#,
        )
        .unwrap();
        assert_eq!(
            (p.job_id.as_str(), p.stage.as_str(), p.fold),
            ("j", "stage2", Some(3))
        );
        let p = placement("j", br#"{"stage":"stage1","fold":null}"#).unwrap();
        assert_eq!((p.stage.as_str(), p.fold), ("stage1", None));
        assert!(placement("j", br#"{"steps":3}"#).is_none());
        assert!(placement("j", br#"{"stage":null}"#).is_none());
        assert!(placement("j", b"not json").is_none());
    }
}
