//! Exact CIDR aggregation: the fewest prefixes that cover exactly the
//! addresses of the input, never one address more.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::bits::Bits;

/// Collapses adjacent and contained prefixes of both families.
///
/// The result covers exactly the input's addresses, is sorted (IPv4 first)
/// and is the smallest such list of prefixes.
pub fn aggregate(nets: &[IpNet]) -> Vec<IpNet> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in nets {
        match net {
            IpNet::V4(net) => v4.push(*net),
            IpNet::V6(net) => v6.push(*net),
        }
    }
    let mut out: Vec<IpNet> = aggregate_v4(&v4).into_iter().map(IpNet::V4).collect();
    out.extend(aggregate_v6(&v6).into_iter().map(IpNet::V6));
    out
}

/// [`aggregate`] for IPv4 only.
pub fn aggregate_v4(nets: &[Ipv4Net]) -> Vec<Ipv4Net> {
    aggregate_family::<u32>(nets)
}

/// [`aggregate`] for IPv6 only.
pub fn aggregate_v6(nets: &[Ipv6Net]) -> Vec<Ipv6Net> {
    aggregate_family::<u128>(nets)
}

/// The addresses of `nets` that no prefix of `excluded` covers, as the
/// fewest prefixes, sorted (IPv4 first). Exact, like [`aggregate`].
pub fn exclude(nets: &[IpNet], excluded: &[IpNet]) -> Vec<IpNet> {
    let split = |list: &[IpNet]| -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in list {
            match net {
                IpNet::V4(net) => v4.push(*net),
                IpNet::V6(net) => v6.push(*net),
            }
        }
        (v4, v6)
    };
    let ((v4, v6), (ex4, ex6)) = (split(nets), split(excluded));
    let mut out: Vec<IpNet> = exclude_family::<u32>(&v4, &ex4)
        .into_iter()
        .map(IpNet::V4)
        .collect();
    out.extend(exclude_family::<u128>(&v6, &ex6).into_iter().map(IpNet::V6));
    out
}

fn exclude_family<A: Bits>(nets: &[A::Net], excluded: &[A::Net]) -> Vec<A::Net> {
    let holes = merged_ranges::<A>(excluded);
    let mut out = Vec::new();
    let mut hole = 0;
    for (mut first, last) in merged_ranges::<A>(nets) {
        // Holes are sorted and disjoint: walk them alongside the ranges.
        while hole < holes.len() && holes[hole].1 < first {
            hole += 1;
        }
        let mut h = hole;
        loop {
            match holes.get(h) {
                Some(&(hole_first, hole_last)) if hole_first <= last => {
                    if first < hole_first {
                        // The part before the hole survives.
                        let before = hole_first.checked_pred().expect("hole_first > first >= 0");
                        push_range_as_prefixes(first, before, &mut out);
                    }
                    match hole_last.checked_succ() {
                        Some(after) if hole_last < last => {
                            first = after;
                            h += 1;
                        }
                        _ => break,
                    }
                }
                _ => {
                    push_range_as_prefixes(first, last, &mut out);
                    break;
                }
            }
        }
    }
    out
}

fn aggregate_family<A: Bits>(nets: &[A::Net]) -> Vec<A::Net> {
    let mut out = Vec::new();
    for (first, last) in merged_ranges::<A>(nets) {
        push_range_as_prefixes(first, last, &mut out);
    }
    out
}

/// The inclusive address ranges of `nets`, sorted, with overlapping and
/// touching ranges merged.
fn merged_ranges<A: Bits>(nets: &[A::Net]) -> Vec<(A, A)> {
    let mut ranges: Vec<(A, A)> = nets.iter().map(A::range_of).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(A, A)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some((_, end)) if end.checked_succ().is_none_or(|next| first <= next) => {
                *end = (*end).max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// Appends the fewest prefixes that cover exactly `first..=last`.
fn push_range_as_prefixes<A: Bits>(mut first: A, last: A, out: &mut Vec<A::Net>) {
    loop {
        // The block at `first` may be as large as its alignment allows...
        let aligned_bits = first.trailing_zeros();
        // ...and as the remaining range allows: floor(log2(last - first + 1)).
        let remaining_minus_one = last.minus(first);
        let fitting_bits = match remaining_minus_one.checked_succ() {
            Some(remaining) => A::BITS - 1 - remaining.leading_zeros(),
            None => A::BITS,
        };
        let bits = aligned_bits.min(fitting_bits);
        out.push(first.net(A::BITS - bits));
        let end = first.block_end(bits);
        match end.checked_succ() {
            Some(next) if end < last => first = next,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn merges_siblings_and_drops_contained() {
        let out = aggregate(&nets(&[
            "10.0.0.0/25",
            "10.0.0.128/25",
            "10.0.0.7/32",
            "192.168.1.0/24",
            "192.168.0.0/24",
        ]));
        assert_eq!(out, nets(&["10.0.0.0/24", "192.168.0.0/23"]));
    }

    #[test]
    fn never_covers_addresses_outside_the_input() {
        // 10.0.1.0/24 + 10.0.2.0/24 are adjacent but not a /23 (not aligned).
        let out = aggregate(&nets(&["10.0.1.0/24", "10.0.2.0/24"]));
        assert_eq!(out, nets(&["10.0.1.0/24", "10.0.2.0/24"]));
    }

    #[test]
    fn exclusion_cuts_holes_exactly() {
        let out = exclude(
            &nets(&["10.0.0.0/24", "2001:db8::/126"]),
            &nets(&["10.0.0.128/25", "10.0.0.7/32", "2001:db8::1/128"]),
        );
        assert_eq!(
            out,
            nets(&[
                "10.0.0.0/30",
                "10.0.0.4/31",
                "10.0.0.6/32",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26",
                "2001:db8::/128",
                "2001:db8::2/127"
            ])
        );
        assert_eq!(
            exclude(&nets(&["0.0.0.0/0"]), &nets(&["0.0.0.0/0"])),
            Vec::<IpNet>::new()
        );
        assert_eq!(
            exclude(&nets(&["192.0.2.0/24"]), &[]),
            nets(&["192.0.2.0/24"])
        );
    }

    #[test]
    fn handles_the_edges_of_the_address_space() {
        assert_eq!(
            aggregate(&nets(&["0.0.0.0/1", "128.0.0.0/1"])),
            nets(&["0.0.0.0/0"])
        );
        assert_eq!(
            aggregate(&nets(&["255.255.255.255/32", "255.255.255.254/32"])),
            nets(&["255.255.255.254/31"])
        );
        assert_eq!(aggregate(&nets(&["::/1", "8000::/1"])), nets(&["::/0"]));
        assert_eq!(
            aggregate(&nets(&[
                "2001:db8::1/128",
                "2001:db8::/128",
                "203.0.113.9/32"
            ])),
            nets(&["203.0.113.9/32", "2001:db8::/127"])
        );
    }
}
