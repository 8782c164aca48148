//! The gzip line readers (local `.gz` files, and S3 objects), streaming and
//! pipelined (inflating on a thread of its own): arbitrary bytes are lines
//! or an error, never a panic; any text, compressed, comes back line for
//! line from both.
#![no_main]

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use floodgate_responder::source::files::{gzip_lines, gzip_lines_pipelined};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gzip_lines(data, |_| {});
    let _ = gzip_lines_pipelined(data, |_| {});

    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    let compressed = encoder.finish().unwrap();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    gzip_lines(&compressed[..], |line| lines.push(line.to_vec())).unwrap();
    let expected: Vec<&[u8]> = if data.is_empty() {
        Vec::new()
    } else {
        data.strip_suffix(b"\n")
            .unwrap_or(data)
            .split(|&b| b == b'\n')
            .collect()
    };
    assert_eq!(lines, expected);
    let mut pipelined: Vec<Vec<u8>> = Vec::new();
    gzip_lines_pipelined(&compressed[..], |line| pipelined.push(line.to_vec())).unwrap();
    assert_eq!(pipelined, expected);
});
