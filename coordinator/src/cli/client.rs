//! Shared client plumbing for the orchestrator commands: `--coordinator`/`--token`/`--ca-cert` flags, an
//! authenticated gRPC client, a runtime to drive it, verified artifact downloads, and file-name sanitising for
//! exports.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};
use tandem_proto as pb;
use tandem_proto::client_service_client::ClientServiceClient;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How to reach the coordinator.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator URL.
    #[arg(
        long,
        env = "TANDEM_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: String,
    /// Bearer token (`tandem token create --team T`).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for an https coordinator.
    #[arg(long, env = "TANDEM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = ClientServiceClient<InterceptedService<Channel, Bearer>>;

impl ClientArgs {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(self.coordinator.clone())
            .with_context(|| format!("--coordinator {:?} is not a URL", self.coordinator))?
            .connect_timeout(Duration::from_secs(5));
        if let Some(path) = &self.ca_cert {
            let pem =
                std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        let channel = endpoint.connect().await.map_err(|err| {
            // The transport error's innermost cause says why (connection refused, no route, TLS).
            let reason =
                std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                    .last()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
            super::exit::Unreachable {
                url: self.coordinator.clone(),
                reason,
            }
        })?;
        let header = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("--token has characters not allowed in a header")?,
            ),
            None => None,
        };
        Ok(
            ClientServiceClient::with_interceptor(channel, Bearer(header))
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
    }
}

/// Downloads blob `sha256` and checks the bytes against it.
pub async fn download(client: &mut Client, sha256: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = client
        .download_artifact(pb::DownloadArtifactRequest {
            sha256: sha256.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.map_err(rpc)?.data);
    }
    let actual = hex_sha256(&data);
    anyhow::ensure!(
        actual == sha256,
        "artifact {sha256} arrived corrupted (got {actual})"
    );
    Ok(data)
}

/// Lower-case hex SHA-256 of `data`.
pub fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The experiment's results (status, series, artifacts, manifest, training-job placements).
pub async fn fetch_results(
    client: &mut Client,
    experiment: &str,
) -> anyhow::Result<pb::ResultsReply> {
    Ok(client
        .results(pb::ResultsRequest {
            experiment_id: experiment.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner())
}

/// Runs `future` on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(future))
}

/// A gRPC status as a one-line error.
pub fn rpc(status: Status) -> anyhow::Error {
    anyhow::Error::new(super::exit::RpcError {
        code: status.code(),
        message: status.message().to_string(),
    })
}

/// `name` reduced to `[A-Za-z0-9._-]`, never starting with '.', never empty: safe as one file name.
pub fn safe_file_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() { "_".into() } else { out }
}

/// Formats a millisecond timestamp as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape() {
        assert_eq!(safe_file_name("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_file_name(".."), "_.");
        assert_eq!(safe_file_name(""), "_");
        assert_eq!(
            safe_file_name("adapter_model.safetensors"),
            "adapter_model.safetensors"
        );
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
    }
}
