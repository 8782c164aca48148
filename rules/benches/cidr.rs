//! CIDR lookup and aggregation over 100k prefixes.
//!
//! `cargo bench -p floodgate-rules --bench cidr`
//!
//! Anchors in the same run: a per-prefix-length hash-set lookup (the usual
//! simple longest-prefix match) and `ipnet`'s own `aggregate`.

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floodgate_rules::cidr::{PrefixMap, aggregate_v4, aggregate_v6};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const PREFIXES: usize = 100_000;
const QUERIES: usize = 4096;

/// A small deterministic generator, so every run measures the same data.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn v4_prefixes(rng: &mut XorShift) -> Vec<Ipv4Net> {
    (0..PREFIXES)
        .map(|_| {
            let len = 16 + (rng.next() % 17) as u8;
            Ipv4Net::new(Ipv4Addr::from_bits(rng.next() as u32), len)
                .unwrap()
                .trunc()
        })
        .collect()
}

fn v6_prefixes(rng: &mut XorShift) -> Vec<Ipv6Net> {
    (0..PREFIXES)
        .map(|_| {
            let len = 32 + (rng.next() % 33) as u8;
            // Global unicast, 2000::/3, where real traffic comes from.
            let bits =
                (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | (1u128 << 125);
            Ipv6Net::new(Ipv6Addr::from_bits(bits), len)
                .unwrap()
                .trunc()
        })
        .collect()
}

/// Half the queries fall inside a listed prefix, half anywhere.
fn queries(rng: &mut XorShift, nets: &[IpNet]) -> Vec<IpAddr> {
    (0..QUERIES)
        .map(|i| {
            let net = nets[rng.next() as usize % nets.len()];
            match (net, i % 2 == 0) {
                (IpNet::V4(n), true) => IpAddr::V4(Ipv4Addr::from_bits(
                    n.network().to_bits() | (rng.next() as u32 & !n.netmask().to_bits()),
                )),
                (IpNet::V4(_), false) => IpAddr::V4(Ipv4Addr::from_bits(rng.next() as u32)),
                (IpNet::V6(n), true) => IpAddr::V6(Ipv6Addr::from_bits(
                    n.network().to_bits() | (u128::from(rng.next()) & !n.netmask().to_bits()),
                )),
                (IpNet::V6(_), false) => IpAddr::V6(Ipv6Addr::from_bits(
                    (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | (1u128 << 125),
                )),
            }
        })
        .collect()
}

/// The usual simple longest-prefix match: one hash set per prefix length,
/// probed from the longest length down.
struct HashPerLength {
    lengths: Vec<u8>,
    sets: Vec<HashSet<IpNet>>,
}

impl HashPerLength {
    fn new(nets: &[IpNet]) -> Self {
        let mut lengths: Vec<u8> = nets.iter().map(IpNet::prefix_len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        let sets = lengths
            .iter()
            .map(|&len| {
                nets.iter()
                    .filter(|n| n.prefix_len() == len)
                    .copied()
                    .collect()
            })
            .collect();
        HashPerLength { lengths, sets }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.lengths
            .iter()
            .zip(&self.sets)
            .any(|(&len, set)| set.contains(&IpNet::new(ip, len).unwrap().trunc()))
    }
}

fn lookup(c: &mut Criterion) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let families: [(&str, Vec<IpNet>); 2] = [
        (
            "v4",
            v4_prefixes(&mut rng).into_iter().map(IpNet::V4).collect(),
        ),
        (
            "v6",
            v6_prefixes(&mut rng).into_iter().map(IpNet::V6).collect(),
        ),
    ];
    let mut group = c.benchmark_group("lookup_100k");
    group.throughput(Throughput::Elements(QUERIES as u64));
    for (family, nets) in &families {
        let queries = queries(&mut rng, nets);
        let map = PrefixMap::new(nets);
        let anchor = HashPerLength::new(nets);
        // The two must agree before their speeds are compared.
        assert!(
            queries
                .iter()
                .all(|&ip| map.contains(ip) == anchor.contains(ip))
        );
        group.bench_function(format!("prefix_map_{family}"), |b| {
            b.iter(|| {
                queries
                    .iter()
                    .filter(|&&ip| black_box(&map).lookup(ip).is_some())
                    .count()
            })
        });
        group.bench_function(format!("hash_per_length_{family}"), |b| {
            b.iter(|| {
                queries
                    .iter()
                    .filter(|&&ip| black_box(&anchor).contains(ip))
                    .count()
            })
        });
    }
    group.finish();
}

fn aggregation(c: &mut Criterion) {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let v4 = v4_prefixes(&mut rng);
    let v6 = v6_prefixes(&mut rng);
    assert_eq!(aggregate_v4(&v4), Ipv4Net::aggregate(&v4));
    assert_eq!(aggregate_v6(&v6), Ipv6Net::aggregate(&v6));
    let mut group = c.benchmark_group("aggregate_100k");
    group.throughput(Throughput::Elements(PREFIXES as u64));
    group.sample_size(20);
    group.bench_function("floodgate_v4", |b| b.iter(|| aggregate_v4(black_box(&v4))));
    group.bench_function("ipnet_v4", |b| {
        b.iter(|| Ipv4Net::aggregate(black_box(&v4)))
    });
    group.bench_function("floodgate_v6", |b| b.iter(|| aggregate_v6(black_box(&v6))));
    group.bench_function("ipnet_v6", |b| {
        b.iter(|| Ipv6Net::aggregate(black_box(&v6)))
    });
    group.finish();
}

criterion_group!(benches, lookup, aggregation);
criterion_main!(benches);
