//! A tonic gRPC server behind the layer answers a refused call with the
//! gRPC status RESOURCE_EXHAUSTED, which a real tonic client reads as such.

use crate::common;

use floodgate_ratelimit::{TenantHeader, TenantRateLimitLayer};
use http::header::HeaderName;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn a_refused_grpc_call_gets_resource_exhausted() {
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 2, per_seconds = 60 }] }]
"#;
    let quotas = common::quotas(text);
    let layer = TenantRateLimitLayer::builder(&quotas)
        .key(TenantHeader::new(HeaderName::from_static("x-tenant-id")))
        .build()
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request
            .metadata_mut()
            .insert("x-tenant-id", "acme".parse().unwrap());
        let code = match client.check(request).await {
            Ok(_) => Code::Ok,
            Err(status) => {
                if status.code() == Code::ResourceExhausted {
                    assert!(status.message().contains("retry after 30 s"), "{status:?}");
                }
                status.code()
            }
        };
        codes.push(code);
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::ResourceExhausted]);
}
