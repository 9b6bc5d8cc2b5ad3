//! Auth matrix: every RPC of every `tandem.*` service, enumerated from the compiled descriptor set, is called
//! over a real socket with every kind of credential and checked against a hand-written table of outcomes.
//!
//! Requests are built generically from the descriptors: string fields whose names address something real
//! (`experiment_id`, `job_id`, `worker_id`, `sha256`, `replay_id`, `token_id`) are filled with radiology's
//! real ids, so a call that gets past authentication reaches the team-scoping checks. A method without a row,
//! or a row without a method, fails the test: a new RPC cannot ship without deciding who may call it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use serde_json::json;
use tandem_proto as pb;
use tandem_proto::client_service_client::ClientServiceClient;
use tandem_tests::{
    Coordinator, FAST, Worker, artifacts, create_token, runtime, status_json, tandem_ok, wait_for,
    with_token, write_manifest,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The experiment radiology runs; another team's replies must never mention it.
const SECRET_NAME: &str = "radiology-matrix-study";
/// How long a server stream is read before its messages so far count as the reply.
const STREAM_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------------------------

/// The kinds of credential each method is called with, in table-column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cred {
    None,
    Malformed,
    Revoked,
    OtherTeam,
    Worker,
    Team,
    Admin,
}

const CREDS: [Cred; 7] = [
    Cred::None,
    Cred::Malformed,
    Cred::Revoked,
    Cred::OtherTeam,
    Cred::Worker,
    Cred::Team,
    Cred::Admin,
];

/// The class of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// `UNAUTHENTICATED`.
    U,
    /// `PERMISSION_DENIED`: the role may not call this.
    D,
    /// `NOT_FOUND` or `PERMISSION_DENIED`: another team's experiment, replay or artifact.
    H,
    /// Past the auth checks: OK or any status but `UNAUTHENTICATED` / `PERMISSION_DENIED`.
    A,
    /// The call reached no handler (`UNAVAILABLE`, `UNIMPLEMENTED`): matches no table cell.
    Broken,
}

use Outcome::{A, D, H, U};

/// Expected outcomes per method, columns as [`CREDS`]:
/// none, malformed, revoked, other team, worker, team (radiology, the owner), admin.
const TABLE: &[(&str, [Outcome; 7])] = &[
    // A team submits and lists its own experiments; a worker token is no client.
    ("ClientService/SubmitExperiment", [U, U, U, A, D, A, A]),
    ("ClientService/ListExperiments", [U, U, U, A, D, A, A]),
    // Radiology's experiment: hidden from cardiology.
    ("ClientService/GetExperiment", [U, U, U, H, D, A, A]),
    ("ClientService/Watch", [U, U, U, H, D, A, A]),
    ("ClientService/Cancel", [U, U, U, H, D, A, A]),
    ("ClientService/Retry", [U, U, U, H, D, A, A]),
    ("ClientService/Results", [U, U, U, H, D, A, A]),
    ("ClientService/Audit", [U, U, U, H, D, A, A]),
    ("ClientService/ReplayJob", [U, U, U, H, D, A, A]),
    ("ClientService/GetReplay", [U, U, U, H, D, A, A]),
    // The worker pool is shared by every team (no experiment ids or names in it: checked below).
    ("ClientService/ListWorkers", [U, U, U, A, D, A, A]),
    // Radiology's output artifact: not downloadable by cardiology.
    ("ClientService/DownloadArtifact", [U, U, U, H, D, A, A]),
    // Content-addressed input uploads are shared (dedup by digest); they expose no experiment.
    ("ClientService/MissingBlobs", [U, U, U, A, D, A, A]),
    ("ClientService/UploadBlob", [U, U, U, A, D, A, A]),
    // Token administration: admins only.
    ("ClientService/CreateToken", [U, U, U, D, D, D, A]),
    ("ClientService/ListTokens", [U, U, U, D, D, D, A]),
    ("ClientService/RevokeToken", [U, U, U, D, D, D, A]),
    // The worker protocol: worker tokens (acting as their own registered worker) and admins; no team token.
    ("WorkerService/Register", [U, U, U, D, A, D, A]),
    ("WorkerService/LeaseJob", [U, U, U, D, A, D, A]),
    ("WorkerService/Heartbeat", [U, U, U, D, A, D, A]),
    ("WorkerService/StreamMetrics", [U, U, U, D, A, D, A]),
    ("WorkerService/UploadArtifact", [U, U, U, D, A, D, A]),
    // Workers fetch inputs, parents and checkpoints of any team's jobs by digest: they run every team's jobs.
    ("WorkerService/DownloadArtifact", [U, U, U, D, A, D, A]),
    ("WorkerService/CompleteJob", [U, U, U, D, A, D, A]),
    ("WorkerService/FailJob", [U, U, U, D, A, D, A]),
    ("WorkerService/ReleaseJob", [U, U, U, D, A, D, A]),
    ("WorkerService/ReportRung", [U, U, U, D, A, D, A]),
];

// ---------------------------------------------------------------------------------------------------------------
// Methods from the descriptor set
// ---------------------------------------------------------------------------------------------------------------

/// One RPC as the descriptor set declares it.
#[derive(Debug)]
struct Method {
    /// `Service/Method`, the table's key.
    key: String,
    /// `/package.Service/Method`.
    path: String,
    /// Fully qualified input type, e.g. `.tandem.v1.GetExperimentRequest`.
    input: String,
    client_streaming: bool,
    server_streaming: bool,
}

/// Every message type of the descriptor set by fully qualified name (`.package.Message`, nested included).
type Messages = BTreeMap<String, DescriptorProto>;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("tandem_proto::FILE_DESCRIPTOR_SET decodes as a FileDescriptorSet")
}

fn index_messages(prefix: &str, messages: &[DescriptorProto], out: &mut Messages) {
    for message in messages {
        let name = format!("{prefix}.{}", message.name());
        index_messages(&name, &message.nested_type, out);
        out.insert(name, message.clone());
    }
}

/// Every method of every service in a `tandem` package, and every message type.
fn methods_and_messages(set: &FileDescriptorSet) -> (Vec<Method>, Messages) {
    let mut methods = Vec::new();
    let mut messages = Messages::new();
    for file in &set.file {
        let package = file.package();
        index_messages(&format!(".{package}"), &file.message_type, &mut messages);
        if package != "tandem" && !package.starts_with("tandem.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                methods.push(Method {
                    key: format!("{}/{}", service.name(), method.name()),
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    input: method.input_type().to_string(),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    (methods, messages)
}

/// Fails naming every method without a table row and every row without a method.
fn check_table_covers(methods: &[Method]) {
    let declared: BTreeSet<&str> = methods.iter().map(|m| m.key.as_str()).collect();
    let rows: BTreeSet<&str> = TABLE.iter().map(|(key, _)| *key).collect();
    assert_eq!(rows.len(), TABLE.len(), "the table has a duplicate row");
    let missing: Vec<&str> = declared.difference(&rows).copied().collect();
    let stale: Vec<&str> = rows.difference(&declared).copied().collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "the auth matrix (TABLE in tests/tests/auth_matrix.rs) is out of step with the descriptor set:\n  \
         RPCs without a row: {missing:?}\n  rows for RPCs no service declares: {stale:?}"
    );
    for service in ["ClientService", "WorkerService"] {
        assert!(
            methods.iter().any(|m| m.key.starts_with(service)),
            "the descriptor set declares no {service}"
        );
    }
}

fn expected(key: &str) -> [Outcome; 7] {
    TABLE
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, row)| *row)
        .unwrap_or_else(|| panic!("no table row for {key}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Request bodies, hand-encoded from the descriptors
// ---------------------------------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (wire type 2): a string, bytes or an embedded message.
fn put_len_field(out: &mut Vec<u8>, number: i32, value: &[u8]) {
    put_varint(out, ((number as u64) << 3) | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Message `type_name` with every string field named in `fill` set (one element for a repeated one) and
/// embedded messages filled the same way; everything else stays default.
fn encode_request(
    messages: &Messages,
    type_name: &str,
    fill: &BTreeMap<&str, String>,
    depth: usize,
) -> Vec<u8> {
    let message = messages
        .get(type_name)
        .unwrap_or_else(|| panic!("message type {type_name} is not in the descriptor set"));
    let mut out = Vec::new();
    for field in &message.field {
        match field.r#type() {
            Type::String => {
                if let Some(value) = fill.get(field.name()) {
                    put_len_field(&mut out, field.number(), value.as_bytes());
                }
            }
            Type::Message if depth < 3 => {
                let inner = encode_request(messages, field.type_name(), fill, depth + 1);
                if !inner.is_empty() {
                    put_len_field(&mut out, field.number(), &inner);
                }
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Calling any method with raw bytes
// ---------------------------------------------------------------------------------------------------------------

/// Passes encoded messages through untouched.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// A reply: the messages received (one for a unary reply; a stream's, up to [`STREAM_WAIT`]) or the status.
type Reply = Result<Vec<Vec<u8>>, Status>;

/// A request carrying `body`, with `authorization` as its header when given.
fn request<T>(body: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    if let Some(value) = authorization {
        let value = value.parse().expect("an ASCII authorization header");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Reads a server stream to its end, or for [`STREAM_WAIT`] (a still-open stream is a reply so far).
async fn drain(mut stream: tonic::codec::Streaming<Vec<u8>>) -> Reply {
    let mut messages = Vec::new();
    let read_all = async {
        while let Some(message) = stream.message().await? {
            messages.push(message);
        }
        Ok::<(), Status>(())
    };
    match tokio::time::timeout(STREAM_WAIT, read_all).await {
        Ok(Err(status)) => Err(status),
        Ok(Ok(())) | Err(_) => Ok(messages),
    }
}

/// Calls `method` with one request message `body` the way its streaming flags ask.
async fn call(
    channel: &Channel,
    method: &Method,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let path = PathAndQuery::from_str(&method.path).expect("a valid gRPC path");
    let one = || tokio_stream::iter(vec![body.clone()]);
    match (method.client_streaming, method.server_streaming) {
        (false, false) => {
            let reply = grpc
                .unary(request(body.clone(), authorization), path, RawCodec)
                .await?;
            Ok(vec![reply.into_inner()])
        }
        (false, true) => {
            let reply = grpc
                .server_streaming(request(body.clone(), authorization), path, RawCodec)
                .await?;
            drain(reply.into_inner()).await
        }
        (true, false) => {
            let reply = grpc
                .client_streaming(request(one(), authorization), path, RawCodec)
                .await?;
            Ok(vec![reply.into_inner()])
        }
        (true, true) => {
            let reply = grpc
                .streaming(request(one(), authorization), path, RawCodec)
                .await?;
            drain(reply.into_inner()).await
        }
    }
}

/// The class of `reply` as the table writes it (`H` for an expected `H` that came back `NOT_FOUND` or
/// `PERMISSION_DENIED`).
fn classify(reply: &Reply, expected: Outcome) -> Outcome {
    match reply {
        Err(status) if matches!(status.code(), Code::Unavailable | Code::Unimplemented) => {
            Outcome::Broken
        }
        Err(status) if status.code() == Code::Unauthenticated => U,
        Err(status)
            if expected == H
                && matches!(status.code(), Code::NotFound | Code::PermissionDenied) =>
        {
            H
        }
        Err(status) if status.code() == Code::PermissionDenied => D,
        _ => A,
    }
}

fn describe(reply: &Reply) -> String {
    match reply {
        Ok(messages) => format!(
            "OK ({} messages, {} bytes)",
            messages.len(),
            messages.iter().map(Vec::len).sum::<usize>()
        ),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

// ---------------------------------------------------------------------------------------------------------------
// The world the calls address
// ---------------------------------------------------------------------------------------------------------------

/// A coordinator with radiology's finished experiment, and a secret per credential kind.
struct World {
    _dir: tempfile::TempDir,
    coordinator: Coordinator,
    radiology: String,
    cardiology: String,
    worker: String,
    admin: String,
    revoked: String,
    /// Field name -> the real value requests carry.
    fill: BTreeMap<&'static str, String>,
}

impl World {
    fn authorization(&self, cred: Cred) -> Option<String> {
        let bearer = |secret: &str| Some(format!("Bearer {secret}"));
        match cred {
            Cred::None => None,
            Cred::Malformed => Some("Bearer ###".to_string()),
            Cred::Revoked => bearer(&self.revoked),
            Cred::OtherTeam => bearer(&self.cardiology),
            Cred::Worker => bearer(&self.worker),
            Cred::Team => bearer(&self.radiology),
            Cred::Admin => bearer(&self.admin),
        }
    }

    fn experiment_id(&self) -> &str {
        &self.fill["experiment_id"]
    }
}

async fn client(url: &str) -> ClientServiceClient<Channel> {
    ClientServiceClient::connect(url.to_string())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// A radiology token created by the admin over RPC and then revoked: (secret, token id).
fn revoked_token(url: &str, admin: &str) -> (String, String) {
    runtime().block_on(async {
        let mut client = client(url).await;
        let created = client
            .create_token(with_token(
                pb::CreateTokenRequest {
                    team: "radiology".into(),
                    ..Default::default()
                },
                admin,
            ))
            .await
            .expect("admin creates a token")
            .into_inner();
        client
            .revoke_token(with_token(
                pb::RevokeTokenRequest {
                    token_id: created.token_id.clone(),
                },
                admin,
            ))
            .await
            .expect("admin revokes the token");
        (created.token, created.token_id)
    })
}

/// The first registered worker's id, and a replay of `job_id` queued as radiology.
fn worker_and_replay(
    url: &str,
    radiology: &str,
    admin: &str,
    experiment: &str,
    job_id: &str,
) -> (String, String) {
    runtime().block_on(async {
        let mut client = client(url).await;
        let workers = client
            .list_workers(with_token(pb::ListWorkersRequest {}, admin))
            .await
            .expect("admin lists workers")
            .into_inner()
            .workers;
        let worker_id = workers.first().expect("a registered worker").id.clone();
        let replay_id = client
            .replay_job(with_token(
                pb::ReplayJobRequest {
                    experiment_id: experiment.into(),
                    job_id: job_id.into(),
                },
                radiology,
            ))
            .await
            .expect("radiology replays its job")
            .into_inner()
            .replay_id;
        (worker_id, replay_id)
    })
}

/// Runs radiology's one-job `test.emit` experiment to completion with one real worker.
fn run_experiment(dir: &Path, url: &str, radiology: &str, worker_token: &str) -> String {
    std::fs::write(dir.join("reports.csv"), "id,text\n1,clear lungs\n")
        .expect("writing reports.csv");
    let manifest = write_manifest(
        dir,
        "study.json",
        &json!({"name": SECRET_NAME, "files": ["reports.csv"], "jobs": [
            {"name": "prep", "kind": "test.emit", "inputs": ["reports.csv"], "config": {"steps": 2}}
        ]}),
    );
    let manifest = manifest.to_str().expect("a UTF-8 temp path");
    let experiment = tandem_ok(url, Some(radiology), &["submit", manifest])
        .trim()
        .to_string();
    let mut worker = Worker::start(url, Some(worker_token), "w1", dir);
    wait_for(
        "radiology's experiment to succeed",
        Duration::from_secs(30),
        || (status_json(url, Some(radiology), &experiment)["state"] == "succeeded").then_some(()),
    );
    // Nothing runs behind the matrix's back from here on (a replay queued later stays queued).
    worker.kill();
    experiment
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = dir.path().join("store");
    let radiology = create_token(&store, "--team", Some("radiology"));
    let cardiology = create_token(&store, "--team", Some("cardiology"));
    let worker = create_token(&store, "--worker", Some("node"));
    let admin = create_token(&store, "--admin", None);
    let coordinator = Coordinator::start(&store, FAST);
    let url = coordinator.url.clone();
    let (revoked, revoked_id) = revoked_token(&url, &admin);
    let experiment = run_experiment(dir.path(), &url, &radiology, &worker);
    let job_id = status_json(&url, Some(&radiology), &experiment)["jobs"][0]["id"]
        .as_str()
        .expect("a job id in the status")
        .to_string();
    let output = artifacts(&url, &radiology, &experiment)
        .into_iter()
        .find(|a| a.role == "output")
        .expect("an output artifact of the test.emit job");
    let (worker_id, replay_id) = worker_and_replay(&url, &radiology, &admin, &experiment, &job_id);
    let fill = BTreeMap::from([
        ("experiment_id", experiment),
        ("job_id", job_id),
        ("worker_id", worker_id),
        ("sha256", output.sha256),
        ("replay_id", replay_id),
        // The revoked token's id: an admin's RevokeToken changes nothing that matters.
        ("token_id", revoked_id),
    ]);
    World {
        _dir: dir,
        coordinator,
        radiology,
        cardiology,
        worker,
        admin,
        revoked,
        fill,
    }
}

/// The list call whose owner's reply must name the experiment (so that the other team's empty one means
/// something).
const OWNER_SEES: &str = "ClientService/ListExperiments";

/// Another team's replies never name radiology's experiment (its id or its name); radiology's list does.
fn check_visibility(world: &World, method: &Method, cred: Cred, reply: &Reply) -> Vec<String> {
    let Ok(messages) = reply else {
        return Vec::new();
    };
    let secrets = [world.experiment_id(), SECRET_NAME];
    let named = |secret: &str| messages.iter().any(|m| contains(m, secret));
    match cred {
        Cred::OtherTeam => secrets
            .into_iter()
            .filter(|s| named(s))
            .map(|s| {
                format!(
                    "{} as {cred:?}: the reply contains radiology's {s:?}",
                    method.key
                )
            })
            .collect(),
        Cred::Team if method.key == OWNER_SEES => secrets
            .into_iter()
            .filter(|s| !named(s))
            .map(|s| format!("{} as {cred:?}: the owner's reply lacks {s:?}", method.key))
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn every_rpc_admits_exactly_the_credentials_its_table_row_names() {
    let (methods, messages) = methods_and_messages(&descriptor_set());
    check_table_covers(&methods);
    let world = world();
    let mut failures = Vec::new();
    runtime().block_on(async {
        let channel = Channel::from_shared(world.coordinator.url.clone())
            .expect("a valid coordinator URL")
            .connect()
            .await
            .expect("connecting to the coordinator");
        for method in &methods {
            let row = expected(&method.key);
            let body = encode_request(&messages, &method.input, &world.fill, 0);
            for (cred, want) in CREDS.into_iter().zip(row) {
                let authorization = world.authorization(cred);
                let reply = call(&channel, method, authorization.as_deref(), body.clone()).await;
                let got = classify(&reply, want);
                if got != want {
                    failures.push(format!(
                        "{} as {cred:?}: expected {want:?}, got {got:?} ({})",
                        method.key,
                        describe(&reply)
                    ));
                }
                failures.extend(check_visibility(&world, method, cred, &reply));
            }
        }
    });
    assert!(
        failures.is_empty(),
        "auth matrix mismatches:\n  {}\ncoordinator log:\n{}",
        failures.join("\n  "),
        world.coordinator.log()
    );
}
