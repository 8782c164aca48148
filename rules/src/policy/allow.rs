//! Allow-list exceptions: address ranges the responder never blocks, each
//! with an owner, a reason and an expiry that ops review.

use std::net::IpAddr;
use std::num::NonZeroU32;

use ipnet::{IpNet, Ipv4Net};
use time::Date;
use toml::Spanned;

use super::check::Checker;
use super::raw::RawAllow;
use super::safety::Safety;
use super::tiers::Tier;
use crate::cidr::PrefixMap;

/// One `[[allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// The exempted range; a single address is a /32 or /128.
    pub cidr: IpNet,
    /// Why it is exempt.
    pub reason: String,
    /// Who answers for it.
    pub owner: String,
    /// Last day it applies (inclusive, UTC).
    pub expires: Date,
    /// A raised block threshold instead of a full exemption.
    pub requests: Option<NonZeroU32>,
    /// Approved as broader than `[safety]` allows by default.
    pub broad: bool,
    /// Line of the entry in the policy file.
    pub line: usize,
}

impl AllowEntry {
    /// Whether the entry no longer applies on `today`.
    pub fn is_expired(&self, today: Date) -> bool {
        today > self.expires
    }

    /// Days from `today` to the last day of the entry (negative once expired).
    pub fn days_left(&self, today: Date) -> i64 {
        (self.expires - today).whole_days()
    }
}

/// Every allow entry, and a fast lookup over the ones that apply.
///
/// Expiry is evaluated on the day the policy is loaded; a long-running
/// process reloads the policy to see entries expire.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
    /// Indexes into `entries` of the unexpired entries, in map order.
    active: Vec<usize>,
    map: PrefixMap,
}

impl AllowList {
    /// Builds the list as of `today`: expired entries are kept, for review,
    /// but never match.
    pub fn new(entries: Vec<AllowEntry>, today: Date) -> Self {
        let active: Vec<usize> = (0..entries.len())
            .filter(|&i| !entries[i].is_expired(today))
            .collect();
        let nets: Vec<IpNet> = active.iter().map(|&i| entries[i].cidr).collect();
        AllowList {
            map: PrefixMap::new(&nets),
            active,
            entries,
        }
    }

    /// All entries in file order, expired ones included.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// The most specific unexpired entry that contains `ip`.
    pub fn find(&self, ip: IpAddr) -> Option<&AllowEntry> {
        self.find_index(ip).map(|i| &self.entries[i])
    }

    /// Like [`AllowList::find`], as an index into [`AllowList::entries`].
    pub fn find_index(&self, ip: IpAddr) -> Option<usize> {
        self.map.lookup(ip).map(|i| self.active[i])
    }

    /// The most specific unexpired entry that contains all of `net`, as an
    /// index into [`AllowList::entries`]. Entries inside `net` do not
    /// count: a block of `net` cuts those out instead.
    pub fn find_containing(&self, net: IpNet) -> Option<usize> {
        let found = self.find_index(net.network())?;
        if self.entries[found].cidr.contains(&net) {
            return Some(found);
        }
        self.active
            .iter()
            .copied()
            .filter(|&i| self.entries[i].cidr.contains(&net))
            .max_by_key(|&i| self.entries[i].cidr.prefix_len())
    }
}

/// Checks every entry, then duplicates and overlaps between them.
pub(crate) fn check_allow_list(
    checker: &mut Checker<'_>,
    raw: &[Spanned<RawAllow>],
    safety: &Safety,
    tiers: &[Tier],
) -> AllowList {
    let mut entries = Vec::new();
    let mut spans = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let path = format!("allow[{i}]");
        if let Some(checked) = check_entry(checker, entry, &path, safety, tiers) {
            if checked.is_expired(checker.today) {
                let message = format!("expired on {}; it no longer applies", checked.expires);
                let help = Some("renew it with a later expires date, or remove it".to_owned());
                checker.warn(
                    entry.get_ref().expires.span(),
                    &format!("{path}.expires"),
                    message,
                    help,
                );
            }
            entries.push(checked);
            spans.push((i, entry.get_ref().cidr.span()));
        }
    }
    for (inner, outer) in nested_pairs(&entries) {
        let (index, span) = spans[inner].clone();
        let (outer_index, _) = spans[outer];
        let (what, help) = if entries[inner].cidr == entries[outer].cidr {
            ("duplicates", "remove one of the two")
        } else {
            (
                "lies inside",
                "remove the narrower entry unless it needs its own owner or expiry",
            )
        };
        let message = format!(
            "\"{}\" {what} allow[{outer_index}] \"{}\" (line {})",
            entries[inner].cidr, entries[outer].cidr, entries[outer].line
        );
        checker.warn(
            span,
            &format!("allow[{index}].cidr"),
            message,
            Some(help.to_owned()),
        );
    }
    AllowList::new(entries, checker.today)
}

fn check_entry(
    checker: &mut Checker<'_>,
    entry: &Spanned<RawAllow>,
    path: &str,
    safety: &Safety,
    tiers: &[Tier],
) -> Option<AllowEntry> {
    let raw = entry.get_ref();
    let cidr = check_cidr(
        checker,
        &raw.cidr,
        &format!("{path}.cidr"),
        raw.broad,
        safety,
    );
    let reason = checker.text(&raw.reason, &format!("{path}.reason"));
    let owner = checker.text(&raw.owner, &format!("{path}.owner"));
    let expires = checker.date(&raw.expires, &format!("{path}.expires"));
    let requests = match &raw.requests {
        None => None,
        Some(requests) => {
            let requests_path = format!("{path}.requests");
            let raised = checker.positive(requests, &requests_path)?;
            let lowest_block = tiers
                .iter()
                .filter(|t| t.blocks())
                .map(|t| t.requests)
                .min();
            if let Some(lowest) = lowest_block.filter(|lowest| raised <= *lowest) {
                let message = format!(
                    "{raised} is not above the lowest block threshold ({lowest}); it does not raise anything"
                );
                let help = Some(format!(
                    "set it above {lowest}, or remove requests to exempt the range fully"
                ));
                checker.warn(requests.span(), &requests_path, message, help);
            }
            Some(raised)
        }
    };
    Some(AllowEntry {
        cidr: cidr?,
        reason: reason?,
        owner: owner?,
        expires: expires?,
        requests,
        broad: raw.broad,
        line: checker.found.line_of(entry.span().start),
    })
}

fn check_cidr(
    checker: &mut Checker<'_>,
    value: &Spanned<String>,
    path: &str,
    broad: bool,
    safety: &Safety,
) -> Option<IpNet> {
    let text = value.get_ref().as_str();
    let span = value.span();
    let Some(net) = parse_cidr(text) else {
        let help = match parse_cidr(text.trim()) {
            Some(_) => format!("remove the spaces: \"{}\"", text.trim()),
            None => {
                "write a prefix such as \"192.0.2.0/24\" or \"2001:db8::/48\", or a single address"
                    .to_owned()
            }
        };
        checker.error(
            span,
            path,
            format!("\"{text}\" is not an IP address or CIDR prefix"),
            Some(help),
        );
        return None;
    };
    if net != net.trunc() {
        let help = Some(format!("did you mean \"{}\"?", net.trunc()));
        checker.error(span, path, format!("\"{text}\" has host bits set"), help);
        return None;
    }
    if let Some(v4) = ipv4_mapped(&net) {
        let help = Some(format!("write it as \"{v4}\""));
        checker.error(
            span,
            path,
            format!("\"{text}\" is an IPv4-mapped IPv6 prefix"),
            help,
        );
        return None;
    }
    let (broadest, family) = match net {
        IpNet::V4(_) => (safety.broadest_allow_prefix_v4, "IPv4"),
        IpNet::V6(_) => (safety.broadest_allow_prefix_v6, "IPv6"),
    };
    if net.prefix_len() == 0 {
        let help =
            Some("remove it: an exception for everything turns the responder off".to_owned());
        checker.error(
            span,
            path,
            format!("\"{text}\" covers every {family} address"),
            help,
        );
        return None;
    }
    let too_broad = net.prefix_len() < broadest;
    if too_broad && !broad {
        let message = format!(
            "\"{text}\" is broader than /{broadest}, the broadest {family} exception [safety] allows"
        );
        let help = Some(
            "narrow it, or set broad = true on this entry once its size is approved".to_owned(),
        );
        checker.error(span, path, message, help);
        return None;
    }
    if broad && !too_broad {
        let message = format!("broad = true is not needed for \"{text}\"");
        checker.warn(span, path, message, Some("remove broad = true".to_owned()));
    }
    Some(net)
}

/// A prefix, or a single address as a host prefix.
fn parse_cidr(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        text.parse().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// The IPv4 prefix an IPv4-mapped IPv6 prefix (`::ffff:0:0/96` and inside) stands for.
fn ipv4_mapped(net: &IpNet) -> Option<Ipv4Net> {
    let IpNet::V6(net) = net else { return None };
    let v4 = net.network().to_ipv4_mapped()?;
    let len = net.prefix_len().checked_sub(96)?;
    Ipv4Net::new(v4, len).ok()
}

/// `(inner, outer)` index pairs where entry `inner` lies inside (or equals)
/// entry `outer`, naming each nested entry once, against its innermost
/// container.
pub(crate) fn nested_pairs(entries: &[AllowEntry]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    // Outer prefixes before the ones they contain; equal ones in file order.
    order.sort_by_key(|&i| (entries[i].cidr.network(), entries[i].cidr.prefix_len(), i));
    let mut pairs = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for i in order {
        while let Some(&outer) = open.last() {
            if entries[outer].cidr.contains(&entries[i].cidr) {
                break;
            }
            open.pop();
        }
        if let Some(&outer) = open.last() {
            pairs.push((i, outer));
        }
        open.push(i);
    }
    pairs.sort_unstable();
    pairs
}
