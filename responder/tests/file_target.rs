//! The file target: UpdateIPSet-shaped JSON per set, written only on change.

use floodgate_responder::sink::file::{FileTarget, IpSetFile};
use floodgate_responder::sink::{DesiredSets, Outcome, WafTarget};
use ipnet::IpNet;

#[tokio::test]
async fn writes_update_ip_set_shaped_files_only_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let target = FileTarget::new(
        dir.path().join("ip-sets"),
        vec!["fg-v4".into(), "fg-v4-2".into()],
        vec!["fg-v6".into()],
    );
    let desired = DesiredSets {
        ipv4: vec![vec!["203.0.113.66/32".parse::<IpNet>().unwrap()], vec![]],
        ipv6: vec![vec!["2001:db8:bad::/64".parse().unwrap()]],
        ..Default::default()
    };
    assert_eq!(
        target.apply(&desired).await.outcome,
        Outcome::Updated {
            added: 2,
            removed: 0
        }
    );
    let file: IpSetFile =
        serde_json::from_slice(&std::fs::read(dir.path().join("ip-sets/fg-v6.json")).unwrap())
            .unwrap();
    assert_eq!(
        file,
        IpSetFile {
            name: "fg-v6".into(),
            scope: "REGIONAL".into(),
            ip_address_version: "IPV6".into(),
            addresses: vec!["2001:db8:bad::/64".into()]
        }
    );
    let raw = std::fs::read_to_string(dir.path().join("ip-sets/fg-v4.json")).unwrap();
    assert!(
        raw.contains("\"Addresses\"") && raw.contains("\"IPAddressVersion\": \"IPV4\""),
        "{raw}"
    );
    let modified = std::fs::metadata(dir.path().join("ip-sets/fg-v4.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(target.apply(&desired).await.outcome, Outcome::Unchanged);
    assert_eq!(
        std::fs::metadata(dir.path().join("ip-sets/fg-v4.json"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    let mut read = target.read().await.unwrap().nets;
    read.sort();
    assert_eq!(read.len(), 2);
    assert_eq!(
        target.apply(&DesiredSets::default()).await.outcome,
        Outcome::Updated {
            added: 0,
            removed: 2
        }
    );
}

/// A first run with nothing to block still creates every set file, and
/// says so rather than "unchanged" (issue 35).
#[tokio::test]
async fn a_first_run_with_nothing_to_block_reports_the_sets_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let target = FileTarget::new(
        dir.path().join("ip-sets"),
        vec!["fg-v4".into()],
        vec!["fg-v6".into()],
    );
    let report = target.apply(&DesiredSets::default()).await;
    assert_eq!(report.outcome, Outcome::Created { sets: 2 });
    assert_eq!(report.outcome.to_string(), "created 2 empty sets");
    assert!(dir.path().join("ip-sets/fg-v6.json").exists());
    assert_eq!(
        target.apply(&DesiredSets::default()).await.outcome,
        Outcome::Unchanged
    );
}
