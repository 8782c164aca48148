//! A small axum service behind the rate-limit layer, with a fake auth layer
//! that sets the tenant. The load test and the README use it.
//!
//! ```text
//! cargo run -p floodgate-ratelimit --example tenant_service -- \
//!     --policy examples/floodgate.toml --addr 127.0.0.1:3000 \
//!     [--no-limit | --tower-governor]
//!     [--headers-always | --headers-near-limit PERCENT | --no-headers]
//! curl -i -H 'authorization: Bearer acme-corp' http://127.0.0.1:3000/
//! curl -i -X POST -H 'authorization: Bearer initech' http://127.0.0.1:3000/v1/exports
//! kill -HUP <pid>   # reloads the policy file
//! ```
//!
//! The fake auth layer trusts the bearer token as the tenant id; tokens that
//! start with `pro-` are on the `pro` plan. Requests without a token are
//! anonymous and charged to their peer address. The export routes are
//! classed by the example policy's `[[quotas.routes]]`: an export costs 5
//! units, of its plan's limits and of the `exports` class's.
//!
//! `--tower-governor` puts tower_governor in the layer's place, keyed by the
//! same tenant, with a quota no tenant reaches: the load test's anchor.
//! Each layer sends its headers as it does by default (Floodgate's near a
//! limit, tower_governor's none) unless a headers flag says otherwise; with
//! `--headers-always` tower_governor sends its `x-ratelimit-*` headers.
//!
//! Both layers wrap the whole `Router`. `Router::layer` would wrap each
//! route instead, and axum then clones and boxes the layered route for every
//! request: four more allocations a request (BENCHMARKS.md, "End to end").

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Router, ServiceExt};
use floodgate_ratelimit::{HeaderMode, RateLimitHandle, Tenant, TenantRateLimitLayer};
use floodgate_rules::Policy;
use floodgate_rules::policy::Quotas;
use tower::Layer;
use tower::util::MapRequest;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

struct Args {
    policy: PathBuf,
    addr: SocketAddr,
    limiter: Limiter,
    /// `None`: the layer's own default.
    headers: Option<HeaderMode>,
}

/// What stands between the auth layer and the router.
enum Limiter {
    None,
    Floodgate,
    TowerGovernor,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        policy: PathBuf::from("examples/floodgate.toml"),
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        limiter: Limiter::Floodgate,
        headers: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--policy" => args.policy = argv.next().ok_or("--policy needs a file")?.into(),
            "--addr" => {
                let addr = argv.next().ok_or("--addr needs host:port")?;
                args.addr = addr.parse().map_err(|e| format!("--addr {addr}: {e}"))?;
            }
            "--no-limit" => args.limiter = Limiter::None,
            "--tower-governor" => args.limiter = Limiter::TowerGovernor,
            "--headers-always" => args.headers = Some(HeaderMode::Always),
            "--no-headers" => args.headers = Some(HeaderMode::Never),
            "--headers-near-limit" => {
                let percent = argv.next().ok_or("--headers-near-limit needs a percent")?;
                let percent = percent
                    .parse()
                    .map_err(|e| format!("--headers-near-limit {percent}: {e}"))?;
                args.headers = Some(HeaderMode::NearLimit { percent });
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; use --policy FILE --addr HOST:PORT [--no-limit | --tower-governor] [--headers-always | --headers-near-limit PERCENT | --no-headers]"
                ));
            }
        }
    }
    if matches!(args.limiter, Limiter::TowerGovernor)
        && matches!(args.headers, Some(HeaderMode::NearLimit { .. }))
    {
        return Err(
            "--headers-near-limit is the Floodgate layer's; tower_governor has no such mode".into(),
        );
    }
    Ok(args)
}

fn load_quotas(path: &Path) -> Result<Quotas, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let today = time::OffsetDateTime::now_utc().date();
    let loaded =
        Policy::from_toml(&text, &path.display().to_string(), today).map_err(|e| e.to_string())?;
    loaded
        .policy
        .quotas
        .ok_or_else(|| format!("{}: has no [quotas] section", path.display()))
}

/// Stands in for the service's real authentication.
fn fake_auth(mut request: Request) -> Request {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(token) = token {
        let tenant = Tenant::new(token.clone());
        let tenant = match token.starts_with("pro-") {
            true => tenant.with_plan("pro"),
            false => tenant,
        };
        request.extensions_mut().insert(tenant);
    }
    request
}

/// Reloads the policy file on SIGHUP.
fn reload_on_hangup(handle: RateLimitHandle, path: PathBuf) {
    tokio::spawn(async move {
        let kind = tokio::signal::unix::SignalKind::hangup();
        let Ok(mut hangups) = tokio::signal::unix::signal(kind) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match load_quotas(&path) {
                Ok(quotas) => {
                    handle.reload(&quotas);
                    eprintln!("reloaded {}", path.display());
                }
                Err(error) => eprintln!("kept the old policy: {error}"),
            }
        }
    });
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let router = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route("/v1/exports", post(|| async { "export queued\n" }))
        .route("/v1/exports/{id}/download", get(|| async { "export\n" }));
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            std::process::exit(1);
        });
    eprintln!("listening on http://{}", args.addr);
    match args.limiter {
        Limiter::None => return serve(listener, authenticated(router)).await,
        Limiter::TowerGovernor => {
            let headers = args.headers == Some(HeaderMode::Always);
            return serve_tower_governor(listener, router, headers).await;
        }
        Limiter::Floodgate => {}
    }
    let quotas = load_quotas(&args.policy).unwrap_or_else(|message| {
        eprintln!("error: {message}");
        std::process::exit(1);
    });
    // With the Redis backend, a Redis no retry can fix (TLS, credentials,
    // cluster mode) stops the service here; one that is down does not.
    let layer = TenantRateLimitLayer::builder(&quotas)
        .headers(args.headers.unwrap_or_default())
        .connect()
        .await
        .unwrap_or_else(|error| {
            eprintln!("error: {error}");
            std::process::exit(1);
        });
    reload_on_hangup(layer.handle(), args.policy.clone());
    // Responses in axum's own body type, which axum::serve requires.
    serve(
        listener,
        authenticated(layer.keep_body_type().layer(router)),
    )
    .await;
}

/// `service` behind the fake auth layer, which runs first so that the rate
/// limit sees the tenant.
fn authenticated<S>(service: S) -> MapRequest<S, fn(Request) -> Request> {
    MapRequest::new(service, fake_auth)
}

/// tower_governor's key: the tenant the auth layer set.
#[derive(Clone)]
struct TenantId;

impl KeyExtractor for TenantId {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
        let tenant = request.extensions().get::<Tenant>();
        tenant
            .map(|tenant| tenant.id().to_owned())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// Serves `router` behind tower_governor: a burst of a million, refilled at
/// one request a nanosecond.
async fn serve_tower_governor(listener: tokio::net::TcpListener, router: Router, headers: bool) {
    let mut config = GovernorConfigBuilder::default();
    config.per_nanosecond(1).burst_size(1_000_000);
    let mut config = config.key_extractor(TenantId);
    // `use_headers` changes the layer's type, hence two calls.
    if headers {
        let layer = GovernorLayer::new(config.use_headers().finish().expect("a valid quota"));
        serve(listener, authenticated(layer.layer(router))).await
    } else {
        let layer = GovernorLayer::new(config.finish().expect("a valid quota"));
        serve(listener, authenticated(layer.layer(router))).await
    }
}

/// Serves `app` with each request's peer address in `ConnectInfo`.
async fn serve<S>(listener: tokio::net::TcpListener, app: S)
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync,
    S::Future: Send,
    S: 'static,
{
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, service).await {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
