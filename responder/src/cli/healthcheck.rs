//! `floodgate healthcheck`: asks a running daemon's `/healthz` whether its
//! last cycle succeeded recently. The container's `HEALTHCHECK` and
//! Kubernetes probes run it, so the image needs no shell or curl.
//!
//! Exit codes: 0 when `/healthz` answers 200; 1 otherwise (503, no answer,
//! a bad URL or policy), with the reason on stderr.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{CliError, HealthcheckArgs, PolicyArgs, Status, load_policy, write_stdout};

/// Runs `floodgate healthcheck`.
pub(super) fn run(args: &HealthcheckArgs) -> Result<Status, CliError> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let policy = PolicyArgs {
                config: args.config.clone(),
                now: None,
            };
            let Some(loaded) = load_policy(&policy)? else {
                return Ok(Status::Invalid);
            };
            healthz_url(loaded.policy.responder.listen)
        }
    };
    let timeout = Duration::from_secs(args.timeout_seconds.into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(get(&url, timeout)) {
        Ok((200, body)) => {
            write_stdout(&body)?;
            Ok(Status::Success)
        }
        Ok((status, body)) => {
            eprintln!("floodgate: {url} answered {status}: {}", body.trim_end());
            Ok(Status::Unhealthy)
        }
        Err(reason) => {
            eprintln!("floodgate: {url}: {reason}");
            Ok(Status::Unhealthy)
        }
    }
}

/// The daemon's `/healthz` at `listen`; a wildcard address is asked on
/// loopback, where a daemon listening everywhere also answers.
fn healthz_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}/healthz")
}

/// GETs `url` (plain HTTP, as the daemon serves it): the status and body.
async fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); such as http://127.0.0.1:9464/healthz"))?;
    if uri.scheme_str() != Some("http") {
        return Err("use an http:// URL: the daemon serves /healthz without TLS".to_owned());
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// An error with its causes, such as "client error (Connect): tcp connect
/// error: Connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        let url = |listen: &str| healthz_url(listen.parse().unwrap());
        assert_eq!(url("0.0.0.0:9464"), "http://127.0.0.1:9464/healthz");
        assert_eq!(url("[::]:9464"), "http://[::1]:9464/healthz");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/healthz");
    }
}
