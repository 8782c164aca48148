//! The WAF record reader: a record the full parse accepts reads the same
//! on the fast path (which may also count a line the full parse rejects,
//! when the fields it reads are whole: it does not check every byte's
//! grammar); tier matches read the same either way; no input panics.
#![no_main]

use floodgate_responder::waflog::{
    parse_hit, parse_hit_fast_only, parse_hit_full_only, parse_hit_scoped, parse_record,
};
use floodgate_rules::policy::{PathMatch, RequestMatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let full = parse_hit_full_only(line);
    if full.is_ok() {
        if let Some(fast) = parse_hit_fast_only(line) {
            assert_eq!(
                Ok(fast),
                full,
                "the fast path disagrees with the full parse"
            );
        }
        assert_eq!(parse_hit(line), full);
    }

    let scopes = [
        RequestMatch {
            path: Some(PathMatch::Exact("/login".into())),
            method: Some("POST".into()),
            ..Default::default()
        },
        RequestMatch {
            path: Some(PathMatch::Prefix("/v1/".into())),
            country: Some("NL".into()),
            ..Default::default()
        },
        RequestMatch {
            action: Some("BLOCK".into()),
            ..Default::default()
        },
    ];
    let record = parse_record(line, Some("x-tenant-id"));
    let expected = record.ok().map(|record| {
        let request = record.request_fields();
        (0..scopes.len())
            .filter(|&i| scopes[i].matches(&request))
            .fold(0u32, |bits, i| bits | 1 << i)
    });
    let scoped = parse_hit_scoped(line, &scopes).ok().map(|hit| hit.scopes);
    if full.is_ok() {
        assert_eq!(scoped, expected, "tier matches read differently");
    }
});
