//! The Redis backend against real Redis Clusters the tests start: three
//! primaries (with a replica each where a failover is tested), joined by
//! `redis-cli --cluster create`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use floodgate_ratelimit::{Backend, BuildError, RedisSettings};
use http::StatusCode;
use metrics_util::debugging::DebuggingRecorder;

use crate::common;
use crate::redis::{
    Fallbacks, Limited, connected_service, fresh_tenant, send, service, wait_until_connected,
};
use crate::servers::RedisCluster;

/// A burst of 10 an hour: no refill while a test runs, so what two layers
/// admit together is exactly 10 per tenant when they share it.
const TEN_AN_HOUR: &str = r#"
[quotas]
default_plan = "burst"
plans = [{ name = "burst", limits = [{ requests = 10, per_seconds = 3600 }] }]
"#;

/// Four instances expected: a check decided locally gets a quarter of the
/// burst (3 of 10, rounded up), so two layers falling back admit at most 6
/// of a tenant's 10, never the 10 a shared limit gives.
fn cluster_backend(seed: String, timeout: Duration) -> Backend {
    Backend::Redis(RedisSettings {
        timeout,
        expected_instances: 4.try_into().unwrap(),
        ..RedisSettings::cluster([seed])
    })
}

/// Two layers on the cluster through seed nodes `seeds`, connected, and
/// the fallback counter they share.
async fn two_layers(
    cluster: &RedisCluster,
    seeds: [usize; 2],
    budget: Duration,
) -> ([Limited; 2], Fallbacks) {
    let recorder = DebuggingRecorder::new();
    let fallbacks = Fallbacks::new(&recorder);
    let quotas = common::quotas(TEN_AN_HOUR);
    let built = metrics::with_local_recorder(&recorder, || {
        seeds.map(|seed| service(&quotas, cluster_backend(cluster.url(seed), budget)))
    });
    for (_, handle) in &built {
        wait_until_connected(handle, true).await;
    }
    (built.map(|(layer, _)| layer), fallbacks)
}

/// Sends `rounds` requests per tenant, alternating between the two layers;
/// what each tenant got admitted.
async fn alternate(layers: &mut [Limited; 2], tenants: &[String], rounds: usize) -> Vec<usize> {
    let mut admitted = vec![0; tenants.len()];
    for round in 0..rounds {
        for (tenant, count) in tenants.iter().zip(&mut admitted) {
            if send(&mut layers[round % 2], tenant).await.0 == StatusCode::OK {
                *count += 1;
            }
        }
    }
    admitted
}

/// The primaries holding at least one of floodgate's keys, by port.
fn primaries_with_keys(cluster: &RedisCluster) -> BTreeSet<u16> {
    cluster
        .primaries()
        .into_iter()
        .filter(|node| {
            let keys = node.cli(&["--scan", "--pattern", "floodgate:*"]);
            !keys.trim().is_empty()
        })
        .map(|node| node.port)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_on_different_seed_nodes_share_every_tenants_burst_exactly() {
    let cluster = RedisCluster::start(false, None);
    let (mut layers, mut fallbacks) =
        two_layers(&cluster, [0, 1], Duration::from_millis(250)).await;
    // 60 tenants land on every primary (checked below); each is sent 16
    // requests, 8 through each layer.
    let tenants: Vec<String> = (0..60)
        .map(|i| fresh_tenant(&format!("spread{i}")))
        .collect();
    let admitted = alternate(&mut layers, &tenants, 16).await;

    assert!(
        admitted.iter().all(|&n| n == 10),
        "each tenant's burst of 10, shared by both layers: {admitted:?}"
    );
    assert_eq!(
        fallbacks.total(),
        0,
        "Redis decided every check: {:?}",
        fallbacks.by_reason()
    );
    assert_eq!(
        primaries_with_keys(&cluster).len(),
        3,
        "every primary holds some tenants' state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_keeps_limits_enforced_after_the_topology_refresh() {
    let cluster = RedisCluster::start(true, None);
    let (mut layers, mut fallbacks) =
        two_layers(&cluster, [0, 2], Duration::from_millis(250)).await;

    // Before: 30 tenants spend half of their burst.
    let before: Vec<String> = (0..30)
        .map(|i| fresh_tenant(&format!("before{i}")))
        .collect();
    assert!(
        alternate(&mut layers, &before, 5)
            .await
            .iter()
            .all(|&n| n == 5)
    );
    assert_eq!(fallbacks.total(), 0);

    // During: a replica takes over its primary while requests keep coming.
    let replica = cluster
        .nodes
        .iter()
        .find(|node| node.cli(&["ROLE"]).starts_with("slave"))
        .expect("a replica");
    let replica_port = replica.port;
    replica.cli(&["CLUSTER", "FAILOVER"]);
    let during: Vec<String> = (0..30)
        .map(|i| fresh_tenant(&format!("during{i}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut during_admitted = vec![0; during.len()];
    loop {
        for (count, n) in during_admitted
            .iter_mut()
            .zip(alternate(&mut layers, &during, 2).await)
        {
            *count += n;
        }
        let promoted = cluster
            .nodes
            .iter()
            .any(|node| node.port == replica_port && node.cli(&["ROLE"]).starts_with("master"));
        if promoted {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never took over");
    }
    cluster.wait_until_healthy();
    // Whatever fell back in between admitted at most its local share, 3
    // per layer, beyond what Redis admitted.
    assert!(
        during_admitted.iter().all(|&n| n <= 10 + 2 * 3),
        "bounded while failing over: {during_admitted:?}"
    );
    let reasons = fallbacks.by_reason().clone();
    assert!(
        !reasons.contains_key("moved"),
        "the cluster client follows MOVED itself: {reasons:?}"
    );

    // After: the tenants from before kept their state through the
    // failover, and fresh tenants get exactly their burst, through Redis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = fallbacks.total();
    let before_rest = alternate(&mut layers, &before, 10).await;
    assert!(
        before_rest.iter().all(|&n| n == 5),
        "the other half of the burst, as the replica had it: {before_rest:?}"
    );
    let after: Vec<String> = (0..30)
        .map(|i| fresh_tenant(&format!("after{i}")))
        .collect();
    let after_admitted = alternate(&mut layers, &after, 16).await;
    assert!(
        after_admitted.iter().all(|&n| n == 10),
        "exact again after the refresh: {after_admitted:?}"
    );
    assert_eq!(
        fallbacks.total(),
        counted,
        "no fallback once the topology is refreshed: {:?}",
        fallbacks.by_reason()
    );
}

#[tokio::test]
async fn a_standalone_client_pointed_at_a_cluster_node_is_refused_at_start_up() {
    let cluster = RedisCluster::start(false, None);
    let quotas = common::quotas(TEN_AN_HOUR);
    let backend = Backend::Redis(RedisSettings::node(cluster.url(0)));
    let Err(error) = connected_service(&quotas, backend.clone()).await else {
        panic!("a cluster node must not pass for one server");
    };
    assert!(matches!(error, BuildError::Unusable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&cluster.url(0)) && message.contains("set cluster = true"),
        "{message}"
    );

    // Built without waiting, the layer decides locally and says why.
    let recorder = DebuggingRecorder::new();
    let mut fallbacks = Fallbacks::new(&recorder);
    let (mut layer, handle) = metrics::with_local_recorder(&recorder, || service(&quotas, backend));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.redis_connected(), Some(false));
    send(&mut layer, &fresh_tenant("standalone")).await;
    let reasons = fallbacks.by_reason().clone();
    assert_eq!(reasons.get("moved"), Some(&1), "{reasons:?}");
}

#[tokio::test]
async fn a_cluster_client_pointed_at_one_server_is_refused_at_start_up() {
    let quotas = common::quotas(TEN_AN_HOUR);
    let url = "redis://127.0.0.1:6379";
    let backend = Backend::Redis(RedisSettings::cluster([url]));
    let Err(error) = connected_service(&quotas, backend).await else {
        panic!("one server must not pass for a cluster");
    };
    let message = error.to_string();
    assert!(
        message.contains(url) && message.contains("remove cluster = true"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_falls_back_alone_while_the_other_nodes_keep_the_limit_shared_until_it_is_back()
 {
    // Without full coverage required, the other primaries serve their slots
    // while one is down. (With Redis's default, the whole cluster answers
    // CLUSTERDOWN once the node is marked failed, and every check falls
    // back, counted as cluster_down.)
    let mut cluster =
        RedisCluster::start_with(false, None, &["--cluster-require-full-coverage", "no"]);
    let (mut layers, mut fallbacks) =
        two_layers(&cluster, [0, 1], Duration::from_millis(100)).await;
    let dead_ranges = cluster.ranges_of(2);
    assert!(!dead_ranges.is_empty());
    cluster.nodes[2].kill();

    let tenants: Vec<String> = (0..45)
        .map(|i| fresh_tenant(&format!("node-down{i}")))
        .collect();
    let on_dead_node: Vec<bool> = tenants
        .iter()
        .map(|tenant| on_node(&cluster, &dead_ranges, tenant))
        .collect();
    assert!(on_dead_node.iter().any(|d| *d) && on_dead_node.iter().any(|d| !*d));
    let admitted = alternate(&mut layers, &tenants, 16).await;
    for ((tenant, admitted), dead) in tenants.iter().zip(&admitted).zip(&on_dead_node) {
        if *dead {
            // Each layer's local share: 3 of the burst.
            assert!(
                (1..=6).contains(admitted),
                "{tenant}, on the dead node, at most its local shares: {admitted}"
            );
        } else {
            assert_eq!(*admitted, 10, "{tenant}, on a live node, shared exactly");
        }
    }
    let reasons = fallbacks.by_reason().clone();
    let expected = ["timeout", "refused", "node_backoff", "cluster_down"];
    assert!(
        !reasons.is_empty() && reasons.keys().all(|r| expected.contains(&r.as_str())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains_key("node_backoff"),
        "the dead node's slots back off: {reasons:?}"
    );
    // The node comes back at the same address: its slots are shared again
    // once a check has found the old connection broken and the routes were
    // read anew.
    cluster.nodes[2].restart();
    cluster.wait_until_healthy();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = fallbacks.total();
        let probe = fresh_tenant("probe");
        if on_node(&cluster, &dead_ranges, &probe) {
            send(&mut layers[0], &probe).await;
            send(&mut layers[1], &probe).await;
            if fallbacks.total() == before {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node's slots never came back: {:?}",
            fallbacks.by_reason()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back: Vec<String> = (0..200)
        .map(|i| fresh_tenant(&format!("back{i}")))
        .filter(|t| on_node(&cluster, &dead_ranges, t))
        .take(10)
        .collect();
    let before = fallbacks.total();
    let admitted = alternate(&mut layers, &back, 16).await;
    assert!(
        admitted.iter().all(|&n| n == 10),
        "shared again: {admitted:?}"
    );
    assert_eq!(fallbacks.total(), before, "{:?}", fallbacks.by_reason());
}

/// Whether `tenant`'s key lives in one of `ranges`.
fn on_node(cluster: &RedisCluster, ranges: &[(u16, u16)], tenant: &str) -> bool {
    let slot = cluster.slot(&format!("floodgate:{{t:{tenant}}}"));
    ranges
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&slot))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_keeps_every_tenants_burst_exact() {
    let cluster = RedisCluster::start(false, None);
    let (mut layers, mut fallbacks) =
        two_layers(&cluster, [0, 1], Duration::from_millis(500)).await;
    let tenants: Vec<String> = (0..40)
        .map(|i| fresh_tenant(&format!("reshard{i}")))
        .collect();
    let mut admitted = alternate(&mut layers, &tenants, 4).await;

    // Half of the first primary's slots move to the second, keys and all
    // (MIGRATE, with ASK redirects while a slot is half moved), while the
    // tenants keep sending.
    let from = cluster.nodes[0].cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let to = cluster.nodes[1].cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let seed = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let moved_slots = (cluster
        .ranges_of(0)
        .iter()
        .map(|(a, b)| b - a + 1)
        .sum::<u16>()
        / 2)
    .to_string();
    let reshard = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from,
                "--cluster-to",
                &to,
            ])
            .args(["--cluster-slots", &moved_slots, "--cluster-yes"])
            .output()
            .expect("redis-cli runs")
    });
    // While slots move: fresh tenants, ten at a time, each sent 16.
    let mut during = Vec::new();
    while !reshard.is_finished() {
        let batch: Vec<String> = (0..10)
            .map(|i| fresh_tenant(&format!("moving{}-{i}", during.len())))
            .collect();
        during.extend(alternate(&mut layers, &batch, 16).await);
    }
    let output = reshard.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(during.len() >= 10, "the move overlapped some traffic");
    assert!(
        during.iter().all(|&n| n == 10),
        "exact while slots moved: {during:?}, {:?}",
        fallbacks.by_reason()
    );
    // After: the first tenants' state moved with their keys.
    for (count, n) in admitted
        .iter_mut()
        .zip(alternate(&mut layers, &tenants, 12).await)
    {
        *count += n;
    }
    assert!(
        admitted.iter().all(|&n| n == 10),
        "each tenant's burst of 10 across the move: {admitted:?}, {:?}",
        fallbacks.by_reason()
    );
    assert_eq!(fallbacks.total(), 0, "{:?}", fallbacks.by_reason());
}
