//! Property tests: aggregation is exact and minimal, and the prefix map
//! agrees with a naive scan, for IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use floodgate_rules::cidr::{PrefixMap, aggregate};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

/// IPv4 prefixes inside 10.0.0.0/20, small enough to check every address.
fn small_v4() -> impl Strategy<Value = IpNet> {
    (20u8..=32, 0u32..4096).prop_map(|(len, offset)| {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from_bits(0x0a00_0000 + offset), len)
                .unwrap()
                .trunc(),
        )
    })
}

/// IPv6 prefixes inside 2001:db8::/116.
fn small_v6() -> impl Strategy<Value = IpNet> {
    (116u8..=128, 0u128..4096).prop_map(|(len, offset)| {
        let base: u128 = "2001:db8::".parse::<Ipv6Addr>().unwrap().to_bits();
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from_bits(base + offset), len)
                .unwrap()
                .trunc(),
        )
    })
}

/// Prefixes of any length anywhere.
fn any_prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0u8..=32, any::<u32>()).prop_map(|(len, a)| IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from_bits(a), len).unwrap().trunc()
        )),
        (0u8..=128, any::<u128>()).prop_map(|(len, a)| IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from_bits(a), len).unwrap().trunc()
        )),
    ]
}

/// Every address of the small universes.
fn universe() -> impl Iterator<Item = IpAddr> {
    let base6: u128 = "2001:db8::".parse::<Ipv6Addr>().unwrap().to_bits();
    (0u32..4096)
        .map(|o| IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + o)))
        .chain((0u128..4096).map(move |o| IpAddr::V6(Ipv6Addr::from_bits(base6 + o))))
}

/// The reference: the first of the longest prefixes that contain `ip`.
fn naive_lookup(nets: &[IpNet], ip: IpAddr) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, net) in nets.iter().enumerate() {
        if net.contains(&ip) && best.is_none_or(|b| net.prefix_len() > nets[b].prefix_len()) {
            best = Some(i);
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn aggregation_covers_exactly_the_input(nets in prop::collection::vec(prop_oneof![small_v4(), small_v6()], 0..64)) {
        let out = aggregate(&nets);
        for ip in universe() {
            let before = nets.iter().any(|n| n.contains(&ip));
            let after = out.iter().any(|n| n.contains(&ip));
            prop_assert_eq!(before, after, "{} changed membership", ip);
        }
    }

    #[test]
    fn aggregation_is_minimal_and_matches_ipnet(nets in prop::collection::vec(any_prefix(), 0..64)) {
        let out = aggregate(&nets);
        // Sorted, disjoint, no two that could merge: the same list as ipnet's
        // own aggregate, which is the minimal one.
        prop_assert_eq!(&out, &IpNet::aggregate(&nets));
        for pair in out.windows(2) {
            prop_assert!(!pair[0].contains(&pair[1]) && !pair[1].contains(&pair[0]));
        }
        prop_assert!(out.len() <= nets.len());
    }

    #[test]
    fn lookup_agrees_with_a_naive_scan(
        nets in prop::collection::vec(prop_oneof![small_v4(), small_v6()], 0..700),
    ) {
        let map = PrefixMap::new(&nets);
        for ip in universe().step_by(7) {
            prop_assert_eq!(map.lookup(ip), naive_lookup(&nets, ip), "{}", ip);
        }
    }

    #[test]
    fn lookup_agrees_with_a_naive_scan_anywhere(
        nets in prop::collection::vec(any_prefix(), 0..400),
        probes in prop::collection::vec(any::<u128>(), 64),
    ) {
        let map = PrefixMap::new(&nets);
        for (i, probe) in probes.iter().enumerate() {
            // Probe inside listed prefixes and at random.
            let ip = match (nets.get(i % nets.len().max(1)), i % 2) {
                (Some(IpNet::V4(n)), 0) => IpAddr::V4(Ipv4Addr::from_bits(n.network().to_bits() | (*probe as u32 & n.hostmask().to_bits()))),
                (Some(IpNet::V6(n)), 0) => IpAddr::V6(Ipv6Addr::from_bits(n.network().to_bits() | (probe & n.hostmask().to_bits()))),
                (_, _) if i % 4 == 1 => IpAddr::V4(Ipv4Addr::from_bits(*probe as u32)),
                _ => IpAddr::V6(Ipv6Addr::from_bits(*probe)),
            };
            prop_assert_eq!(map.lookup(ip), naive_lookup(&nets, ip), "{}", ip);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn exclusion_removes_exactly_the_excluded_addresses(
        nets in prop::collection::vec(prop_oneof![small_v4(), small_v6()], 0..32),
        excluded in prop::collection::vec(prop_oneof![small_v4(), small_v6()], 0..32),
    ) {
        let out = floodgate_rules::cidr::exclude(&nets, &excluded);
        for ip in universe() {
            let expected = nets.iter().any(|n| n.contains(&ip)) && !excluded.iter().any(|n| n.contains(&ip));
            prop_assert_eq!(out.iter().any(|n| n.contains(&ip)), expected, "{}", ip);
        }
        // Minimal, like aggregation.
        prop_assert_eq!(&out, &aggregate(&out));
    }
}
