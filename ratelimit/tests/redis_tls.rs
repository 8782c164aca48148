//! The Redis backend over TLS (certificates made at test time, a private
//! CA) and with an ACL user allowed only what the backend runs, against
//! one server and against a cluster.

use std::path::PathBuf;
use std::time::Duration;

use floodgate_ratelimit::{Backend, BuildError, RedisSettings, TenantRateLimitLayer};
use http::StatusCode;
use metrics_util::debugging::DebuggingRecorder;

use crate::common;
use crate::redis::{Fallbacks, Limited, admitted, connected_service, fresh_tenant};
use crate::servers::{Certificates, RedisCluster, RedisServer, free_port};

/// 8 a minute.
const EIGHT_A_MINUTE: &str = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 8, per_seconds = 60 }] }]
"#;

/// What the backend runs, and nothing else: the script's own commands
/// (Redis checks them against the user too), loading it, PING, and in a
/// cluster the slot map. The README's ACL example is this line.
const ACL_RULES: &[&str] = &[
    "on",
    "resetkeys",
    "~floodgate:*",
    "resetchannels",
    "-@all",
    "+evalsha",
    "+eval",
    "+script|load",
    "+ping",
    "+time",
    "+hmget",
    "+hset",
    "+del",
    "+pexpire",
    "+cluster|slots",
];

fn add_acl_user(server: &RedisServer, password: &str) {
    let mut args = vec!["ACL", "SETUSER", "floodgate"];
    let password = format!(">{password}");
    args.push(&password);
    args.extend(ACL_RULES);
    server.cli(&args);
}

fn settings(base: RedisSettings, ca: Option<Vec<u8>>) -> RedisSettings {
    RedisSettings {
        tls_ca: ca,
        timeout: Duration::from_millis(250),
        ..base
    }
}

/// The error a first connection meets, as text; the test fails if it connects.
async fn start_up_error(settings: RedisSettings) -> String {
    let quotas = common::quotas(EIGHT_A_MINUTE);
    match connected_service(&quotas, Backend::Redis(settings.clone())).await {
        Ok((_, handle)) => panic!(
            "connected, but should have been refused: {settings:?}, connected {:?}",
            handle.redis_connected()
        ),
        Err(error) => {
            assert!(matches!(error, BuildError::Unusable { .. }), "{error:?}");
            error.to_string()
        }
    }
}

async fn eight_of_ten(service: &mut Limited) {
    let tenant = fresh_tenant("tls");
    assert_eq!(
        admitted(service, &tenant, 10).await,
        8,
        "limited through Redis"
    );
}

#[tokio::test]
async fn one_server_over_tls_with_a_private_ca() {
    let certificates = Certificates::generate();
    let server = RedisServer::start_tls(&certificates);
    let url = format!("rediss://localhost:{}", server.port);
    let quotas = common::quotas(EIGHT_A_MINUTE);

    let trusted = settings(RedisSettings::node(&url), Some(certificates.ca()));
    let (mut service, handle) = connected_service(&quotas, Backend::Redis(trusted))
        .await
        .expect("the private CA signs the server");
    assert_eq!(handle.redis_connected(), Some(true));
    eight_of_ten(&mut service).await;

    // Another CA, the system's roots, and a host name the certificate does
    // not hold: each refused at start-up, naming the endpoint and TLS.
    let wrong_ca = settings(RedisSettings::node(&url), Some(certificates.other_ca()));
    let message = start_up_error(wrong_ca).await;
    assert!(
        message.contains(&url) && message.contains("(tls)"),
        "{message}"
    );
    assert!(message.contains("tls_ca_file"), "names the fix: {message}");
    let system_roots = settings(RedisSettings::node(&url), None);
    assert!(start_up_error(system_roots).await.contains("(tls)"));
    let by_address = format!("rediss://127.0.0.1:{}", server.port);
    let wrong_host = settings(RedisSettings::node(&by_address), Some(certificates.ca()));
    let message = start_up_error(wrong_host).await;
    assert!(
        message.contains(&by_address) && message.contains("(tls)"),
        "{message}"
    );
}

#[tokio::test]
async fn an_acl_user_needs_only_the_backends_commands_and_a_wrong_password_fails_clearly() {
    let port = free_port();
    let server = RedisServer::start(port);
    server.wait_until_up();
    add_acl_user(&server, "s3cret");
    let url = format!("redis://127.0.0.1:{port}");
    let quotas = common::quotas(EIGHT_A_MINUTE);
    let user = |password: &str| RedisSettings {
        username: Some("floodgate".to_owned()),
        password: Some(password.to_owned()),
        ..settings(RedisSettings::node(&url), None)
    };

    let (mut service, _) = connected_service(&quotas, Backend::Redis(user("s3cret")))
        .await
        .expect("the ACL user may run the backend");
    eight_of_ten(&mut service).await;

    let message = start_up_error(user("wrong")).await;
    assert!(
        message.contains(&url) && message.contains("(auth)"),
        "{message}"
    );
    assert!(message.contains("password_env"), "names the fix: {message}");
    assert!(
        !message.contains("wrong"),
        "never prints the password: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_an_acl_user() {
    let certificates = Certificates::generate();
    let cluster = RedisCluster::start(false, Some(&certificates));
    for node in &cluster.nodes {
        add_acl_user(node, "s3cret");
    }
    let quotas = common::quotas(EIGHT_A_MINUTE);
    let user = |seed: String, password: &str| RedisSettings {
        username: Some("floodgate".to_owned()),
        password: Some(password.to_owned()),
        ..settings(RedisSettings::cluster([seed]), Some(certificates.ca()))
    };
    // The counters are registered as the layer is built, on this thread.
    let recorder = DebuggingRecorder::new();
    let mut fallbacks = Fallbacks::new(&recorder);
    let guard = metrics::set_default_local_recorder(&recorder);
    let (mut first, _) = connected_service(&quotas, Backend::Redis(user(cluster.url(0), "s3cret")))
        .await
        .expect("TLS and the ACL user on every node");
    let (mut second, _) =
        connected_service(&quotas, Backend::Redis(user(cluster.url(2), "s3cret")))
            .await
            .expect("through another seed");
    drop(guard);
    // Twenty tenants over every node; 12 requests each, 6 through each layer.
    for i in 0..20 {
        let tenant = fresh_tenant(&format!("tls-cluster{i}"));
        let mut statuses = Vec::new();
        for round in 0..12 {
            let layer = if round % 2 == 0 {
                &mut first
            } else {
                &mut second
            };
            statuses.push(crate::redis::send(layer, &tenant).await.0);
        }
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(
            ok,
            8,
            "one limit across both layers: {statuses:?}, {:?}",
            fallbacks.by_reason()
        );
    }
    assert_eq!(fallbacks.total(), 0, "Redis decided every check");
    let message = start_up_error(user(cluster.url(1), "wrong")).await;
    assert!(message.contains("(auth)"), "{message}");
    let wrong_ca = RedisSettings {
        tls_ca: Some(certificates.other_ca()),
        ..user(cluster.url(1), "s3cret")
    };
    assert!(start_up_error(wrong_ca).await.contains("(tls)"));
}

#[test]
fn an_unreadable_ca_file_is_a_build_error_naming_it() {
    let missing = PathBuf::from("/nonexistent/floodgate-redis-ca.pem");
    let text = format!(
        "[quotas]\ndefault_plan = \"free\"\nbackend = \"redis\"\nredis = {{ url = \"rediss://localhost:6380\", tls_ca_file = \"{}\" }}\nplans = [{{ name = \"free\", limits = [{{ requests = 8, per_seconds = 60 }}] }}]\n",
        missing.display()
    );
    let quotas = common::quotas(&text);
    let error = TenantRateLimitLayer::builder(&quotas).build().unwrap_err();
    assert!(matches!(error, BuildError::TlsCaFile { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(
            "quotas.redis.tls_ca_file: cannot read /nonexistent/floodgate-redis-ca.pem"
        ),
        "{message}"
    );
}

#[test]
fn the_readmes_acl_line_is_the_one_tested() {
    let readme = include_str!("../../README.md");
    let line = format!(
        "ACL SETUSER floodgate on >PASSWORD {}",
        ACL_RULES[1..].join(" ")
    );
    assert!(readme.contains(&line), "README.md should show:\n{line}");
}
