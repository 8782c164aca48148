//! The fast path: the three counting fields straight from the raw bytes.
//!
//! It vouches for a line only when it can be sure the answer equals the
//! full parse's; otherwise it returns `None` and the full parse decides.
//! - Keys are matched with their quotes and colon (`"clientIp":"`). A raw
//!   quote cannot occur inside a JSON string, so text inside a value, such
//!   as a header named `clientIp`, never matches.
//! - `action` also names nested rule actions; the match must sit at the top
//!   level, which a small tokenizer over the bytes before it confirms.
//! - The line must be one complete object: it starts with `{`, ends with
//!   `}`, its braces balance, and it is valid UTF-8. A truncated record
//!   fails these and goes to the full parse, which rejects it.

use std::net::IpAddr;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::{Action, Hit};

static TIMESTAMP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""timestamp":"#));
static ACTION: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""action":""#));
static CLIENT_IP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""clientIp":""#));
static URI: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""uri":""#));
static METHOD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""httpMethod":""#));
static COUNTRY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""country":""#));

/// `httpRequest`'s `uri`, `httpMethod` and `country`, for tier matches,
/// from a line [`extract_hit`] vouched for, whose client IP's value ends at
/// `ip_end`. Each key appears only in `httpRequest` in a WAF record, so a
/// key found is the field. WAF writes them after `clientIp`, in the order
/// `country`, `uri`, `httpMethod`: each is searched from the end of the
/// one before (a backward search from the end of the line, which would
/// skip the headers, measured slower). A value with escapes, or a key not
/// where WAF writes it, is left to the full parse.
pub(super) fn extract_request(line: &[u8], ip_end: usize) -> Option<(&str, &str, &str)> {
    let mut at = ip_end;
    let mut next = |finder: &Finder<'_>| {
        let start = at + finder.find(line.get(at..)?)? + finder.needle().len();
        let value = string_value(line, start)?;
        at = start + value.len();
        std::str::from_utf8(value).ok()
    };
    let country = next(&COUNTRY)?;
    let uri = next(&URI)?;
    let method = next(&METHOD)?;
    Some((uri, method, country))
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

    let timestamp_at = TIMESTAMP.find(line)? + TIMESTAMP.needle().len();
    let timestamp_ms = parse_integer(&line[timestamp_at..])?;

    let action_key = ACTION.find(line)?;
    if depth_at(line, action_key)? != 1 {
        return None;
    }
    let action = Action::from_bytes(string_value(line, action_key + ACTION.needle().len())?)?;

    let ip_at = CLIENT_IP.find(line)? + CLIENT_IP.needle().len();
    let ip_text = string_value(line, ip_at)?;
    let client_ip: IpAddr = std::str::from_utf8(ip_text).ok()?.parse().ok()?;

    let hit = Hit {
        timestamp_ms,
        client_ip,
        action,
        scopes: 0,
    };
    Some((hit, start + ip_at + ip_text.len()))
}

/// Opening minus closing braces, and whether the line is pure ASCII (then
/// it is valid UTF-8 without a second look), in one pass. Byte-wide
/// counters over blocks of 255 bytes let the compiler vectorize the loop.
fn scan_braces(line: &[u8]) -> (i64, bool) {
    let (mut balance, mut high_bits) = (0i64, 0u8);
    for block in line.chunks(255) {
        let (mut open, mut close) = (0u8, 0u8);
        for &b in block {
            open += u8::from(b == b'{');
            close += u8::from(b == b'}');
            high_bits |= b;
        }
        balance += i64::from(open) - i64::from(close);
    }
    (balance, high_bits < 0x80)
}

/// Digits up to the next `,` or `}`, as JSON writes an integer; anything
/// else (a sign, a fraction, spaces, a leading zero) is left to the full parse.
fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let end = bytes.iter().position(|&b| b == b',' || b == b'}')?;
    let digits = &bytes[..end];
    if digits.is_empty()
        || digits.len() > 18
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits[0] == b'0' && digits.len() > 1)
    {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')),
    )
}

/// The bytes of a string value starting at `start`, up to its closing
/// quote. A value with escapes is left to the full parse.
fn string_value(line: &[u8], start: usize) -> Option<&[u8]> {
    let rest = line.get(start..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then_some(&rest[..end])
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
    use super::*;

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
    fn integers_are_plain_digits_only() {
        assert_eq!(parse_integer(b"1700000000123,"), Some(1_700_000_000_123));
        assert_eq!(parse_integer(b"-5,"), None);
        assert_eq!(parse_integer(b"1.5,"), None);
        assert_eq!(parse_integer(b" 15,"), None);
        assert_eq!(parse_integer(b"15"), None);
        assert_eq!(parse_integer(b"0,"), Some(0));
        assert_eq!(parse_integer(b"007,"), None);
    }
}
