//! Times inflating one gzip file, best of 3, with: flate2 streaming (the
//! backend this build chose: zlib-rs or miniz_oxide), as Floodgate reads;
//! and, for reference, zlib-rs and libdeflate on the whole file in memory
//! (libdeflate cannot stream, so it would hold a whole object in memory).

use std::io::Read;
use std::time::Instant;

fn best_of_3(mut run: impl FnMut() -> usize) -> (f64, usize) {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let bytes = run();
            (started.elapsed().as_secs_f64(), bytes)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("three runs")
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: inflate-bench FILE.gz");
    let gz = std::fs::read(&path).expect("readable file");
    let backend = if cfg!(feature = "miniz") { "miniz_oxide" } else { "zlib-rs" };
    let (seconds, total) = best_of_3(|| {
        let mut decoder = flate2::read::MultiGzDecoder::new(&gz[..]);
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match decoder.read(&mut buffer).expect("valid gzip") {
                0 => return total,
                n => total += n,
            }
        }
    });
    println!("flate2 ({backend}), streaming\t{seconds:.3}\t{total}");
    if cfg!(feature = "miniz") {
        return;
    }
    let mut out = vec![0u8; total];
    let (seconds, _) = best_of_3(|| {
        let config = zlib_rs::inflate::InflateConfig { window_bits: 16 + 15 };
        let (inflated, code) = zlib_rs::inflate::uncompress_slice(&mut out, &gz, config);
        assert_eq!(code, zlib_rs::ReturnCode::Ok);
        inflated.len()
    });
    println!("zlib-rs, whole file in memory\t{seconds:.3}\t{total}");
    let (seconds, _) = best_of_3(|| {
        libdeflater::Decompressor::new()
            .gzip_decompress(&gz, &mut out)
            .expect("valid gzip")
    });
    println!("libdeflate, whole file in memory\t{seconds:.3}\t{total}");
}
