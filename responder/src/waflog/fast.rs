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

pub(super) fn extract_hit(line: &[u8]) -> Option<Hit> {
    let line = line.trim_ascii();
    if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
        return None;
    }
    if memchr::memchr_iter(b'{', line).count() != memchr::memchr_iter(b'}', line).count() {
        return None;
    }
    std::str::from_utf8(line).ok()?;

    let timestamp_at = TIMESTAMP.find(line)? + TIMESTAMP.needle().len();
    let timestamp_ms = parse_integer(&line[timestamp_at..])?;

    let action_key = ACTION.find(line)?;
    if depth_at(line, action_key)? != 1 {
        return None;
    }
    let action = Action::from_bytes(string_value(line, action_key + ACTION.needle().len())?)?;

    let ip_key = CLIENT_IP.find(line)?;
    let ip_text = string_value(line, ip_key + CLIENT_IP.needle().len())?;
    // from_utf8 above validated the whole line.
    let client_ip: IpAddr = std::str::from_utf8(ip_text).ok()?.parse().ok()?;

    Some(Hit {
        timestamp_ms,
        client_ip,
        action,
    })
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

/// Object/array nesting depth at byte `end`, or `None` when `end` falls
/// inside a string or the brackets do not nest.
fn depth_at(line: &[u8], end: usize) -> Option<u32> {
    let mut depth = 0u32;
    let mut i = 0;
    while i < end {
        match line[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                loop {
                    let at = i + memchr::memchr2(b'"', b'\\', &line[i..end])?;
                    if line[at] == b'\\' {
                        i = at + 2;
                        if i > end {
                            return None;
                        }
                    } else {
                        i = at;
                        break;
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
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
        assert_eq!(depth_at(nested, ACTION.find(nested).unwrap()), Some(3));
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
