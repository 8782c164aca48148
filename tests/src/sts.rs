//! STS in front of moto, with the trust policies moto does not enforce.
//!
//! moto's `AssumeRole` succeeds for any role and any external id. This gate
//! refuses an `AssumeRole` whose `ExternalId` is not the one a role's trust
//! policy requires, as STS does: HTTP 403 with the `AccessDenied` error of
//! the Query protocol ("AssumeRole", AWS Security Token Service API
//! Reference, Errors; "Common Errors" for the error body). Every other
//! request goes on to moto unchanged, so granted roles get moto's
//! credentials, which act in the role's account.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::forward::{MotoClient, moto_client, to_moto};

/// The gate's state: what each role requires and what it was asked.
struct Gate {
    moto: String,
    /// Role ARN → the external id its trust policy requires.
    required: HashMap<String, String>,
    assume_role_calls: AtomicUsize,
    refused: AtomicUsize,
    client: MotoClient,
}

/// A running gate; stopped when dropped.
pub struct StsGate {
    gate: Arc<Gate>,
    server: crate::Served,
}

impl StsGate {
    /// Starts a gate in front of `moto_endpoint`; `required` pairs a role
    /// ARN with the external id its trust policy requires.
    pub fn start(moto_endpoint: &str, required: &[(&str, &str)]) -> StsGate {
        let gate = Arc::new(Gate {
            moto: moto_endpoint.trim_end_matches('/').to_owned(),
            required: required
                .iter()
                .map(|(role, id)| ((*role).to_owned(), (*id).to_owned()))
                .collect(),
            assume_role_calls: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            client: moto_client(),
        });
        let app = axum::Router::new()
            .fallback(pass)
            .with_state(Arc::clone(&gate));
        StsGate {
            gate,
            server: crate::Served::start(app),
        }
    }

    /// The endpoint URL to give an account's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// `AssumeRole` requests received, granted or not.
    pub fn assume_role_calls(&self) -> usize {
        self.gate.assume_role_calls.load(Ordering::SeqCst)
    }

    /// `AssumeRole` requests refused for a wrong or missing external id.
    pub fn refused(&self) -> usize {
        self.gate.refused.load(Ordering::SeqCst)
    }
}

/// Refuses an `AssumeRole` its role's trust policy would refuse; passes
/// everything else to moto.
async fn pass(State(gate): State<Arc<Gate>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("a request body");
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if form.get("Action").map(String::as_str) == Some("AssumeRole") {
        gate.assume_role_calls.fetch_add(1, Ordering::SeqCst);
        let role = form.get("RoleArn").cloned().unwrap_or_default();
        if let Some(required) = gate.required.get(&role)
            && form.get("ExternalId") != Some(required)
        {
            gate.refused.fetch_add(1, Ordering::SeqCst);
            return access_denied(&role);
        }
    }
    to_moto(&gate.client, &gate.moto, parts, body).await
}

/// STS's answer to a caller the role's trust policy does not allow.
fn access_denied(role: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <Error><Type>Sender</Type><Code>AccessDenied</Code>\
         <Message>User: arn:aws:iam::123456789012:user/floodgate is not authorized to perform: \
         sts:AssumeRole on resource: {role}</Message></Error>\
         <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
    );
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/xml")],
        body,
    )
        .into_response()
}
