//! How detection groups clients: the `[detection]` section and each tier's
//! own prefix lengths.
//!
//! A tier counts requests per aggregation key: a client address cut to a
//! prefix. By default an IPv4 client is its own key and an IPv6 client is
//! counted (and blocked) per /64, since an IPv6 client controls at least a
//! /64 and per-address counting does not limit it.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use toml::Spanned;

use super::check::Checker;
use super::raw::RawDetection;
use super::scope::RequestMatch;

/// Shortest IPv4 prefix a key may have: wider would block whole providers.
pub const MIN_IPV4_PREFIX: u8 = 16;
/// Shortest IPv6 prefix a key may have (a typical provider allocation).
pub const MIN_IPV6_PREFIX: u8 = 32;

/// Prefix lengths of an aggregation key, per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefixes {
    /// IPv4 prefix length, from [`MIN_IPV4_PREFIX`] to 32.
    pub ipv4: u8,
    /// IPv6 prefix length, from [`MIN_IPV6_PREFIX`] to 128.
    pub ipv6: u8,
}

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes { ipv4: 32, ipv6: 64 }
    }
}

impl Prefixes {
    /// Every address its own key, in both families.
    pub const PER_ADDRESS: Prefixes = Prefixes {
        ipv4: 32,
        ipv6: 128,
    };

    /// The key `ip` is counted under: its network at this family's length.
    /// An IPv4-mapped IPv6 address is the IPv4 client it carries.
    pub fn key(&self, ip: IpAddr) -> IpNet {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new_assert(v4, self.ipv4).trunc()),
            IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, self.ipv6).trunc()),
        }
    }

    /// Whether keys are whole addresses (no key holds more than one).
    pub fn per_address(&self) -> bool {
        self.ipv4 == 32 && self.ipv6 == 128
    }
}

/// How a tier counts: the key it cuts addresses to, and the requests it
/// counts. Tiers with the same aggregation share their counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aggregation {
    /// The key's prefix lengths.
    pub prefixes: Prefixes,
    /// Only the requests this matches; all when `None`.
    pub scope: Option<RequestMatch>,
}

impl From<Prefixes> for Aggregation {
    fn from(prefixes: Prefixes) -> Aggregation {
        Aggregation {
            prefixes,
            scope: None,
        }
    }
}

/// Checks `[detection]`; a missing key keeps its default.
pub(crate) fn check_detection(
    checker: &mut Checker<'_>,
    raw: Option<&Spanned<RawDetection>>,
) -> Prefixes {
    let defaults = Prefixes::default();
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return defaults;
    };
    check_prefixes(
        checker,
        raw.ipv4_prefix.as_ref(),
        raw.ipv6_prefix.as_ref(),
        "detection",
        defaults,
    )
}

/// Checks a pair of optional prefix lengths at `path`, keeping `defaults`
/// for a missing or invalid one.
pub(crate) fn check_prefixes(
    checker: &mut Checker<'_>,
    ipv4: Option<&Spanned<i64>>,
    ipv6: Option<&Spanned<i64>>,
    path: &str,
    defaults: Prefixes,
) -> Prefixes {
    let mut prefixes = defaults;
    let families = [
        (ipv4, "ipv4", MIN_IPV4_PREFIX, 32, &mut prefixes.ipv4),
        (ipv6, "ipv6", MIN_IPV6_PREFIX, 128, &mut prefixes.ipv6),
    ];
    for (value, family, min, max, length) in families {
        let path = format!("{path}.{family}_prefix");
        if let Some(value) = value
            && let Some(checked) = checker.in_range(value, &path, min.into(), max)
        {
            *length = checked as u8;
        }
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cut_addresses_to_their_family_prefix() {
        let prefixes = Prefixes::default();
        let key = |s: &str| prefixes.key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(key("2001:db8:1:2:aa:bb:cc:dd"), "2001:db8:1:2::/64");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7/32");
        let subnets = Prefixes {
            ipv4: 24,
            ipv6: 128,
        };
        assert_eq!(
            subnets.key("192.0.2.7".parse().unwrap()).to_string(),
            "192.0.2.0/24"
        );
        assert!(!prefixes.per_address());
        assert!(Prefixes::PER_ADDRESS.per_address());
    }
}
