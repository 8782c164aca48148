//! The block plan, by property: whatever the offenders and the ledger, the
//! sets never hold an allow-listed address, hold exactly the active blocks
//! (less what did not fit, which is reported), never overflow, and a second
//! identical run changes nothing. Plus expiry, escalation and the breaker.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use floodgate_responder::detect::Offender;
use floodgate_responder::ledger::LedgerState;
use floodgate_responder::plan::{Capacity, plan};
use floodgate_rules::Policy;
use floodgate_rules::cidr::exclude;
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use time::macros::date;

const POLICY: &str = r#"
[safety]
max_new_blocks_per_run = MAX_NEW

# IPv6 keys of 1024 addresses: four in the generated range, one of them
# around the v6 office's /120, which its blocks must cut out.
[detection]
ipv6_prefix = 118

[[tiers]]
name = "watch"
requests = 1000
window_seconds = 300
action = "observe"

[[tiers]]
name = "block"
requests = 2000
window_seconds = 300
action = "block"
block_minutes = 15
escalation = { factor = 4, max_minutes = 1440 }

[[tiers]]
name = "block-24h"
requests = 5000
window_seconds = 300
action = "block"
block_minutes = 1440

[[allow]]
cidr = "10.0.1.0/24"
reason = "office"
owner = "netops"
expires = 2030-01-01

[[allow]]
cidr = "10.0.2.0/28"
reason = "partner NAT, raised threshold"
owner = "netops"
expires = 2030-01-01
requests = 20000

[[allow]]
cidr = "2001:db8::100/120"
reason = "v6 office"
owner = "netops"
expires = 2030-01-01

[[allow]]
cidr = "2001:db8::240/124"
reason = "v6 partner, raised threshold, inside a /118 key"
owner = "netops"
expires = 2030-01-01
requests = 20000
"#;

const NOW: i64 = 1_795_168_800_000;
const CAPACITY: Capacity = Capacity {
    ipv4_sets: 2,
    ipv6_sets: 1,
    per_set: 16,
};

fn policy(max_new: u32) -> Policy {
    Policy::from_toml(
        &POLICY.replace("MAX_NEW", &max_new.to_string()),
        "plan.toml",
        date!(2026 - 11 - 22),
    )
    .unwrap()
    .policy
}

fn ip(v4: bool, offset: u32) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + offset % 4096))
    } else {
        IpAddr::V6(Ipv6Addr::from_bits(
            0x2001_0db8_u128 << 96 | u128::from(offset % 4096),
        ))
    }
}

/// The offender that `ip`'s key is, as detection reports it.
fn offender(policy: &Policy, ip: IpAddr, requests: u32, tier: Option<usize>) -> Offender {
    let net = policy.prefixes.key(ip);
    Offender {
        net,
        addresses: 1,
        addresses_at_least: false,
        requests,
        tier: tier.map(|t| policy.tiers[t].name.clone()),
        actions: Vec::new(),
        allow_entry: policy.allow.find_containing(net),
    }
}

fn offenders(policy: &Policy) -> impl Strategy<Value = Vec<Offender>> + '_ {
    prop::collection::vec(
        (
            any::<bool>(),
            0u32..4096,
            1u32..50_000,
            prop::option::of(0usize..3),
        ),
        0..120,
    )
    .prop_map(move |list| {
        let mut seen = BTreeSet::new();
        list.into_iter()
            .filter(|&(v4, offset, _, _)| seen.insert(policy.prefixes.key(ip(v4, offset))))
            .map(|(v4, offset, requests, tier)| offender(policy, ip(v4, offset), requests, tier))
            .collect()
    })
}

/// The plan of a first run at `NOW`, with an empty ledger.
fn first_plan(offenders: &[Offender], policy: &Policy) -> floodgate_responder::plan::BlockPlan {
    plan(
        offenders,
        policy,
        &LedgerState::default(),
        NOW,
        "test",
        CAPACITY,
    )
}

fn all_addresses() -> impl Iterator<Item = IpAddr> {
    (0..4096)
        .map(|o| ip(true, o))
        .chain((0..4096).map(|o| ip(false, o)))
}

fn in_sets(sets: &[Vec<IpNet>], ip: IpAddr) -> bool {
    sets.iter().flatten().any(|n| n.contains(&ip))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sets_hold_exactly_the_active_blocks_and_never_an_exception(
        max_new in 1u32..80,
        rounds in prop::collection::vec(Just(()), 1..3),
        earlier in prop::collection::vec((any::<bool>(), 0u32..4096, 0u8..5), 0..60),
    ) {
        let policy = policy(max_new);
        let exceptions: Vec<IpNet> = ["10.0.1.0/24", "2001:db8::100/120"].iter().map(|s| s.parse().unwrap()).collect();
        let raised: IpNet = "2001:db8::240/124".parse().unwrap();
        // Blocks from earlier runs, some now inside exceptions (blocked before
        // the exception existed) and some ranges that overlap them.
        let mut ledger = LedgerState::default();
        for (v4, offset, widen) in earlier {
            let net = IpNet::new(ip(v4, offset), if v4 { 32 - widen } else { 128 - widen }).unwrap().trunc();
            // An entry as the plan writes it, moved to the generated range.
            let first = plan(&[offender(&policy, ip(true, 9), 3000, Some(1))], &policy, &LedgerState::default(), NOW - 60_000, "earlier", CAPACITY);
            let mut entry = first.ledger.entries.into_values().next().unwrap();
            entry.net = net;
            ledger.entries.insert(net, entry);
        }
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for (round, ()) in rounds.iter().enumerate() {
            let now = NOW + round as i64 * 60_000;
            let offenders = offenders(&policy).new_tree(&mut runner).unwrap().current();
            let planned = plan(&offenders, &policy, &ledger, now, "test", CAPACITY);
            // Capacity: never more sets or addresses per set than declared.
            prop_assert_eq!(planned.ipv4.len(), 2);
            prop_assert_eq!(planned.ipv6.len(), 1);
            prop_assert!(planned.ipv4.iter().chain(&planned.ipv6).all(|s| s.len() <= 16));
            // Breaker.
            prop_assert!(planned.added.len() <= max_new as usize);
            // Exactly the active blocks, less the exceptions and the dropped.
            let kept: Vec<IpNet> = planned.ledger.active(now).map(|e| e.net).filter(|n| !planned.dropped.contains(n)).collect();
            // Each block less the full exceptions, and less the raised one
            // where it is strictly inside the block.
            let expected: Vec<IpNet> = kept
                .iter()
                .flat_map(|net| {
                    let nested = (net.contains(&raised) && net.prefix_len() < raised.prefix_len()).then_some(raised);
                    let cut: Vec<IpNet> = exceptions.iter().copied().chain(nested).collect();
                    exclude(&[*net], &cut)
                })
                .collect();
            let sets: Vec<Vec<IpNet>> = planned.ipv4.iter().chain(&planned.ipv6).cloned().collect();
            for address in all_addresses() {
                let listed = in_sets(&sets, address);
                prop_assert_eq!(listed, expected.iter().any(|n| n.contains(&address)), "{}", address);
                prop_assert!(!(listed && exceptions.iter().any(|x| x.contains(&address))), "exception {} in a set", address);
                // The raised exception's addresses are only ever blocked by
                // a key inside it, which detection held to its threshold.
                if listed && raised.contains(&address) {
                    prop_assert!(kept.iter().any(|n| raised.contains(n) && n.contains(&address)), "raised exception {} in a set", address);
                }
            }
            // A second identical run changes nothing (unless the breaker held
            // blocks back, which the second run may then add).
            if planned.held_back.is_empty() {
                let again = plan(&offenders, &policy, &planned.ledger, now, "test", CAPACITY);
                prop_assert_eq!(&again.ipv4, &planned.ipv4);
                prop_assert_eq!(&again.ipv6, &planned.ipv6);
                prop_assert!(again.added.is_empty());
            }
            ledger = planned.ledger;
        }
    }
}

#[test]
fn blocks_expire_exactly_on_time_and_repeat_offenders_escalate() {
    let policy = policy(100);
    let attacker = ip(true, 7);
    let first = plan(
        &[offender(&policy, attacker, 2500, Some(1))],
        &policy,
        &LedgerState::default(),
        NOW,
        "eu-west-1",
        CAPACITY,
    );
    assert_eq!(first.added, [IpNet::from(attacker)]);
    let entry = &first.ledger.entries[&IpNet::from(attacker)];
    assert_eq!(entry.expires_at_ms, NOW + 15 * 60_000);
    assert_eq!((entry.offences, entry.source.as_str()), (1, "eu-west-1"));
    // One millisecond before expiry it is still blocked; at expiry it is not.
    let before = plan(
        &[],
        &policy,
        &first.ledger,
        NOW + 15 * 60_000 - 1,
        "eu-west-1",
        CAPACITY,
    );
    assert!(in_sets(&before.ipv4, attacker));
    let after = plan(
        &[],
        &policy,
        &before.ledger,
        NOW + 15 * 60_000,
        "eu-west-1",
        CAPACITY,
    );
    assert!(!in_sets(&after.ipv4, attacker));
    assert_eq!(after.expired, [IpNet::from(attacker)]);
    // Back again: the second offence is blocked 4 times longer.
    let later = NOW + 3_600_000;
    let second = plan(
        &[offender(&policy, attacker, 2100, Some(1))],
        &policy,
        &after.ledger,
        later,
        "eu-west-1",
        CAPACITY,
    );
    let entry = &second.ledger.entries[&IpNet::from(attacker)];
    assert_eq!(
        (entry.offences, entry.expires_at_ms),
        (2, later + 60 * 60_000)
    );
    assert_eq!(entry.first_seen_ms, NOW);
    // Still active while blocked: extended, not escalated.
    let third = plan(
        &[offender(&policy, attacker, 2100, Some(1))],
        &policy,
        &second.ledger,
        later + 30 * 60_000,
        "eu-west-1",
        CAPACITY,
    );
    assert_eq!(third.extended, [IpNet::from(attacker)]);
    let entry = &third.ledger.entries[&IpNet::from(attacker)];
    assert_eq!(
        (entry.offences, entry.expires_at_ms),
        (2, later + 90 * 60_000)
    );
}

#[test]
fn the_circuit_breaker_keeps_the_worst_offenders() {
    let policy = policy(2);
    let offenders = [
        offender(&policy, ip(true, 1), 2100, Some(1)),
        offender(&policy, ip(true, 2), 9000, Some(2)),
        offender(&policy, ip(true, 3), 2500, Some(1)),
        offender(&policy, ip(true, 4), 1500, Some(0)),
    ];
    let planned = first_plan(&offenders, &policy);
    assert_eq!(
        planned.added,
        [IpNet::from(ip(true, 2)), IpNet::from(ip(true, 3))]
    );
    assert_eq!(planned.held_back, [IpNet::from(ip(true, 1))]);
    assert!(planned.breaker_tripped());
}

#[test]
fn an_allow_listed_block_leaves_the_sets_and_is_reported() {
    // Blocked before the office range was allow-listed.
    let policy = policy(100);
    let office = ip(true, 256 + 9); // 10.0.1.9
    let mut ledger = plan(
        &[offender(&policy, ip(true, 9), 3000, Some(1))],
        &policy,
        &LedgerState::default(),
        NOW,
        "test",
        CAPACITY,
    )
    .ledger;
    let mut entry = ledger.entries.values().next().unwrap().clone();
    entry.net = IpNet::from(office);
    ledger.entries.insert(entry.net, entry);
    let planned = plan(&[], &policy, &ledger, NOW + 1, "test", CAPACITY);
    assert!(!in_sets(&planned.ipv4, office));
    assert!(in_sets(&planned.ipv4, ip(true, 9)));
    assert_eq!(planned.allow_listed, [IpNet::from(office)]);
}

#[test]
fn past_every_set_the_least_severe_are_dropped_and_reported() {
    let policy = policy(1000);
    // 40 scattered IPv4 attackers for 2 sets of 16: 32 fit.
    let offenders: Vec<Offender> = (0..40)
        .map(|i| {
            offender(
                &policy,
                ip(true, 2048 + i * 2),
                2000 + i,
                Some(if i < 10 { 2 } else { 1 }),
            )
        })
        .collect();
    let planned = first_plan(&offenders, &policy);
    assert_eq!(
        planned.ipv4.iter().map(Vec::len).collect::<Vec<_>>(),
        [16, 16]
    );
    assert_eq!(planned.dropped.len(), 8);
    // The 24 h tier's ten all made it; the dropped are the least active of the rest.
    for i in 0..10 {
        assert!(in_sets(&planned.ipv4, ip(true, 2048 + i * 2)));
    }
    for i in 10..18 {
        assert!(
            planned
                .dropped
                .contains(&IpNet::from(ip(true, 2048 + i * 2)))
        );
    }
}

#[test]
fn a_lost_ledger_adopts_what_the_sets_hold_and_a_known_one_reports_strangers() {
    let policy = policy(100);
    let found = vec![IpNet::from(ip(true, 9)), "198.18.0.0/24".parse().unwrap()];
    let mut lost = LedgerState::default();
    let adopted = floodgate_responder::plan::adopt(&mut lost, &found, &policy, NOW, "lost");
    assert_eq!(adopted, found);
    // Adopted blocks last the lowest block tier's duration, then expire as usual.
    let planned = plan(&[], &policy, &lost, NOW + 60_000, "test", CAPACITY);
    assert!(in_sets(&planned.ipv4, ip(true, 9)));
    assert_eq!(lost.entries[&found[1]].expires_at_ms, NOW + 15 * 60_000);
    // With a ledger that has entries, the cycle adopts nothing: strangers
    // are reported and removed.
    let known = plan(
        &[offender(&policy, ip(true, 5), 3000, Some(1))],
        &policy,
        &LedgerState::default(),
        NOW,
        "test",
        CAPACITY,
    )
    .ledger;
    assert_eq!(
        floodgate_responder::plan::unknown_entries(&known, &found),
        found
    );
    let planned = plan(&[], &policy, &known, NOW + 1, "test", CAPACITY);
    assert!(!in_sets(&planned.ipv4, ip(true, 9)));
}

#[test]
fn observe_mode_is_carried_to_the_caller() {
    let observe = Policy::from_toml(
        &POLICY
            .replace("MAX_NEW", "5")
            .replace("[safety]", "[safety]\nmode = \"observe\""),
        "p.toml",
        date!(2026 - 11 - 22),
    )
    .unwrap()
    .policy;
    let planned = plan(
        &[offender(&observe, ip(true, 5), 3000, Some(1))],
        &observe,
        &LedgerState::default(),
        NOW,
        "test",
        CAPACITY,
    );
    assert!(planned.observe_only);
    // The plan itself is computed in full, for the report.
    assert_eq!(planned.added, [IpNet::from(ip(true, 5))]);
    assert!(
        !plan(
            &[],
            &policy(5),
            &LedgerState::default(),
            NOW,
            "test",
            CAPACITY
        )
        .observe_only
    );
}

#[test]
fn aggregated_prefixes_in_the_sets_are_not_strangers() {
    let policy = policy(100);
    let offenders: Vec<Offender> = (0..4)
        .map(|i| offender(&policy, ip(true, 2048 + i), 3000, Some(1)))
        .collect();
    let planned = first_plan(&offenders, &policy);
    // 10.0.8.0 to .3 went out as one /30.
    assert_eq!(planned.ipv4[0], ["10.0.8.0/30".parse::<IpNet>().unwrap()]);
    assert!(
        floodgate_responder::plan::unknown_entries(&planned.ledger, &planned.ipv4[0]).is_empty()
    );
    let stranger: IpNet = "10.0.8.0/29".parse().unwrap();
    assert_eq!(
        floodgate_responder::plan::unknown_entries(&planned.ledger, &[stranger]),
        [stranger]
    );
}
