//! `ClientService`: what the `tandem` CLI calls. Every call authenticates and is scoped to the caller's team;
//! results, audits and token administration come from their own modules, this file only translates.

use std::pin::Pin;

use tandem_proto as pb;
use tandem_proto::client_service_server::ClientService;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    artifacts_to_pb, audit_check_to_pb, audit_entry_to_pb, environment_to_pb, experiment_status,
    experiment_summary, placement_to_pb, replay_status, series_to_pb, token_info, watch_event,
    worker_info,
};
use super::limits::Slotted;
use super::{ChunkStream, Shared};
use crate::auth::{Principal, require_admin, require_client};
use crate::chaos::crash_point;
use crate::scheduler::Submission;
use crate::{audit, planning, results, tokens};

pub struct ClientApi {
    shared: Shared,
}

impl ClientApi {
    pub fn new(shared: Shared) -> ClientApi {
        ClientApi { shared }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = self.shared.authenticate(request)?;
        require_client(&principal)?;
        Ok(principal)
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = self.shared.authenticate(request)?;
        require_admin(&principal)?;
        Ok(principal)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ClientService for ClientApi {
    async fn submit_experiment(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        crash_point("submit.received");
        self.shared.limits.check_manifest(req.manifest.len())?;
        let manifest_name = if req.manifest_name.is_empty() {
            "manifest".to_string()
        } else {
            req.manifest_name.clone()
        };
        let invalid = |e: planning::PlanError| Status::invalid_argument(e.to_string());
        let inputs = planning::input_refs(&manifest_name, &req.inputs).map_err(invalid)?;
        let plan = planning::expand(
            &req.format,
            &manifest_name,
            &req.manifest,
            &req.experiment_name,
            &req.jobs,
            &inputs,
        )
        .map_err(invalid)?;
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
                inputs,
                inputs_held_by: principal.team_scope().map(str::to_string),
                priority: req.priority,
                jobs: plan.jobs,
            })
            .await?;
        crash_point("submit.committed");
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
            .map(|(record, state, done)| {
                experiment_summary(&record, state, record.job_ids.len(), done)
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
            .experiment(principal.team_scope(), &request.get_ref().experiment_id)?;
        Ok(Response::new(experiment_status(&view)))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let principal = self.caller(&request)?;
        let slot = self.shared.stream_slot(&principal.actor())?;
        let experiment_id = request.into_inner().experiment_id;
        let team = principal.team_scope().map(str::to_string);
        let updates = self.shared.scheduler.watch(team, experiment_id.clone())?;
        let events =
            ReceiverStream::new(updates).map(move |update| Ok(watch_event(&experiment_id, update)));
        Ok(Response::new(Box::pin(Slotted::new(events, slot))))
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
            .await?;
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
            .await?;
        Ok(Response::new(pb::RetryReply {
            requeued: requeued as u32,
        }))
    }

    async fn results(
        &self,
        request: Request<pb::ResultsRequest>,
    ) -> Result<Response<pb::ResultsReply>, Status> {
        let principal = self.caller(&request)?;
        let results = results::experiment_results(
            &self.shared.scheduler,
            principal.team_scope(),
            &request.get_ref().experiment_id,
        )?;
        Ok(Response::new(pb::ResultsReply {
            manifest_format: results.view.record.manifest_format.clone(),
            status: Some(experiment_status(&results.view)),
            series: series_to_pb(results.series),
            artifacts: artifacts_to_pb(&results.artifacts),
            manifest: results.manifest,
            placements: results
                .placements
                .into_iter()
                .map(placement_to_pb)
                .collect(),
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        let principal = self.caller(&request)?;
        let req = request.into_inner();
        let report = audit::audit_experiment(
            &self.shared.scheduler,
            principal.team_scope(),
            &req.experiment_id,
            req.include_log,
        )?;
        let ok = report.ok();
        Ok(Response::new(pb::AuditReply {
            checks: report.checks.into_iter().map(audit_check_to_pb).collect(),
            environments: report
                .environments
                .into_iter()
                .map(environment_to_pb)
                .collect(),
            log: report.log.into_iter().map(audit_entry_to_pb).collect(),
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
            .await?;
        Ok(Response::new(pb::ReplayJobReply { replay_id }))
    }

    async fn get_replay(
        &self,
        request: Request<pb::GetReplayRequest>,
    ) -> Result<Response<pb::ReplayStatus>, Status> {
        let principal = self.caller(&request)?;
        let replay_id = request.into_inner().replay_id;
        let comparison =
            results::replay_comparison(&self.shared.scheduler, principal.team_scope(), &replay_id)?;
        Ok(Response::new(replay_status(&replay_id, comparison)))
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
            .map(worker_info)
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
        if !self
            .shared
            .scheduler
            .blob_visible_to(principal.team_scope(), &sha256)?
        {
            return Err(Status::not_found(format!(
                "no artifact {sha256} in your team's experiments"
            )));
        }
        let slot = self.shared.stream_slot(&principal.actor())?;
        let chunks = self.shared.stream_blob(&sha256)?;
        Ok(Response::new(Box::pin(Slotted::new(chunks, slot))))
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsReply>, Status> {
        let principal = self.caller(&request)?;
        let sha256 = self
            .shared
            .scheduler
            .missing_blobs(principal.team_scope(), &request.get_ref().sha256)?;
        Ok(Response::new(pb::MissingBlobsReply { sha256 }))
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::UploadBlobReply>, Status> {
        let principal = self.caller(&request)?;
        let _slot = self.shared.stream_slot(&principal.actor())?;
        let mut stream = request.into_inner();
        let first = stream.next().await.ok_or_else(|| {
            Status::invalid_argument("empty upload: the first chunk must name the blob")
        })??;
        let limit = self.shared.limits.max_input_bytes;
        if first.size > limit {
            return Err(Status::resource_exhausted(format!(
                "input blob of {} bytes exceeds the limit of {limit}",
                first.size
            )));
        }
        let scheduler = &self.shared.scheduler;
        let holder = principal.team_scope();
        if scheduler
            .missing_blobs(holder, std::slice::from_ref(&first.sha256))?
            .is_empty()
        {
            // Already stored and (for a team) already uploaded by it: nothing to write.
            return Ok(Response::new(pb::UploadBlobReply {
                sha256: first.sha256,
                size: first.size,
                stored: false,
            }));
        }
        let mut upload = scheduler.begin_input_upload(limit)?;
        upload.write(&first.data)?;
        while let Some(chunk) = stream.next().await {
            upload.write(&chunk?.data)?;
        }
        // Stored under its verified hash (an identical file may already be there: the bytes prove the team
        // holds them).
        let size = upload.finish(first.size, &first.sha256)?;
        if let Some(team) = holder {
            scheduler.add_blob_holder(&first.sha256, team).await?;
        }
        tracing::info!(blob = %first.sha256, size, actor = %principal.actor(), "input blob stored");
        Ok(Response::new(pb::UploadBlobReply {
            sha256: first.sha256,
            size,
            stored: true,
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let principal = self.admin(&request)?;
        let req = request.into_inner();
        let (role, name) = tokens::token_subject(&req.team, &req.worker, req.admin)?;
        let created = tokens::create_token(
            &self.shared.auth,
            &self.shared.scheduler,
            &principal.actor(),
            role,
            &name,
        )
        .await?;
        Ok(Response::new(pb::CreateTokenReply {
            token: created.secret,
            token_id: created.token_id,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        self.admin(&request)?;
        let tokens = self
            .shared
            .auth
            .tokens()
            .into_iter()
            .map(token_info)
            .collect();
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        let principal = self.admin(&request)?;
        let token_id = request.into_inner().token_id;
        tokens::revoke_token(
            &self.shared.auth,
            &self.shared.scheduler,
            &principal.actor(),
            &token_id,
        )
        .await?;
        Ok(Response::new(pb::RevokeTokenReply {}))
    }
}
