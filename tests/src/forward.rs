//! Passing a request on to moto unchanged, for the gates that stand in
//! front of it (`sts`, `managed_keys`) and answer only what moto lacks.

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP client to moto.
pub(crate) type MotoClient = Client<HttpConnector, Full<Bytes>>;

/// A new client to moto.
pub(crate) fn moto_client() -> MotoClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends the request (`parts` and `body`) to `moto` and returns its answer.
pub(crate) async fn to_moto(
    client: &MotoClient,
    moto: &str,
    parts: Parts,
    body: Bytes,
) -> Response {
    let uri = format!(
        "{moto}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forwarded = axum::http::Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if name != header::HOST {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = forwarded
        .body(Full::new(body))
        .expect("a forwarded request");
    match client.request(forwarded).await {
        Ok(response) => response.map(Body::new).into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
