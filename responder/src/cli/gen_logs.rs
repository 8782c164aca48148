//! `floodgate gen-logs`: realistic synthetic WAF logs.

use std::fs::File;
use std::io::{BufWriter, Write};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::{CliError, GenLogsArgs, Status};
use crate::loggen::{LogSpec, generate};

/// Writes the logs, gzip-compressed when the file name ends in `.gz`.
pub(super) fn run(args: &GenLogsArgs) -> Result<Status, CliError> {
    let spec = LogSpec {
        seed: args.seed,
        start_ms: crate::clock::unix_ms(args.start),
        minutes: args.minutes,
        benign_records: args.benign_records,
        benign_ips: args.benign_ips,
        attacks: !args.no_attacks,
        format: args.format,
        timestamps: args.timestamps,
    };
    let cannot =
        |e: std::io::Error| CliError::Input(format!("cannot create {}: {e}", args.out.display()));
    if let Some(folder) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(cannot)?;
    }
    let file = File::create(&args.out).map_err(cannot)?;
    let summary = if args.out.extension().is_some_and(|e| e == "gz") {
        let mut encoder = GzEncoder::new(BufWriter::new(file), Compression::default());
        let summary = generate(&spec, &mut encoder)?;
        encoder.finish()?.flush()?;
        summary
    } else {
        generate(&spec, &mut BufWriter::with_capacity(1 << 20, file))?
    };
    eprintln!(
        "wrote {} records ({} bytes uncompressed) to {}",
        summary.records,
        summary.bytes,
        args.out.display()
    );
    Ok(Status::Success)
}
