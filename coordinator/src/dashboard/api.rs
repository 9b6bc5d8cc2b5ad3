//! The dashboard's handlers: each authenticates the caller from its `Authorization: Bearer` header (401 without
//! a valid token, 403 for a worker token), reads the scheduler's views for the caller's team, and answers JSON.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::{Dashboard, PAGE, min_max_buckets};
use crate::audit::{audit_experiment, environment};
use crate::auth::{AuthError, Principal, require_client};
use crate::grpc::convert::{placement_to_pb, replay_status, series_to_pb};
use crate::replay_verdict::compare_replay;
use crate::results::{TRAIN_KIND, curve_points, metric_series, placement, replay_comparison};
use crate::scheduler::{JobView, SchedulerError};
use crate::store::sha256_hex;
use crate::store::{ExperimentRecord, JobRecord, JobState};
use tandem_experiments::planner::artifacts::{EVAL_RESULT, SELECTION, SelectionRecord};
use tandem_experiments::report::{
    EvalResult, build_results, curves_svg, generation_sweep_svg, sweep_svg,
};

type Shared = State<Arc<Dashboard>>;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Why a caller is turned away: 401 or 403 with the reason.
pub struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// The caller, or why it is refused.
pub(super) fn caller(dashboard: &Dashboard, headers: &HeaderMap) -> Result<Principal, Refusal> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let principal = dashboard
        .auth
        .authenticate(header)
        .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
    require_client(&principal).map_err(|e| match e {
        AuthError::Unauthenticated(m) => Refusal(StatusCode::UNAUTHORIZED, m),
        other => Refusal(StatusCode::FORBIDDEN, other.to_string()),
    })?;
    Ok(principal)
}

fn scheduler_error(e: SchedulerError) -> Response {
    refusal(e).into_response()
}

fn refusal(e: SchedulerError) -> Refusal {
    match e {
        SchedulerError::NotFound(m) => Refusal(StatusCode::NOT_FOUND, m),
        SchedulerError::PermissionDenied(m) => Refusal(StatusCode::FORBIDDEN, m),
        other => Refusal(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// Experiment `id`'s record as the caller may see it, without its jobs.
fn visible_record(
    d: &Dashboard,
    headers: &HeaderMap,
    id: &str,
) -> Result<ExperimentRecord, Refusal> {
    let principal = caller(d, headers)?;
    d.scheduler
        .experiment_record(principal.team_scope(), id)
        .map_err(refusal)
}

/// The experiment's jobs of the given kinds (only those are copied out of the scheduler).
fn jobs_of(d: &Dashboard, record: &ExperimentRecord, kinds: &[&str]) -> Vec<JobRecord> {
    d.scheduler
        .jobs_where(&record.job_ids, |j| kinds.contains(&j.kind.as_str()))
}

pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(PAGE),
    )
        .into_response()
}

pub async fn experiments(State(d): Shared, headers: HeaderMap) -> Response {
    let principal = match caller(&d, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let list: Vec<Value> = d
        .scheduler
        .experiments(principal.team_scope())
        .into_iter()
        .map(|(record, state, done)| {
            json!({
                "id": record.id,
                "name": record.name,
                "team": record.team,
                "submitter": record.submitter,
                "state": state,
                "created_ms": record.created_ms,
                "manifest_sha256": record.manifest_sha256,
                "jobs": record.job_ids.len(),
                "jobs_done": done,
            })
        })
        .collect();
    Json(list).into_response()
}

/// One job as the page shows it, serialised straight from the borrowed records (an experiment's job list is the
/// largest reply the page reads while work runs).
#[derive(Serialize)]
struct JobRow<'a> {
    id: &'a str,
    name: &'a str,
    kind: &'a str,
    state: &'static str,
    worker: Option<&'a str>,
    attempts: u32,
    deps: &'a [String],
    device: String,
    model_stage: Option<&'a str>,
    task: Option<&'a str>,
    /// Every attempt, for the jobs whose page shows them (failed or retried); empty otherwise.
    attempt_log: Vec<AttemptRow<'a>>,
    cached: bool,
    stage: Option<&'a str>,
    fold: Option<u32>,
    duration_ms: Option<u64>,
    last_error: Option<&'a str>,
    progress_step: u64,
    progress_total: u64,
    waiting_reason: Option<&'a str>,
}

/// An experiment with its jobs (all, or those changed since a `seq`).
#[derive(Serialize)]
struct ExperimentReply<'a> {
    id: &'a str,
    name: &'a str,
    team: &'a str,
    submitter: &'a str,
    state: &'static str,
    created_ms: u64,
    manifest_sha256: &'a str,
    seq: u64,
    partial: bool,
    jobs: Vec<JobRow<'a>>,
}

#[derive(Serialize)]
struct AttemptRow<'a> {
    number: u32,
    worker: &'a str,
    started_ms: u64,
    ended_ms: Option<u64>,
    outcome: &'a str,
    error: Option<&'a str>,
}

fn job_row(view: &JobView) -> JobRow<'_> {
    let job = &view.job;
    let started = job.attempt_log.first().map(|a| a.started_ms);
    let ended = job.attempt_log.last().and_then(|a| a.ended_ms);
    let placement = job.placement.as_deref();
    let named = |text: &'_ str| -> bool { !text.is_empty() };
    let shown = job.state == JobState::Failed || job.attempt_log.len() > 1;
    JobRow {
        id: &job.id,
        name: &job.name,
        kind: &job.kind,
        state: job.state.label(),
        worker: job.worker.as_deref(),
        attempts: job.attempts,
        deps: &job.deps,
        device: if job.resources.gpus > 0 {
            format!("{} GPU", job.resources.gpus)
        } else {
            "CPU".to_string()
        },
        model_stage: placement
            .map(|p| p.model_stage.as_str())
            .filter(|s| named(s)),
        task: placement.map(|p| p.task.as_str()).filter(|s| named(s)),
        attempt_log: job
            .attempt_log
            .iter()
            .filter(|_| shown)
            .map(|a| AttemptRow {
                number: a.number,
                worker: &a.worker,
                started_ms: a.started_ms,
                ended_ms: a.ended_ms,
                outcome: &a.outcome,
                error: a.error.as_deref(),
            })
            .collect(),
        cached: view.cached,
        stage: placement.map(|p| p.stage.as_str()).filter(|s| named(s)),
        fold: placement.and_then(|p| p.fold),
        duration_ms: started.zip(ended).map(|(s, e)| e.saturating_sub(s)),
        last_error: job.last_error.as_deref(),
        progress_step: view.progress.step,
        progress_total: view.progress.total,
        waiting_reason: view.waiting_reason.as_deref(),
    }
}

#[derive(Debug, Deserialize)]
pub struct ExperimentQuery {
    /// Only the jobs changed after this change number (the `seq` of an earlier reply).
    since: Option<u64>,
}

/// The experiment and its jobs; with `?since=SEQ` only the jobs that changed after that reply's `seq` (`partial`
/// says which it is: a coordinator restarted since answers in full).
pub async fn experiment(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ExperimentQuery>,
) -> Response {
    let principal = match caller(&d, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match d
        .scheduler
        .experiment_changes(principal.team_scope(), &id, query.since)
    {
        Ok((view, seq, partial)) => Json(ExperimentReply {
            id: &view.record.id,
            name: &view.record.name,
            team: &view.record.team,
            submitter: &view.record.submitter,
            state: view.state,
            created_ms: view.record.created_ms,
            manifest_sha256: &view.record.manifest_sha256,
            seq,
            partial,
            jobs: view.jobs.iter().map(job_row).collect(),
        })
        .into_response(),
        Err(e) => scheduler_error(e),
    }
}

/// The metric names the experiment's jobs have logged, for the page to choose its panels.
pub async fn series(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let record = match visible_record(&d, &headers, &id) {
        Ok(record) => record,
        Err(r) => return r.into_response(),
    };
    let mut names = std::collections::BTreeSet::new();
    for job_id in &record.job_ids {
        match d.scheduler.metric_names(job_id) {
            Ok(logged) => names.extend(logged.iter().cloned()),
            Err(e) => return scheduler_error(e),
        }
    }
    Json(names).into_response()
}

/// The experiment's audit view: the audit log (every state change with who made it: submit, leases, outcomes,
/// ASHA decisions, cancellations, replays; oldest first; the newest [`AUDIT_LOG_SHOWN`] and the total), the environment each job ran in (worker, code version,
/// devices), and every replay with its verdict (the same checks as `tandem audit --replay`).
pub async fn audit(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let principal = match caller(&d, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let view = match d.scheduler.experiment(principal.team_scope(), &id) {
        Ok(view) => view,
        Err(e) => return scheduler_error(e),
    };
    let names: std::collections::HashMap<&str, &str> = view
        .jobs
        .iter()
        .map(|j| (j.job.id.as_str(), j.job.name.as_str()))
        .collect();
    let name_of = |job: &str| names.get(job).copied();
    let log = match d.scheduler.audit_log(&view.record) {
        Ok(entries) => entries,
        Err(e) => return scheduler_error(e),
    };
    let environments: Vec<Value> = view
        .jobs
        .iter()
        .filter_map(|j| environment(&j.job, |w| d.scheduler.worker(w)))
        .map(|e| {
            json!({
                "job_id": e.job_id,
                "job": name_of(&e.job_id),
                "worker": e.worker,
                "host": e.host,
                "worker_version": e.worker_version,
                "git_commit": e.git_commit,
                "cargo_lock_sha256": e.cargo_lock_sha256,
                "devices": e.devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut replays = Vec::new();
    for replay_id in d.scheduler.replay_ids(&view.record.id) {
        let comparison = match replay_comparison(&d.scheduler, principal.team_scope(), &replay_id) {
            Ok(c) => c,
            Err(e) => return scheduler_error(e),
        };
        let status = replay_status(&replay_id, comparison);
        let verdict = if status.done {
            let checks = compare_replay(&status);
            let ok = checks.checks.iter().all(|c| c.ok);
            json!({
                "verdict": if ok { "reproduced" } else { "differs" },
                "checks": checks.checks.iter().map(|c| json!({
                    "subject": c.subject, "expected": c.expected, "actual": c.actual,
                    "ok": c.ok, "detail": c.detail,
                })).collect::<Vec<_>>(),
                "skipped": checks.skipped,
            })
        } else {
            json!({ "verdict": "running", "checks": [], "skipped": [] })
        };
        let mut entry = json!({
            "replay_id": replay_id,
            "job_id": status.job_id,
            "job": name_of(&status.job_id),
        });
        if let (Some(entry), Value::Object(verdict)) = (entry.as_object_mut(), verdict) {
            entry.extend(verdict);
        }
        replays.push(entry);
    }
    Json(json!({
        "manifest_sha256": view.record.manifest_sha256,
        "inputs": view.record.inputs.iter().map(|i| json!({ "name": i.name, "sha256": i.sha256 })).collect::<Vec<_>>(),
        "environments": environments,
        "replays": replays,
        "log_total": log.len(),
        "log": log[log.len().saturating_sub(AUDIT_LOG_SHOWN)..].iter().map(|e| json!({
            "time_ms": e.time_ms,
            "actor": e.actor,
            "action": e.action,
            "job_id": e.job_id,
            "job": e.job_id.as_deref().and_then(name_of),
            "detail": e.detail,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// How many of the newest audit-log entries the audit view sends.
const AUDIT_LOG_SHOWN: usize = 500;

/// Re-hashes the manifest, every input and every stored artifact against the recorded SHA-256s (`tandem audit`'s
/// checks); on demand, since it reads every blob of the experiment.
pub async fn verify(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let principal = match caller(&d, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let scheduler = d.scheduler.clone();
    let report = tokio::task::spawn_blocking(move || {
        audit_experiment(&scheduler, principal.team_scope(), &id, false)
    })
    .await;
    match report {
        Ok(Ok(report)) => Json(json!({
            "ok": report.ok(),
            "checks": report.checks.iter().map(|c| json!({
                "subject": c.subject, "expected": c.expected, "actual": c.actual, "ok": c.ok, "detail": c.detail,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(Err(e)) => scheduler_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The bytes of output artifact `name` of `job`, checked against its digest; `None` when the job has none yet.
fn read_output(d: &Dashboard, job: &str, name: &str) -> Result<Option<Vec<u8>>, Refusal> {
    let artifacts = d.scheduler.artifacts(job).map_err(refusal)?;
    let Some(artifact) = artifacts
        .iter()
        .find(|a| a.name == name && a.role == "output")
    else {
        return Ok(None);
    };
    let (path, _) = d.scheduler.blob_file(&artifact.sha256).map_err(refusal)?;
    let bytes = std::fs::read(&path).map_err(|e| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name} of job {job}: {e}"),
        )
    })?;
    if sha256_hex(&bytes) != artifact.sha256 {
        return Err(Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name} of job {job}: the stored blob is corrupt"),
        ));
    }
    Ok(Some(bytes))
}

/// Every finished training-sweep selection (`selection.json` of each select job), by stage and fold.
fn selection_records(d: &Dashboard, jobs: &[JobRecord]) -> Result<Vec<SelectionRecord>, Refusal> {
    let mut records = Vec::new();
    for job in jobs.iter().filter(|j| j.kind == "select") {
        if let Some(bytes) = read_output(d, &job.id, SELECTION)? {
            let record = serde_json::from_slice::<SelectionRecord>(&bytes).map_err(|e| {
                Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{SELECTION} of {}: {e}", job.name),
                )
            })?;
            records.push(record);
        }
    }
    records.sort_by_key(|r| (r.stage, r.fold));
    Ok(records)
}

/// The evaluation results stored so far, and the names of the evaluations still missing.
fn eval_results(
    d: &Dashboard,
    jobs: &[JobRecord],
) -> Result<(Vec<EvalResult>, Vec<String>), Refusal> {
    let mut evals = Vec::new();
    let mut missing = Vec::new();
    for job in jobs.iter().filter(|j| j.kind == "eval") {
        let Some(bytes) = read_output(d, &job.id, EVAL_RESULT)? else {
            missing.push(job.name.clone());
            continue;
        };
        let result = serde_json::from_slice::<EvalResult>(&bytes).map_err(|e| {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{EVAL_RESULT} of {}: {e}", job.name),
            )
        })?;
        evals.push(result);
    }
    Ok((evals, missing))
}

/// Every finished training-sweep selection: one row per point.
pub async fn selections(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let found = visible_record(&d, &headers, &id)
        .and_then(|record| selection_records(&d, &jobs_of(&d, &record, &["select"])));
    match found {
        Ok(records) => Json(records).into_response(),
        Err(r) => r.into_response(),
    }
}

/// The thesis's tables (4.1, 4.3 with 4.4, and the sweep tables) from the experiment's evaluation results, built by
/// the same code as `tandem results`, and the evaluations still missing.
pub async fn tables(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let found = visible_record(&d, &headers, &id)
        .and_then(|record| eval_results(&d, &jobs_of(&d, &record, &["eval"])));
    let (evals, missing) = match found {
        Ok(found) => found,
        Err(r) => return r.into_response(),
    };
    if evals.is_empty() {
        return Json(json!({ "results": null, "missing": missing })).into_response();
    }
    match build_results(&evals) {
        Ok(results) => Json(json!({ "results": results, "missing": missing })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The experiment's figures as SVG, drawn by the same code as `tandem plot`: `curves.svg` (training and
/// validation curves, stage 2 as mean ± std over folds), `sweep-<parameter>.svg` per generation sweep, and
/// `sweep-<stage>.svg` per training sweep.
pub async fn figures(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let jobs = match visible_record(&d, &headers, &id) {
        Ok(record) => jobs_of(&d, &record, &[TRAIN_KIND, "eval", "select"]),
        Err(r) => return r.into_response(),
    };
    let mut series = Vec::new();
    let mut placements = Vec::new();
    for job in jobs.iter().filter(|j| j.kind == TRAIN_KIND) {
        if let Some(p) = placement(job) {
            match metric_series(&d.scheduler, &job.id) {
                Ok(s) => series.extend(s),
                Err(e) => return scheduler_error(e),
            }
            placements.push(p);
        }
    }
    let placements: Vec<_> = placements.into_iter().map(placement_to_pb).collect();
    let (points, notes) = curve_points(&series_to_pb(series), &placements);
    let mut out = Vec::new();
    if !points.is_empty() {
        out.push(json!({ "name": "curves.svg", "svg": curves_svg(&points) }));
    }
    let evals = match eval_results(&d, &jobs) {
        Ok((evals, _)) => evals,
        Err(r) => return r.into_response(),
    };
    if !evals.is_empty() {
        match build_results(&evals) {
            Ok(results) => {
                for (stem, svg) in generation_sweep_svg(&results) {
                    out.push(json!({ "name": format!("{stem}.svg"), "svg": svg }));
                }
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    let records = match selection_records(&d, &jobs) {
        Ok(records) => records,
        Err(r) => return r.into_response(),
    };
    let mut stages: Vec<_> = records.iter().map(|r| r.stage).collect();
    stages.dedup();
    for stage in stages {
        let of_stage: Vec<SelectionRecord> = records
            .iter()
            .filter(|r| r.stage == stage)
            .cloned()
            .collect();
        out.push(
            json!({ "name": format!("sweep-{}.svg", stage.as_str()), "svg": sweep_svg(&of_stage) }),
        );
    }
    Json(json!({ "figures": out, "notes": notes })).into_response()
}

#[derive(Debug, Deserialize)]
pub struct CurveQuery {
    /// The metric name (`train_loss`, `val_loss`, ...).
    series: String,
    /// Pixel columns of the plot: each keeps its minimum and maximum.
    #[serde(default = "default_buckets")]
    buckets: usize,
}

fn default_buckets() -> usize {
    600
}

pub async fn curves(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<CurveQuery>,
) -> Response {
    let record = match visible_record(&d, &headers, &id) {
        Ok(record) => record,
        Err(r) => return r.into_response(),
    };
    let buckets = query.buckets.clamp(1, 4096);
    // The series of the jobs that logged it (from the scheduler's index of names), then their names and placements.
    let mut found = Vec::new();
    for job_id in &record.job_ids {
        match d.scheduler.metric_names(job_id) {
            Ok(logged) if !logged.contains(&query.series) => continue,
            Ok(_) => {}
            Err(e) => return scheduler_error(e),
        }
        let series = match metric_series(&d.scheduler, job_id) {
            Ok(s) => s,
            Err(e) => return scheduler_error(e),
        };
        found.extend(series.into_iter().filter(|s| s.name == query.series));
    }
    let ids: Vec<String> = found.iter().map(|s| s.job_id.clone()).collect();
    let records: std::collections::HashMap<String, JobRecord> = d
        .scheduler
        .jobs_where(&ids, |_| true)
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    let mut jobs = Vec::new();
    for s in found {
        let Some(job) = records.get(&s.job_id) else {
            continue;
        };
        let points: Vec<(u64, f64)> = s
            .steps
            .iter()
            .copied()
            .zip(s.values.iter().copied())
            .filter(|(_, v)| v.is_finite())
            .collect();
        let total = points.len();
        let kept = min_max_buckets(&points, buckets);
        let placement = job.placement.as_deref();
        jobs.push(json!({
            "job_id": job.id,
            "name": job.name,
            "stage": placement.map(|p| p.stage.clone()).filter(|s| !s.is_empty()),
            "fold": placement.and_then(|p| p.fold),
            "points_total": total,
            "points": kept.iter().map(|(s, v)| json!([s, v])).collect::<Vec<_>>(),
        }));
    }
    Json(json!({ "series": query.series, "jobs": jobs })).into_response()
}

pub async fn workers(State(d): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = caller(&d, &headers) {
        return r.into_response();
    }
    let list: Vec<Value> = d
        .scheduler
        .workers()
        .into_iter()
        .map(|w| {
            json!({
                "id": w.record.id,
                "name": w.record.name,
                "host": w.record.host,
                "alive": w.alive,
                "gpus": w.record.resources.gpus,
                "cpu_threads": w.record.resources.cpu_threads,
                "devices": w.record.devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
                "jobs": w.jobs,
            })
        })
        .collect();
    Json(list).into_response()
}

/// Server-sent events: a `job` event with the ids of the experiment's jobs that changed (state changes and metric
/// points, as `tandem watch` sees them), at most one every [`hub::COALESCE`](super::hub::COALESCE); an empty list
/// when changes were missed. The page refetches what changed.
pub async fn events(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = visible_record(&d, &headers, &id) {
        return r.into_response();
    }
    let stream = BroadcastStream::new(d.hub.subscribe()).filter_map(move |changes| {
        let ids = match changes {
            Ok(changes) => changes.of(&id)?,
            Err(_) => Vec::new(),
        };
        Some(Ok::<_, Infallible>(
            Event::default()
                .event("job")
                .data(json!({ "job_ids": ids }).to_string()),
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
