//! The fast path: the three counting fields straight from the raw bytes.
//!
//! It vouches for a line only when it can be sure that the answer is the
//! full parse's wherever the full parse accepts the line; otherwise it
//! returns `None` and the full parse decides. It does not check the JSON
//! grammar of every byte (that would cost more than the rest of the scan),
//! so a line the full parse rejects (damaged syntax, a duplicate key) is
//! counted when the fields the fast path reads are whole, as the fuzz
//! target `waf_record` showed.
//! - Keys are matched with their quotes and colon (`"clientIp":"`). A raw
//!   quote cannot occur inside a JSON string, so text inside a value, such
//!   as a header named `clientIp`, never matches.
//! - `action` also names nested rule actions; the match must sit at the top
//!   level, which a small tokenizer over the bytes before it confirms.
//! - The line must be one complete object: it starts with `{`, ends with
//!   `}`, its braces balance, and it is valid UTF-8. A truncated record
//!   fails these and goes to the full parse, which rejects it, unless it
//!   was cut right after a `}` and braces inside strings make up the
//!   balance; it is then counted as the record it was.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::{Action, Hit};

static TIMESTAMP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""timestamp":"#));
static ACTION: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""action":""#));
static CLIENT_IP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""clientIp":""#));
static URI: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""uri":""#));
static METHOD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""httpMethod":""#));
static COUNTRY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""country":""#));

/// `httpRequest`'s `uri` and `country`, for tier matches, from a line
/// [`extract_hit`] vouched for, whose client IP's value ends at `ip_end`;
/// and where the `uri` value ends, for [`extract_method`]. Each key appears
/// only in `httpRequest` in a WAF record, so a key found is the field. WAF
/// writes `country` right after `clientIp`, and `uri` right after the
/// `headers` array; each is taken from there when it is there (a search
/// over the headers for a key costs more than the rest of the record),
/// else found by a search from the end of the one before. A value with
/// escapes, or a key not found, is left to the full parse.
pub(super) fn extract_uri_country(line: &[u8], ip_end: usize) -> Option<(&[u8], &[u8], usize)> {
    let country_at = value_start(line, ip_end, br#"","country":""#, &COUNTRY)?;
    let country = string_value(line, country_at)?;
    let uri_at = uri_start(line, country_at + country.len())?;
    let uri = string_value(line, uri_at)?;
    Some((uri, country, uri_at + uri.len()))
}

/// `httpRequest.httpMethod`, after the `uri` value that ends at `uri_end`:
/// WAF writes `args` and `httpVersion` between them, which are stepped
/// over when they are there, else the key is searched for.
pub(super) fn extract_method(line: &[u8], uri_end: usize) -> Option<&[u8]> {
    let mut at = uri_end;
    for key in [&br#"","args":""#[..], br#"","httpVersion":""#] {
        match line[at..]
            .starts_with(key)
            .then(|| string_value(line, at + key.len()))
        {
            Some(Some(value)) => at += key.len() + value.len(),
            _ => break,
        }
    }
    string_value(
        line,
        value_start(line, at, br#"","httpMethod":""#, &METHOD)?,
    )
}

/// Where the value of `finder`'s key starts, at or after `at`: right after
/// `at` when `expected` (the key where WAF writes it) is there, else where
/// a search finds the key.
fn value_start(line: &[u8], at: usize, expected: &[u8], finder: &Finder<'_>) -> Option<usize> {
    let rest = line.get(at..)?;
    if rest.starts_with(expected) {
        return Some(at + expected.len());
    }
    Some(at + finder.find(rest)? + finder.needle().len())
}

/// Where the value of `uri` starts, at or after `at`: after the first
/// `],"uri":"` (the `headers` array's end; a raw `"` cannot sit inside a
/// string, so that text is structure), found by a one-byte search for `]`,
/// else where a search finds the key.
fn uri_start(line: &[u8], at: usize) -> Option<usize> {
    const AFTER_HEADERS: &[u8] = br#"],"uri":""#;
    let rest = line.get(at..)?;
    let mut from = 0;
    while let Some(found) = memchr::memchr(b']', &rest[from..]) {
        let close = from + found;
        if rest[close..].starts_with(AFTER_HEADERS) {
            return Some(at + close + AFTER_HEADERS.len());
        }
        from = close + 1;
    }
    Some(at + URI.find(rest)? + URI.needle().len())
}

pub(super) fn extract_hit(line: &[u8]) -> Option<Hit> {
    extract_hit_at(line).map(|(hit, _)| hit)
}

/// [`extract_hit`], with where the client IP's value ends in `line`.
pub(super) fn extract_hit_at(line: &[u8]) -> Option<(Hit, usize)> {
    let start = line.len() - line.trim_ascii_start().len();
    let line = line.trim_ascii();
    if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
        return None;
    }
    let (balance, ascii) = scan_braces(line);
    if balance != 0 || (!ascii && std::str::from_utf8(line).is_err()) {
        return None;
    }

    // WAF writes `timestamp` first.
    let timestamp_at = value_start(line, 1, TIMESTAMP.needle(), &TIMESTAMP)?;
    let timestamp_ms = parse_integer(&line[timestamp_at..])?;

    let action_key = ACTION.find(line)?;
    if !at_top_level(line, action_key) {
        return None;
    }
    let action_at = action_key + ACTION.needle().len();
    let action = Action::from_bytes(string_value(line, action_at)?)?;

    // WAF writes `httpRequest` after `action`; a record written otherwise
    // goes to the full parse.
    let ip_at = action_at + CLIENT_IP.find(&line[action_at..])? + CLIENT_IP.needle().len();
    let ip_text = string_value(line, ip_at)?;
    let client_ip = parse_ip(ip_text)?;

    let hit = Hit {
        timestamp_ms,
        client_ip,
        action,
        scopes: 0,
    };
    Some((hit, start + ip_at + ip_text.len()))
}

/// An address as WAF writes it: a plain dotted quad is read here, anything
/// else by the standard parser (which also has the last word on every
/// dotted quad this one turns down).
pub(crate) fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    match dotted_quad(text) {
        Some(v4) => Some(IpAddr::V4(v4)),
        None => std::str::from_utf8(text).ok()?.parse().ok(),
    }
}

/// Four decimal octets without leading zeros, as the standard parser
/// accepts them; `None` for anything else.
fn dotted_quad(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut part, mut value, mut digits) = (0, 0u16, 0);
    for &b in text {
        match b {
            b'0'..=b'9' if digits < 3 && !(digits == 1 && value == 0) => {
                value = value * 10 + u16::from(b - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && part < 3 && value <= 255 => {
                octets[part] = value as u8;
                (part, value, digits) = (part + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if part != 3 || digits == 0 || value > 255 {
        return None;
    }
    octets[3] = value as u8;
    Some(Ipv4Addr::from(octets))
}

/// Opening minus closing braces, and whether the line is pure ASCII (then
/// it is valid UTF-8 without a second look). Both are folds the compiler
/// turns into vector compares: the balance of each block of 64 bytes is a
/// byte-wide sum of +1 and -1 (at most 64 either way, so it cannot wrap as
/// an `i8`), and the ASCII test ORs every byte together.
pub(crate) fn scan_braces(line: &[u8]) -> (i64, bool) {
    let balance = |block: &[u8]| {
        let sum = block.iter().fold(0u8, |n, &b| {
            n.wrapping_add(u8::from(b == b'{'))
                .wrapping_sub(u8::from(b == b'}'))
        });
        i64::from(sum as i8)
    };
    let blocks = line.chunks_exact(64);
    let tail = balance(blocks.remainder());
    let balance = blocks.map(balance).sum::<i64>() + tail;
    let high = line.iter().fold(0u8, |h, &b| h | b);
    (balance, high < 0x80)
}

#[cfg(test)]
#[test]
fn scan_braces_counts_every_brace_and_sees_every_high_byte() {
    let naive = |line: &[u8]| {
        let count = |c| line.iter().filter(|&&b| b == c).count() as i64;
        (count(b'{') - count(b'}'), line.is_ascii())
    };
    let mut line = Vec::new();
    for i in 0..300usize {
        line.push([b'{', b'}', b'a', b'"', 0xc3, b'}'][i * 7 % 6]);
        assert_eq!(scan_braces(&line), naive(&line), "{i}");
        let ascii: Vec<u8> = line.iter().map(|&b| b & 0x7f).collect();
        assert_eq!(scan_braces(&ascii), naive(&ascii), "{i}");
    }
}

/// Digits up to the next `,` or `}`, as JSON writes an integer; anything
/// else (a sign, a fraction, spaces, a leading zero, more than an `i64`
/// holds) is left to the full parse.
pub(crate) fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let mut value = 0i64;
    for (i, &b) in bytes.iter().enumerate().take(20) {
        match b {
            b'0'..=b'9' if i < 19 && !(i == 1 && bytes[0] == b'0') => {
                value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
            }
            b',' | b'}' if i > 0 => return Some(value),
            _ => return None,
        }
    }
    None
}

/// The bytes of a string value starting at `start`, up to its closing
/// quote. A value with escapes is left to the full parse.
pub(crate) fn string_value(line: &[u8], start: usize) -> Option<&[u8]> {
    let rest = line.get(start..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then_some(&rest[..end])
}

/// Whether a key at byte `end` sits in the top-level object. Certain
/// without a walk when no brace comes before it but the opening one, as
/// WAF writes `action` (a matched key cannot sit inside a string: a raw
/// quote ends a string, and an escaped one is not followed by `:`).
pub(crate) fn at_top_level(line: &[u8], end: usize) -> bool {
    memchr::memchr2(b'{', b'}', &line[1..end]).is_none() || depth_at(line, end) == Some(1)
}

/// Object nesting depth at byte `end` (arrays do not count: a nested
/// rule's `action` always sits in an object inside the array), or `None`
/// when `end` falls inside a string or the braces do not nest. Jumps from
/// one quote or brace to the next instead of visiting every byte.
fn depth_at(line: &[u8], end: usize) -> Option<u32> {
    let prefix = &line[..end];
    let mut depth = 0u32;
    let mut i = 0;
    while let Some(found) = memchr::memchr3(b'"', b'{', b'}', &prefix[i..]) {
        let at = i + found;
        match prefix[at] {
            b'{' => depth += 1,
            b'}' => depth = depth.checked_sub(1)?,
            _ => {
                // Skip the string, escapes included.
                let mut j = at + 1;
                loop {
                    let next = j + memchr::memchr2(b'"', b'\\', &prefix[j..])?;
                    if prefix[next] == b'"' {
                        i = next + 1;
                        break;
                    }
                    j = next + 2;
                    if j > prefix.len() {
                        return None;
                    }
                }
                continue;
            }
        }
        i = at + 1;
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The dotted-quad reader accepts only what the standard parser
        /// accepts, and reads it the same.
        #[test]
        fn dotted_quads_read_as_the_standard_parser_reads_them(text in "[0-9.]{0,17}") {
            let standard = text.parse::<Ipv4Addr>().ok();
            match dotted_quad(text.as_bytes()) {
                Some(v4) => prop_assert_eq!(Some(v4), standard),
                None => prop_assert!(standard.is_none(), "{} turned down", text),
            }
        }
    }

    #[test]
    fn every_address_form_is_read() {
        for text in [
            "192.0.2.1",
            "0.0.0.0",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            assert_eq!(parse_ip(text.as_bytes()), text.parse().ok(), "{text}");
        }
        for text in ["256.0.0.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "", "1..2.3"] {
            assert_eq!(parse_ip(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn depth_skips_strings_and_escapes() {
        let line = br#"{"a":"{[\"x","b":[{"c":1}],"action":"ALLOW"}"#;
        let at = ACTION.find(line).unwrap();
        assert_eq!(depth_at(line, at), Some(1));
        let nested = br#"{"r":[{"action":"BLOCK"}],"action":"ALLOW"}"#;
        assert_eq!(depth_at(nested, ACTION.find(nested).unwrap()), Some(2));
        // The key text inside a string is never a key.
        let quoted = br#"{"a":"x\"action\":\"BLOCK","#;
        assert_eq!(depth_at(quoted, quoted.len() - 2), None);
    }

    #[test]
    fn a_key_is_top_level_before_any_nested_object_and_by_its_depth_after() {
        let flat = br#"{"a":"x","action":"ALLOW","r":[{"action":"BLOCK"}]}"#;
        assert!(at_top_level(flat, ACTION.find(flat).unwrap()));
        let nested = br#"{"r":[{"action":"BLOCK"}],"action":"ALLOW"}"#;
        let first = ACTION.find(nested).unwrap();
        assert!(!at_top_level(nested, first));
        let second = first + 1 + ACTION.find(&nested[first + 1..]).unwrap();
        assert!(at_top_level(nested, second));
        // A brace inside a string sends the check to the walk, which skips it.
        let in_string = br#"{"a":"{","action":"ALLOW"}"#;
        assert!(at_top_level(in_string, ACTION.find(in_string).unwrap()));
    }

    #[test]
    fn integers_are_plain_digits_only() {
        assert_eq!(parse_integer(b"1700000000123,"), Some(1_700_000_000_123));
        assert_eq!(parse_integer(b"-5,"), None);
        assert_eq!(parse_integer(b"1.5,"), None);
        assert_eq!(parse_integer(b" 15,"), None);
        assert_eq!(parse_integer(b"15"), None);
        assert_eq!(parse_integer(b"0,"), Some(0));
        assert_eq!(parse_integer(b"007,"), None);
        assert_eq!(
            parse_integer(b"999999999999999999,"),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(
            parse_integer(b"9999999999999999999,"),
            None,
            "19 digits may not fit"
        );
    }
}
