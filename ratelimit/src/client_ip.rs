//! The client's address, which a client can't choose.
//!
//! `X-Forwarded-For` and `Forwarded` are written by whoever sent the request,
//! so their leftmost entry is whatever the client claims (the flaw of taking
//! the leftmost XFF address). Each proxy appends the address it received the
//! request from, so the trustworthy entry is the rightmost one that was not
//! added by a proxy of ours: walk from the peer address leftwards while the
//! hop is a trusted proxy, and stop at the first that isn't.
//!
//! # Examples
//!
//! ```
//! use floodgate_ratelimit::{ClientIp, ForwardedHeader, PeerAddr, RequestHead};
//!
//! let trusted = ["10.0.0.0/8".parse().unwrap()];
//! let client_ip = ClientIp::behind_proxies(&trusted, ForwardedHeader::XForwardedFor);
//! // The client claims 1.1.1.1; our load balancer 10.0.0.5 saw 203.0.113.9.
//! let mut request = http::Request::get("/")
//!     .header("x-forwarded-for", "1.1.1.1, 203.0.113.9")
//!     .body(())
//!     .unwrap();
//! request.extensions_mut().insert(PeerAddr("10.0.0.5:4000".parse().unwrap()));
//! let ip = client_ip.client_ip(RequestHead::of(&request));
//! assert_eq!(ip, Some("203.0.113.9".parse().unwrap()));
//! ```

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use floodgate_rules::cidr::PrefixMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

use crate::key::{Key, RequestHead, TenantKey};

/// The address of the connection's other end. Servers that don't fill in
/// axum's `ConnectInfo<SocketAddr>` insert this into each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Which header trusted proxies write the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// Finds the client address: the peer, or behind trusted proxies the
/// rightmost untrusted hop of the forwarding header. As a [`TenantKey`] it
/// charges anonymous clients by address, IPv6 ones by prefix.
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: PrefixMap,
    header: Option<ForwardedHeader>,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> ClientIp {
        ClientIp::peer_only()
    }
}

impl ClientIp {
    /// The peer address itself; forwarding headers are ignored. Right for a
    /// service that clients reach directly.
    pub fn peer_only() -> ClientIp {
        ClientIp {
            trusted: PrefixMap::new(&[]),
            header: None,
            ipv6_prefix: 64,
        }
    }

    /// Behind proxies in `trusted`, which write `header`. Hops added by a
    /// trusted proxy are skipped; anything else in the header is ignored.
    pub fn behind_proxies(trusted: &[IpNet], header: ForwardedHeader) -> ClientIp {
        ClientIp {
            trusted: PrefixMap::new(trusted),
            header: Some(header),
            ipv6_prefix: 64,
        }
    }

    /// Charges IPv6 clients per prefix of this length (default 64): one
    /// host owns a whole /64 and could otherwise rotate through it.
    pub fn ipv6_prefix(mut self, bits: u8) -> ClientIp {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// The client's address, or `None` when the request carries no peer
    /// address (the server didn't record it).
    #[inline]
    pub fn client_ip(&self, head: RequestHead<'_>) -> Option<IpAddr> {
        let peer = peer_addr(head)?.ip().to_canonical();
        match self.header {
            Some(header) if self.trusted.contains(peer) => {
                Some(self.forwarded_client(head, header, peer))
            }
            _ => Some(peer),
        }
    }

    /// The rightmost untrusted hop of `header`, for a request that came
    /// through the trusted proxy `peer`. Kept out of line: the direct path
    /// above runs on every request.
    #[inline(never)]
    fn forwarded_client(
        &self,
        head: RequestHead<'_>,
        header: ForwardedHeader,
        peer: IpAddr,
    ) -> IpAddr {
        let mut client = peer;
        for hop in hops_right_to_left(head, header) {
            // A hop we can't read ends the walk at the last proxy we trust:
            // anything to its left is the client's to invent.
            let Some(ip) = hop else {
                return client;
            };
            client = ip;
            if !self.trusted.contains(ip) {
                return ip;
            }
        }
        client
    }

    /// The address rate-limits key on: IPv6 cut to its prefix.
    #[inline]
    fn bucket(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let bits = u32::from(self.ipv6_prefix);
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl TenantKey for ClientIp {
    // Always inlined, and the direct path built by address family: an
    // `IpAddr` passed through memory is reloaded in wider pieces than it was
    // stored, which stalls.
    #[inline(always)]
    fn key<'r>(&self, head: RequestHead<'r>) -> Option<Key<'r>> {
        if self.header.is_some() {
            return self.client_ip(head).map(|ip| Key::Ip(self.bucket(ip)));
        }
        Some(match peer_addr(head)? {
            SocketAddr::V4(peer) => Key::Ip(IpAddr::V4(*peer.ip())),
            SocketAddr::V6(peer) => Key::Ip(self.bucket(peer.ip().to_canonical())),
        })
    }
}

#[inline]
fn peer_addr(head: RequestHead<'_>) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = head
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0);
    }
    head.extensions.get::<PeerAddr>().map(|peer| peer.0)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Every hop of the header, rightmost first; `None` for one that isn't an
/// address. Repeated header lines read as one list, in order.
fn hops_right_to_left(
    head: RequestHead<'_>,
    header: ForwardedHeader,
) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    let name = match header {
        ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
        ForwardedHeader::Forwarded => FORWARDED,
    };
    head.headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|line| {
            let text = line.to_str().unwrap_or("\u{0}");
            text.rsplit(',')
        })
        .map(move |hop| match header {
            ForwardedHeader::XForwardedFor => parse_node(hop.trim()),
            ForwardedHeader::Forwarded => forwarded_for(hop),
        })
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1` or `[2001:db8::1]:80`. Obfuscated names and `unknown` are not.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, _port) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    node.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(
        peer: &str,
        header: &str,
        values: &[&str],
        run: impl FnOnce(RequestHead<'_>) -> Option<IpAddr>,
    ) -> Option<IpAddr> {
        let mut builder = http::Request::get("/");
        for value in values {
            builder = builder.header(header, *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        run(RequestHead::of(&request))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn behind(header: ForwardedHeader) -> ClientIp {
        let trusted = [
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:f::/48".parse().unwrap(),
        ];
        ClientIp::behind_proxies(&trusted, header)
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let found = head_with("198.51.100.7:1", "x-forwarded-for", &["1.2.3.4"], |h| {
            ClientIp::peer_only().client_ip(h)
        });
        assert_eq!(found, ip("198.51.100.7"));
    }

    #[test]
    fn an_untrusted_peer_cannot_forward_for_anyone() {
        let client = behind(ForwardedHeader::XForwardedFor);
        let found = head_with("198.51.100.7:1", "x-forwarded-for", &["1.2.3.4"], |h| {
            client.client_ip(h)
        });
        assert_eq!(found, ip("198.51.100.7"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_wins_over_a_spoofed_leftmost_one() {
        let client = behind(ForwardedHeader::XForwardedFor);
        let values = ["6.6.6.6, 203.0.113.9", "10.1.1.1"];
        let found = head_with("10.0.0.5:1", "x-forwarded-for", &values, |h| {
            client.client_ip(h)
        });
        assert_eq!(found, ip("203.0.113.9"));
    }

    #[test]
    fn all_trusted_hops_leave_the_leftmost_and_junk_stops_the_walk() {
        let client = behind(ForwardedHeader::XForwardedFor);
        let all = head_with(
            "10.0.0.5:1",
            "x-forwarded-for",
            &["10.9.9.9, 10.2.2.2"],
            |h| client.client_ip(h),
        );
        assert_eq!(all, ip("10.9.9.9"));
        let junk = head_with(
            "10.0.0.5:1",
            "x-forwarded-for",
            &["6.6.6.6, nonsense, 10.2.2.2"],
            |h| client.client_ip(h),
        );
        assert_eq!(junk, ip("10.2.2.2"));
    }

    #[test]
    fn forwarded_elements_with_ports_quotes_and_brackets_parse() {
        let client = behind(ForwardedHeader::Forwarded);
        let value = r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.3.3.3"#;
        let found = head_with("10.0.0.5:1", "forwarded", &[value], |h| client.client_ip(h));
        assert_eq!(found, ip("2001:db8:cafe::17"));
        let hidden = head_with(
            "10.0.0.5:1",
            "forwarded",
            &["for=_hidden, for=10.3.3.3"],
            |h| client.client_ip(h),
        );
        assert_eq!(hidden, ip("10.3.3.3"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies() {
        let client = behind(ForwardedHeader::XForwardedFor);
        let found = head_with(
            "[::ffff:10.0.0.5]:1",
            "x-forwarded-for",
            &["203.0.113.9"],
            |h| client.client_ip(h),
        );
        assert_eq!(found, ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let client = ClientIp::peer_only();
        let key = head_with("[2001:db8:1:2:3:4:5:6]:1", "x", &[], |h| {
            match client.key(h) {
                Some(Key::Ip(ip)) => Some(ip),
                _ => None,
            }
        });
        assert_eq!(key, ip("2001:db8:1:2::"));
        let whole = ClientIp::peer_only().ipv6_prefix(128);
        assert_eq!(
            whole.bucket("2001:db8::1".parse().unwrap()),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let none = ClientIp::peer_only().ipv6_prefix(0);
        assert_eq!(
            none.bucket("2001:db8::1".parse().unwrap()),
            "::".parse::<IpAddr>().unwrap()
        );
    }
}
