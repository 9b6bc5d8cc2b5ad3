//! The agent's connection to the coordinator: an authenticated channel, retries with back-off for transient
//! failures, and artifact transfer (chunked upload, verified download into a cache folder named by hash).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tandem_proto as pb;
use tandem_proto::worker_service_client::WorkerServiceClient;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Chunk size for uploads.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type WorkerClient = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("coordinator: {}: {}", .0.code(), .0.message())]
    Rpc(Status),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("download of {sha256} corrupted: got {actual}")]
    Corrupt { sha256: String, actual: String },
    #[error("bad coordinator address {0:?}: {1}")]
    Address(String, String),
}

/// A lazily connecting, authenticated client (reconnects by itself when the coordinator comes back).
pub fn connect(
    url: &str,
    token: Option<&str>,
    ca_cert: Option<&[u8]>,
) -> Result<WorkerClient, TransferError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| TransferError::Address(url.into(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(pem) = ca_cert {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| TransferError::Address(url.into(), e.to_string()))?;
    }
    let header = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| {
                    TransferError::Address(
                        url.into(),
                        "the token has characters not allowed in a header".into(),
                    )
                })?,
        ),
        None => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(
        WorkerServiceClient::with_interceptor(channel, BearerToken(header))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
    )
}

/// Errors worth retrying: the coordinator is unreachable or restarting.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
    )
}

/// An error that may go away when the call is made again.
pub trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Transient for Status {
    fn is_transient(&self) -> bool {
        is_transient(self)
    }
}

impl Transient for TransferError {
    fn is_transient(&self) -> bool {
        matches!(self, TransferError::Rpc(status) if is_transient(status))
    }
}

/// Calls `f` until it succeeds or fails with a non-transient error, backing off from 50 ms to 2 s.
pub async fn with_retry<T, E, F, Fut>(what: &str, mut f: F) -> Result<T, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() => {
                tracing::warn!(call = what, error = %err, "coordinator unreachable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Uploads `path`; fills in the header's hash and size.
pub async fn upload_file(
    client: WorkerClient,
    mut header: pb::ArtifactHeader,
    path: &Path,
) -> Result<pb::ArtifactRef, TransferError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| TransferError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    header.sha256 = sha256_hex(&bytes);
    header.size = bytes.len() as u64;
    upload_bytes(client, header, bytes).await
}

/// Uploads `bytes` with `header` as given (the coordinator verifies the declared hash).
pub async fn upload_bytes(
    client: WorkerClient,
    header: pb::ArtifactHeader,
    bytes: Vec<u8>,
) -> Result<pb::ArtifactRef, TransferError> {
    let reply = with_retry("upload", || {
        let mut client = client.clone();
        let mut chunks = Vec::new();
        let mut first = Some(header.clone());
        if bytes.is_empty() {
            chunks.push(pb::ArtifactChunk {
                header: first.take(),
                data: Vec::new(),
            });
        }
        for piece in bytes.chunks(CHUNK_BYTES) {
            chunks.push(pb::ArtifactChunk {
                header: first.take(),
                data: piece.to_vec(),
            });
        }
        async move { client.upload_artifact(tokio_stream::iter(chunks)).await }
    })
    .await
    .map_err(TransferError::Rpc)?;
    reply
        .into_inner()
        .artifact
        .ok_or_else(|| TransferError::Rpc(Status::internal("upload reply without artifact")))
}

/// Downloads blob `sha256` into `cache_dir/<sha256>` unless it is there; returns its path. The bytes are
/// streamed to a temporary file and hashed on the way; only a verified file is renamed into place, so a file at
/// `cache_dir/<sha256>` is a verified copy. A transient failure restarts the download.
pub async fn download_to_cache(
    client: &WorkerClient,
    sha256: &str,
    cache_dir: &Path,
) -> Result<PathBuf, TransferError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TransferError::Rpc(Status::invalid_argument(format!(
            "not a sha256: {sha256:?}"
        ))));
    }
    let dest = cache_dir.join(sha256);
    if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_file()) {
        return Ok(dest);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TransferError::Io { path, source }
    };
    tokio::fs::create_dir_all(cache_dir)
        .await
        .map_err(io(cache_dir))?;
    // Unique per download: jobs running side by side in this process may fetch the same blob at once.
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache_dir.join(format!(".{sha256}.{}.{n}.part", std::process::id()));
    let actual = match with_retry("download", || stream_to_file(client, sha256, &tmp)).await {
        Ok(actual) => actual,
        Err(err) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err);
        }
    };
    if actual != sha256 {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(TransferError::Corrupt {
            sha256: sha256.to_string(),
            actual,
        });
    }
    tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
    Ok(dest)
}

/// How often a long download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Streams blob `sha256` into `path` (replacing it), hashing as it writes; returns the hash of what arrived.
async fn stream_to_file(
    client: &WorkerClient,
    sha256: &str,
    path: &Path,
) -> Result<String, TransferError> {
    use tokio::io::AsyncWriteExt;
    let io = |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    };
    let request = pb::DownloadArtifactRequest {
        sha256: sha256.to_string(),
    };
    let mut stream = client
        .clone()
        .download_artifact(request)
        .await
        .map_err(TransferError::Rpc)?
        .into_inner();
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let (started, mut logged) = (std::time::Instant::now(), std::time::Instant::now());
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(TransferError::Rpc)?;
        hasher.update(&chunk.data);
        file.write_all(&chunk.data).await.map_err(io)?;
        bytes += chunk.data.len() as u64;
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = std::time::Instant::now();
            tracing::info!(
                blob = sha256,
                mib = bytes >> 20,
                mib_per_s = (bytes >> 20) as f64 / started.elapsed().as_secs_f64(),
                "downloading"
            );
        }
    }
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    if started.elapsed() >= PROGRESS_EVERY {
        tracing::info!(
            blob = sha256,
            mib = bytes >> 20,
            seconds = started.elapsed().as_secs_f64(),
            "downloaded"
        );
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
