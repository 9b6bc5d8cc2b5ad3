//! The standard gRPC services a coordinator serves beside its own, as grpcurl, load balancers and older clients
//! use them: `grpc.health.v1.Health` per service, and server reflection in both v1 and v1alpha.

use tandem_coordinator::server::{ServeOptions, start};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn coordinator(dir: &std::path::Path) -> tandem_coordinator::server::RunningCoordinator {
    start(ServeOptions {
        store_dir: dir.join("store"),
        listen: "127.0.0.1:0".parse().unwrap(),
        insecure_local: true,
        tls: None,
        scheduler: Default::default(),
        limits: Default::default(),
        http: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn health_reports_each_service_serving() {
    let dir = tempfile::tempdir().unwrap();
    let running = coordinator(dir.path()).await;
    let mut health = HealthClient::new(channel(running.addr).await);
    for service in ["", "tandem.v1.ClientService", "tandem.v1.WorkerService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "tandem.v1.NoSuchService".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    running.shutdown().await.unwrap();
}

/// The service names a reflection client lists, through the v1 or the v1alpha protocol.
macro_rules! list_services {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel($addr).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.next().await.unwrap().unwrap();
        match reply.message_response.unwrap() {
            MessageResponse::ListServicesResponse(list) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection reply {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let running = coordinator(dir.path()).await;
    let v1 = list_services!(v1, running.addr);
    let v1alpha = list_services!(v1alpha, running.addr);
    for names in [&v1, &v1alpha] {
        for expected in [
            "tandem.v1.ClientService",
            "tandem.v1.WorkerService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }
    running.shutdown().await.unwrap();
}
