//! Times pushing a 10,000-address change to 5 regions plus CloudFront,
//! against a moto server on loopback, at several concurrencies.
//!
//! `cargo run --release -p floodgate-responder --example bench_push`
//! (needs the venv from `scripts/test.sh`). Figures go in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Instant;

use floodgate_responder::sink::wafv2::Wafv2Target;
use floodgate_responder::sink::{DesiredSets, apply_all};
use floodgate_rules::policy::{Region, WafScope};
use floodgate_tests::MotoServer;
use ipnet::IpNet;

const REGIONS: [&str; 5] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-2",
];

fn targets(moto: &MotoServer) -> Vec<Arc<Wafv2Target>> {
    let scopes = REGIONS
        .iter()
        .map(|r| WafScope::Regional(Region::new(r).unwrap()))
        .chain([WafScope::CloudFront]);
    scopes
        .map(|scope| {
            let client = moto.wafv2_client(scope.api_region());
            Arc::new(Wafv2Target::new(
                client,
                scope,
                vec!["fg-v4".into()],
                vec!["fg-v6".into()],
                true,
            ))
        })
        .collect()
}

fn addresses(offset: u32) -> DesiredSets {
    let v4 = (0..10_000u32)
        .map(|i| {
            IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from_bits(
                0x0b00_0000 + (offset + i) * 2,
            )))
        })
        .collect();
    DesiredSets {
        ipv4: vec![v4],
        ipv6: vec![vec![]],
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    for concurrency in [1, 3, 6] {
        moto.reset();
        let targets = targets(&moto);
        // Create the sets, then time replacing 10,000 addresses everywhere.
        apply_all(targets.clone(), &DesiredSets::default(), 6).await;
        apply_all(targets.clone(), &addresses(0), 6).await;
        let change = addresses(5_000); // 5,000 stay, 5,000 leave, 5,000 arrive
        let started = Instant::now();
        let reports = apply_all(targets.clone(), &change, concurrency).await;
        let elapsed = started.elapsed();
        let calls: u32 = reports.iter().map(|r| r.calls.total()).sum();
        let outcomes: Vec<String> = reports.iter().map(|r| r.outcome.to_string()).collect();
        println!(
            "concurrency {concurrency}: 6 targets in {:.3} s, {calls} API calls, outcomes {outcomes:?}",
            elapsed.as_secs_f64()
        );
    }
}
