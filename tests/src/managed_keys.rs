//! WAFv2's `GetRateBasedStatementManagedKeys` in front of moto, which does
//! not implement it.
//!
//! The gate answers that one operation from a script the test controls
//! (which addresses each rule is limiting now, per region) and passes every
//! other request on to moto unchanged. The answer follows the AWS WAF API
//! Reference, "GetRateBasedStatementManagedKeys": `ManagedKeysIPV4` and
//! `ManagedKeysIPV6`, each `{"IPAddressVersion", "Addresses"}` with the
//! addresses in CIDR notation; a rule the script does not know is answered
//! with `WAFNonexistentItemException` (HTTP 400, the JSON protocol's
//! `__type`), as WAF answers for a rule or web ACL that does not exist.
//! The region is the request's SigV4 credential scope; the CLOUDFRONT
//! scope is scripted as `cloudfront`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::forward::{MotoClient, moto_client, to_moto};

struct Gate {
    moto: String,
    /// (region or `cloudfront`, rule name) → the addresses it limits.
    listed: Mutex<HashMap<(String, String), Vec<String>>>,
    calls: AtomicUsize,
    client: MotoClient,
}

/// A running gate; stopped when dropped.
pub struct ManagedKeysGate {
    gate: Arc<Gate>,
    server: crate::Served,
}

impl ManagedKeysGate {
    /// Starts a gate in front of `moto_endpoint`; no rule is known yet.
    pub fn start(moto_endpoint: &str) -> ManagedKeysGate {
        let gate = Arc::new(Gate {
            moto: moto_endpoint.trim_end_matches('/').to_owned(),
            listed: Mutex::new(HashMap::new()),
            calls: AtomicUsize::new(0),
            client: moto_client(),
        });
        let app = axum::Router::new()
            .fallback(pass)
            .with_state(Arc::clone(&gate));
        ManagedKeysGate {
            gate,
            server: crate::Served::start(app),
        }
    }

    /// The endpoint URL to give the wafv2 targets' `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// From now on, the rule `rule` in `place` (a region, or `cloudfront`)
    /// limits `addresses` (CIDR notation, such as `192.0.2.7/32`).
    pub fn set(&self, place: &str, rule: &str, addresses: &[&str]) {
        let addresses = addresses.iter().map(|a| (*a).to_owned()).collect();
        self.gate
            .listed
            .lock()
            .unwrap()
            .insert((place.to_owned(), rule.to_owned()), addresses);
    }

    /// `GetRateBasedStatementManagedKeys` requests answered so far.
    pub fn calls(&self) -> usize {
        self.gate.calls.load(Ordering::SeqCst)
    }
}

/// The region of a SigV4-signed request: its credential scope's third part.
fn signed_region(request: &Request) -> String {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    authorization
        .split("Credential=")
        .nth(1)
        .and_then(|scope| scope.split('/').nth(2))
        .unwrap_or_default()
        .to_owned()
}

async fn pass(State(gate): State<Arc<Gate>>, request: Request) -> Response {
    let operation = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let region = signed_region(&request);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("a request body");
    if !operation.ends_with(".GetRateBasedStatementManagedKeys") {
        return to_moto(&gate.client, &gate.moto, parts, body).await;
    }
    gate.calls.fetch_add(1, Ordering::SeqCst);
    let asked: Value = serde_json::from_slice(&body).expect("a JSON request");
    let place = match asked["Scope"].as_str() {
        Some("CLOUDFRONT") => "cloudfront".to_owned(),
        _ => region,
    };
    let rule = asked["RuleName"].as_str().unwrap_or_default().to_owned();
    let listed = gate
        .listed
        .lock()
        .unwrap()
        .get(&(place, rule.clone()))
        .cloned();
    let Some(addresses) = listed else {
        let error = json!({
            "__type": "WAFNonexistentItemException",
            "Message": format!("AWS WAF couldn't perform the operation because your resource doesn't exist. Rule {rule}"),
        });
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
            error.to_string(),
        )
            .into_response();
    };
    let (v6, v4): (Vec<String>, Vec<String>) = addresses.into_iter().partition(|a| a.contains(':'));
    let answer = json!({
        "ManagedKeysIPV4": { "IPAddressVersion": "IPV4", "Addresses": v4 },
        "ManagedKeysIPV6": { "IPAddressVersion": "IPV6", "Addresses": v6 },
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        answer.to_string(),
    )
        .into_response()
}
