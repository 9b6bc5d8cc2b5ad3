//! Serving: open the store, resume the scheduler, and serve both gRPC services (plus reflection v1 and v1alpha,
//! and grpc.health.v1) on a listener, with optional TLS. Used by `tandem serve`, the end-to-end tests and the
//! scale benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tandem_proto::client_service_server::ClientServiceServer;
use tandem_proto::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::auth::Auth;
use crate::grpc::{ClientApi, Limits, Shared, WorkerApi};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerError};
use crate::store::{SledStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    ReadTls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("--insecure-local serves only loopback addresses, not {0}")]
    InsecureNotLoopback(SocketAddr),
    #[error(transparent)]
    CrashSpec(#[from] crate::chaos::BadCrashSpec),
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub store_dir: PathBuf,
    pub listen: SocketAddr,
    pub insecure_local: bool,
    /// PEM certificate chain and private key; TLS is on when both are given.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub scheduler: SchedulerConfig,
    pub limits: Limits,
    /// Where the web dashboard listens (HTTP, same tokens, read-only); `None` = no dashboard.
    pub http: Option<SocketAddr>,
}

/// A coordinator serving in this process.
pub struct RunningCoordinator {
    pub addr: SocketAddr,
    /// The dashboard's address, when it serves one.
    pub http_addr: Option<SocketAddr>,
    pub scheduler: Arc<Scheduler>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    ticker: JoinHandle<()>,
    health: tonic_health::server::HealthReporter,
}

impl RunningCoordinator {
    /// Waits until the server stops (it runs until `shutdown`).
    pub async fn wait(mut self) -> Result<(), ServeError> {
        let result = (&mut self.server).await;
        self.ticker.abort();
        match result {
            Ok(inner) => Ok(inner?),
            Err(_) => Ok(()),
        }
    }

    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        // Health checkers see the services go first, while in-flight calls finish.
        self.health
            .set_not_serving::<ClientServiceServer<ClientApi>>()
            .await;
        self.health
            .set_not_serving::<WorkerServiceServer<WorkerApi>>()
            .await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }
}

/// Binds the dashboard's listener and serves it until the process ends (it holds no state of its own).
async fn start_dashboard(
    http: SocketAddr,
    options: &ServeOptions,
    scheduler: Arc<Scheduler>,
    auth: Arc<Auth>,
) -> Result<SocketAddr, ServeError> {
    if options.insecure_local && !http.ip().is_loopback() {
        return Err(ServeError::InsecureNotLoopback(http));
    }
    let listener = TcpListener::bind(http)
        .await
        .map_err(|source| ServeError::Listen { addr: http, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr: http, source })?;
    let state = Arc::new(crate::dashboard::Dashboard::new(scheduler, auth));
    tokio::spawn(async move {
        if let Err(e) = crate::dashboard::serve(listener, state, std::future::pending()).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    });
    tracing::info!(addr = %bound, "dashboard serving");
    Ok(bound)
}

/// Opens the store at `options.store_dir`, resumes it and starts serving.
pub async fn start(options: ServeOptions) -> Result<RunningCoordinator, ServeError> {
    if options.insecure_local && !options.listen.ip().is_loopback() {
        return Err(ServeError::InsecureNotLoopback(options.listen));
    }
    if let Some((point, at)) = crate::chaos::arm_from_env()? {
        tracing::warn!(
            point,
            at,
            "chaos: this coordinator will kill itself at a crash point"
        );
    }
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&options.store_dir)?);
    let auth = Arc::new(Auth::new(store.tokens()?, options.insecure_local));
    let dashboard_auth = auth.clone();
    let scheduler = Scheduler::open(store, options.scheduler.clone())?;
    let listener =
        TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: options.listen,
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: options.listen,
        source,
    })?;
    let shared = Shared {
        scheduler: scheduler.clone(),
        auth,
        limits: options.limits,
        streams: Default::default(),
        metric_points: Default::default(),
    };
    let max = options.limits.max_message_bytes;
    let client = ClientServiceServer::new(ClientApi::new(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let worker = WorkerServiceServer::new(WorkerApi::new(shared))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // Reflection in both versions (grpcurl and older clients speak v1alpha), and grpc.health.v1 per service.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClientServiceServer<ClientApi>>().await;
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    let mut builder = Server::builder();
    if let Some((cert, key)) = &options.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ServeError::ReadTls {
                path: path.clone(),
                source,
            })
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let (tx, rx) = oneshot::channel::<()>();
    let router = builder
        .add_service(client)
        .add_service(worker)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health_service);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = rx.await;
        },
    ));
    let ticker = tokio::spawn(scheduler.clone().run_ticker());
    let http_addr = match options.http {
        Some(http) => {
            Some(start_dashboard(http, &options, scheduler.clone(), dashboard_auth).await?)
        }
        None => None,
    };
    tracing::info!(%addr, tls = options.tls.is_some(), insecure_local = options.insecure_local, "coordinator serving");
    Ok(RunningCoordinator {
        addr,
        http_addr,
        scheduler,
        shutdown: Some(tx),
        server,
        ticker,
        health,
    })
}
