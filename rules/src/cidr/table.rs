//! Longest-prefix lookup over a fixed set of prefixes.
//!
//! CIDR prefixes are either nested or disjoint, so the address space splits
//! into consecutive segments, each owned by the most specific prefix that
//! covers it (or by none). The table stores the segment starts in one sorted
//! array; a lookup is one binary search. A first-level index on the top 16
//! bits narrows the search to the few segments that share them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::bits::Bits;

/// Marks a segment that no prefix covers.
const NONE: u32 = u32::MAX;

/// Maps an address to the most specific of a list of prefixes that contains
/// it, IPv4 and IPv6 alike.
///
/// Built once, then read concurrently; a lookup does not allocate.
#[derive(Debug, Clone, Default)]
pub struct PrefixMap {
    v4: Table<u32>,
    v6: Table<u128>,
}

impl PrefixMap {
    /// Builds the map. A lookup answers with the index into `prefixes` of
    /// the most specific prefix that contains the address; among identical
    /// prefixes, the first one listed.
    ///
    /// # Panics
    ///
    /// If there are `u32::MAX` prefixes or more.
    pub fn new(prefixes: &[IpNet]) -> Self {
        assert!(
            prefixes.len() < NONE as usize,
            "too many prefixes for a PrefixMap"
        );
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (index, net) in prefixes.iter().enumerate() {
            let index = index as u32;
            match net {
                IpNet::V4(net) => v4.push((u32::range_of(net), index)),
                IpNet::V6(net) => v6.push((u128::range_of(net), index)),
            }
        }
        PrefixMap {
            v4: Table::new(v4),
            v6: Table::new(v6),
        }
    }

    /// Index of the most specific prefix that contains `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(ip) => self.lookup_v4(ip),
            IpAddr::V6(ip) => self.lookup_v6(ip),
        }
    }

    /// [`PrefixMap::lookup`] for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, ip: Ipv4Addr) -> Option<usize> {
        self.v4.lookup(ip.to_bits())
    }

    /// [`PrefixMap::lookup`] for an IPv6 address. An IPv4-mapped address
    /// (`::ffff:a.b.c.d`) is looked up as the IPv4 address it carries.
    #[inline]
    pub fn lookup_v6(&self, ip: Ipv6Addr) -> Option<usize> {
        match ip.to_ipv4_mapped() {
            Some(v4) => self.lookup_v4(v4),
            None => self.v6.lookup(ip.to_bits()),
        }
    }

    /// Whether any prefix contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some()
    }
}

/// Segments of one address family.
#[derive(Debug, Clone)]
struct Table<A: Bits> {
    /// Sorted segment starts; `starts[0]` is always the lowest address.
    starts: Vec<A>,
    /// `owners[i]` owns `starts[i]..starts[i + 1]`; `NONE` for no prefix.
    owners: Vec<u32>,
    /// `index[k]` is the first segment whose start has top 16 bits `>= k`;
    /// it has 2^16 + 1 entries, or none when the table is small.
    index: Vec<u32>,
}

impl<A: Bits> Default for Table<A> {
    fn default() -> Self {
        Table {
            starts: vec![A::ZERO],
            owners: vec![NONE],
            index: Vec::new(),
        }
    }
}

/// Below this many segments a plain binary search is as fast as the index.
const INDEX_THRESHOLD: usize = 256;
const INDEX_BITS: u32 = 16;

impl<A: Bits> Table<A> {
    fn new(mut prefixes: Vec<((A, A), u32)>) -> Self {
        // Outer prefixes before the ones they contain; among identical
        // prefixes the first listed comes last, so it wins the segment.
        prefixes.sort_unstable_by(|((s1, e1), i1), ((s2, e2), i2)| {
            s1.cmp(s2).then(e2.cmp(e1)).then(i2.cmp(i1))
        });
        let mut table = Table::default();
        // Prefixes that contain the current position, innermost last.
        let mut open: Vec<(A, u32)> = Vec::new();
        for ((first, last), owner) in prefixes {
            table.close_before(&mut open, Some(first));
            table.start_segment(first, owner);
            open.push((last, owner));
        }
        table.close_before(&mut open, None);
        table.build_index();
        table
    }

    /// Closes the open prefixes that end before `position` (all of them for
    /// `None`), starting a segment for whichever prefix is then innermost.
    fn close_before(&mut self, open: &mut Vec<(A, u32)>, position: Option<A>) {
        while let Some(&(last, _)) = open.last() {
            if position.is_some_and(|p| last >= p) {
                return;
            }
            open.pop();
            if let Some(after) = last.checked_succ() {
                let owner = open.last().map_or(NONE, |&(_, owner)| owner);
                self.start_segment(after, owner);
            }
        }
    }

    fn start_segment(&mut self, start: A, owner: u32) {
        let last = self.starts.len() - 1;
        if self.starts[last] == start {
            // A more specific prefix starts at the same address.
            self.owners[last] = owner;
            if last > 0 && self.owners[last - 1] == owner {
                self.starts.pop();
                self.owners.pop();
            }
        } else if self.owners[last] != owner {
            self.starts.push(start);
            self.owners.push(owner);
        }
    }

    fn build_index(&mut self) {
        if self.starts.len() < INDEX_THRESHOLD {
            return;
        }
        let shift = A::BITS - INDEX_BITS;
        let mut index = Vec::with_capacity((1 << INDEX_BITS) + 1);
        let mut segment = 0usize;
        for bucket in 0..(1u32 << INDEX_BITS) {
            while segment < self.starts.len() && self.starts[segment].top_bits(shift) < bucket {
                segment += 1;
            }
            index.push(segment as u32);
        }
        index.push(self.starts.len() as u32);
        self.index = index;
    }

    #[inline]
    fn lookup(&self, address: A) -> Option<usize> {
        let segment = if self.index.is_empty() {
            self.starts.partition_point(|&s| s <= address) - 1
        } else {
            let bucket = address.top_bits(A::BITS - INDEX_BITS) as usize;
            let from = self.index[bucket] as usize;
            let to = self.index[bucket + 1] as usize;
            // Segments starting in this bucket at or before the address; if
            // none, the segment that started in an earlier bucket owns it.
            from + self.starts[from..to].partition_point(|&s| s <= address) - 1
        };
        match self.owners[segment] {
            NONE => None,
            owner => Some(owner as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(list: &[&str]) -> PrefixMap {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        PrefixMap::new(&nets)
    }

    #[test]
    fn most_specific_prefix_wins() {
        let m = map(&["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "2001:db8::/32"]);
        assert_eq!(m.lookup("10.200.0.1".parse().unwrap()), Some(0));
        assert_eq!(m.lookup("10.1.9.9".parse().unwrap()), Some(1));
        assert_eq!(m.lookup("10.1.2.3".parse().unwrap()), Some(2));
        assert_eq!(m.lookup("10.1.2.4".parse().unwrap()), Some(1));
        assert_eq!(m.lookup("11.0.0.0".parse().unwrap()), None);
        assert_eq!(m.lookup("2001:db8:1::1".parse().unwrap()), Some(3));
        assert_eq!(m.lookup("2001:db9::1".parse().unwrap()), None);
    }

    #[test]
    fn first_of_identical_prefixes_wins() {
        let m = map(&["192.0.2.0/24", "192.0.2.0/24"]);
        assert_eq!(m.lookup("192.0.2.9".parse().unwrap()), Some(0));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
        let m = map(&["192.0.2.0/24"]);
        assert_eq!(m.lookup("::ffff:192.0.2.9".parse().unwrap()), Some(0));
    }

    #[test]
    fn covers_the_edges_of_the_address_space() {
        let m = map(&["0.0.0.0/0", "255.255.255.255/32", "::/0"]);
        assert_eq!(m.lookup("0.0.0.0".parse().unwrap()), Some(0));
        assert_eq!(m.lookup("255.255.255.255".parse().unwrap()), Some(1));
        assert_eq!(m.lookup("ffff::1".parse().unwrap()), Some(2));
    }

    #[test]
    fn empty_map_finds_nothing() {
        let m = PrefixMap::new(&[]);
        assert!(!m.contains("1.2.3.4".parse().unwrap()));
        assert!(!m.contains("::1".parse().unwrap()));
    }
}
