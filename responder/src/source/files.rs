//! Local log files (WAF's or Cloudflare's), counted in-process on every core.
//!
//! Paths may be files, directories (searched recursively) or glob patterns.
//! Plain files are memory-mapped and cut into chunks at line boundaries;
//! `.gz` files (as WAF delivers to S3 and Firehose) are streamed, one per
//! worker. Each worker counts into its own [`TrafficCounter`]; the counters
//! are merged at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use memmap2::Mmap;

use floodgate_rules::policy::{LogFormat, RequestMatch};

use super::{LogSource, SourceError, parse_line};
use crate::traffic::{CountSpec, Stats, Traffic, TrafficCounter};
use crate::waflog::Hit;

/// Default chunk size for splitting a plain file between workers.
const CHUNK_BYTES: usize = 16 << 20;
/// Show a progress bar (on a terminal) when reading more than this.
const PROGRESS_BYTES: u64 = 256 << 20;

/// Local log files.
#[derive(Debug, Clone)]
pub struct FileSource {
    files: Vec<PathBuf>,
    format: LogFormat,
    progress: bool,
    chunk_bytes: usize,
}

impl FileSource {
    /// Finds the log files under `paths` (files, directories or globs).
    /// Every path must yield at least one file.
    pub fn new(paths: &[impl AsRef<str>]) -> Result<FileSource, SourceError> {
        let mut files = Vec::new();
        for pattern in paths {
            let pattern = pattern.as_ref();
            let before = files.len();
            expand(pattern, &mut files)?;
            if files.len() == before {
                return Err(SourceError::NoFiles {
                    pattern: pattern.to_owned(),
                });
            }
        }
        files.sort();
        files.dedup();
        Ok(FileSource {
            files,
            format: LogFormat::Waf,
            progress: true,
            chunk_bytes: CHUNK_BYTES,
        })
    }

    /// Reads records written in `format` (WAF's by default).
    pub fn with_format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// Turns the terminal progress bar off (it is on by default and only
    /// ever drawn on a terminal).
    pub fn without_progress(mut self) -> Self {
        self.progress = false;
        self
    }

    /// Splits plain files into chunks of about this many bytes (16 MiB by
    /// default); tests use small chunks to cross many chunk boundaries.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// The files that will be read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Reads every line of every file on all cores, handing each worker's
    /// lines to `per_line` with its own state, then returns the states.
    fn scan<S: Send>(
        &self,
        init: impl Fn() -> S + Sync,
        per_line: impl Fn(&mut S, &[u8]) + Sync,
    ) -> Result<Vec<(S, u64)>, SourceError> {
        let inputs = self
            .files
            .iter()
            .map(|path| Input::open(path))
            .collect::<Result<Vec<_>, _>>()?;
        let units = work_units(&inputs, self.chunk_bytes);
        let total: u64 = inputs.iter().map(Input::len).sum();
        let bar = if self.progress && total > PROGRESS_BYTES {
            let style = ProgressStyle::with_template(
                "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template");
            ProgressBar::new(total).with_style(style)
        } else {
            ProgressBar::hidden()
        };
        let next = AtomicUsize::new(0);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = cores.min(units.len().max(1));
        // Fewer units than cores would leave cores idle: each gzip stream
        // then inflates on a thread of its own while its worker counts.
        let pipelined = units.len() < cores;
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| -> Result<(S, u64), SourceError> {
                        let mut state = init();
                        let mut bytes = 0u64;
                        while let Some(unit) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let read =
                                unit.read(&inputs, pipelined, |line| per_line(&mut state, line))?;
                            bytes += read;
                            bar.inc(read);
                        }
                        Ok((state, bytes))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("log reader panicked"))
                .collect::<Result<Vec<_>, _>>()
        });
        bar.finish_and_clear();
        results
    }

    /// [`LogSource::count`], synchronously.
    pub fn count_blocking(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let per_worker = self.scan(
            || TrafficCounter::new(spec.clone()),
            |counter, line| {
                if !line.trim_ascii().is_empty() {
                    counter.add_parsed(parse_line(self.format, line, spec.scopes()));
                }
            },
        )?;
        let mut merged = TrafficCounter::new(spec.clone());
        for (counter, bytes) in per_worker {
            merged.merge(counter);
            merged.add_stats(Stats {
                bytes,
                ..Stats::default()
            });
        }
        Ok(merged.finish())
    }

    /// Every usable record that `keep` accepts, in no particular order:
    /// for replaying logs rather than counting them.
    pub fn hits_blocking(
        &self,
        scopes: &[RequestMatch],
        keep: impl Fn(&Hit) -> bool + Sync,
    ) -> Result<Vec<Hit>, SourceError> {
        let per_worker = self.scan(Vec::new, |hits, line| {
            if let Ok(hit) = parse_line(self.format, line, scopes)
                && keep(&hit)
            {
                hits.push(hit);
            }
        })?;
        Ok(per_worker.into_iter().flat_map(|(hits, _)| hits).collect())
    }

    /// [`LogSource::newest_timestamp`], synchronously.
    pub fn newest_timestamp_blocking(&self) -> Result<Option<i64>, SourceError> {
        let per_worker = self.scan(
            || None::<i64>,
            |newest, line| {
                if let Ok(Hit { timestamp_ms, .. }) = parse_line(self.format, line, &[]) {
                    *newest = Some(newest.map_or(timestamp_ms, |n| n.max(timestamp_ms)));
                }
            },
        )?;
        Ok(per_worker
            .into_iter()
            .filter_map(|(newest, _)| newest)
            .max())
    }
}

impl LogSource for FileSource {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let (source, spec) = (self.clone(), spec.clone());
        tokio::task::spawn_blocking(move || source.count_blocking(&spec))
            .await
            .expect("log reader panicked")
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || source.newest_timestamp_blocking())
            .await
            .expect("log reader panicked")
    }
}

/// Whether a file name is a WAF log file we read.
fn is_log_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(name);
    [".jsonl", ".json", ".log"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Adds the log files a path, directory or glob names.
fn expand(pattern: &str, files: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let path = Path::new(pattern);
    if path.is_file() {
        // A file named explicitly is read whatever its extension.
        files.push(path.to_owned());
    } else if path.is_dir() {
        walk(path, files)?;
    } else if pattern.contains(['*', '?', '[']) {
        let matches = glob::glob(pattern).map_err(|e| SourceError::BadPattern {
            pattern: pattern.to_owned(),
            message: e.msg.to_owned(),
        })?;
        for entry in matches {
            let entry = entry.map_err(|e| SourceError::Read {
                path: e.path().to_owned(),
                source: std::io::Error::new(e.error().kind(), e.error().to_string()),
            })?;
            if entry.is_dir() {
                walk(&entry, files)?;
            } else if is_log_file(&entry) {
                files.push(entry);
            }
        }
    }
    Ok(())
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let read_error = |source| SourceError::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if is_log_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// Hands every line of a gzip stream (members concatenated, as `cat a.gz
/// b.gz` makes) to `per_line`, without its newline, streamed: memory holds
/// one line and a buffer, never the whole file. Corrupt or truncated input
/// is an error after the lines before it.
pub fn gzip_lines(compressed: impl Read, mut per_line: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, MultiGzDecoder::new(compressed));
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        per_line(line.strip_suffix(b"\n").unwrap_or(&line));
    }
}

/// Bytes inflated per block handed from the inflating thread to the
/// counting one.
const INFLATED_BLOCK: usize = 1 << 20;
/// Blocks in flight between them: memory is bounded by this many blocks.
const BLOCKS_IN_FLIGHT: usize = 4;

/// [`gzip_lines`] on two cores: a thread of its own inflates the stream
/// into blocks of whole lines while the calling thread hands their lines to
/// `per_line`, so inflating and counting overlap. For a stream that would
/// otherwise leave a core idle (one large `.gz`); memory holds a few
/// blocks. Corrupt or truncated input is an error; the lines of the blocks
/// before it have been handed over.
pub fn gzip_lines_pipelined(
    compressed: impl Read + Send,
    per_line: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    gzip_lines_in_blocks(compressed, INFLATED_BLOCK, per_line)
}

/// [`gzip_lines_pipelined`] with blocks of about `block_bytes`.
fn gzip_lines_in_blocks(
    compressed: impl Read + Send,
    block_bytes: usize,
    mut per_line: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let (full, inflated) = std::sync::mpsc::sync_channel::<Vec<u8>>(BLOCKS_IN_FLIGHT);
    let (recycle, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let inflater = scope.spawn(move || inflate_blocks(compressed, block_bytes, &full, &spare));
        for block in inflated {
            split_lines(&block, &mut per_line);
            // The inflater may have finished: then the block is dropped.
            let _ = recycle.send(block);
        }
        inflater.join().expect("inflating thread panicked")
    })
}

/// Inflates `compressed` into blocks that end at a line's end (the last
/// block may not), sending each to `full`; reuses the blocks `spare` returns.
fn inflate_blocks(
    compressed: impl Read,
    block_bytes: usize,
    full: &std::sync::mpsc::SyncSender<Vec<u8>>,
    spare: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut decoder = MultiGzDecoder::new(BufReader::with_capacity(1 << 16, compressed));
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut block = spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(block_bytes));
        block.clear();
        block.append(&mut carry);
        // A line longer than a block grows the block.
        let mut filled = block.len();
        block.resize(filled.max(block_bytes / 2).max(1) * 2, 0);
        let mut ended = false;
        while filled < block.len() {
            match decoder.read(&mut block[filled..])? {
                0 => {
                    ended = true;
                    break;
                }
                n => filled += n,
            }
        }
        block.truncate(filled);
        if !ended {
            match memchr::memrchr(b'\n', &block) {
                Some(at) => carry.extend_from_slice(&block[at + 1..]),
                None => {
                    carry = block;
                    continue;
                }
            }
            block.truncate(block.len() - carry.len());
        }
        // The counting side stops taking blocks only when it is gone.
        if full.send(block).is_err() || ended {
            return Ok(());
        }
    }
}

/// Hands each line of `chunk` (without its newline) to `per_line`; the
/// last line may lack its newline.
fn split_lines(chunk: &[u8], per_line: &mut impl FnMut(&[u8])) {
    let mut line_start = 0;
    for newline in memchr::memchr_iter(b'\n', chunk) {
        per_line(&chunk[line_start..newline]);
        line_start = newline + 1;
    }
    if line_start < chunk.len() {
        per_line(&chunk[line_start..]);
    }
}

/// An opened log file.
enum Input {
    /// Memory-mapped plain text (`None` for an empty file, which cannot be mapped).
    Plain(Option<Mmap>),
    /// A gzip file, streamed.
    Gzip(PathBuf, u64),
}

impl Input {
    fn open(path: &Path) -> Result<Input, SourceError> {
        let read_error = |source| SourceError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        if path.extension().is_some_and(|e| e == "gz") {
            return Ok(Input::Gzip(path.to_owned(), len));
        }
        if len == 0 {
            return Ok(Input::Plain(None));
        }
        Ok(Input::Plain(Some(
            map_read_only(&file).map_err(read_error)?,
        )))
    }

    fn len(&self) -> u64 {
        match self {
            Input::Plain(map) => map.as_ref().map_or(0, |m| m.len() as u64),
            Input::Gzip(_, len) => *len,
        }
    }
}

/// Maps a file read-only: the one `unsafe` block of the workspace, because
/// reading a large log through the page cache without copying is what makes
/// the local path fast.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is only read, as bytes. If another process truncates
    // or rewrites the file while it is mapped, reads may see the new bytes
    // (a torn line is counted as malformed) or fault with SIGBUS; WAF and
    // its delivery to S3 or Firehose never modify a delivered log file.
    unsafe { Mmap::map(file) }
}

/// A slice of a plain file, or a whole gzip file.
enum Unit {
    Slice {
        input: usize,
        start: usize,
        end: usize,
    },
    Gzip {
        input: usize,
    },
}

/// Cuts plain files into line-aligned chunks; gzip files go whole.
fn work_units(inputs: &[Input], chunk_bytes: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
        match input {
            Input::Plain(None) => {}
            Input::Plain(Some(map)) => {
                let mut start = 0;
                while start < map.len() {
                    let target = (start + chunk_bytes).min(map.len());
                    let end = match memchr::memchr(b'\n', &map[target..]) {
                        Some(at) => target + at + 1,
                        None => map.len(),
                    };
                    units.push(Unit::Slice {
                        input: index,
                        start,
                        end,
                    });
                    start = end;
                }
            }
            Input::Gzip(..) => units.push(Unit::Gzip { input: index }),
        }
    }
    units
}

impl Unit {
    /// Hands every line of the unit to `per_line`, inflating gzip on a
    /// thread of its own when `pipelined`; returns the bytes read from disk
    /// (compressed bytes for gzip).
    fn read(
        &self,
        inputs: &[Input],
        pipelined: bool,
        mut per_line: impl FnMut(&[u8]),
    ) -> Result<u64, SourceError> {
        match (self, &inputs[self.input()]) {
            (Unit::Slice { start, end, .. }, Input::Plain(Some(map))) => {
                let chunk = &map[*start..*end];
                split_lines(chunk, &mut per_line);
                Ok(chunk.len() as u64)
            }
            (Unit::Gzip { .. }, Input::Gzip(path, len)) => {
                let read_error = |source| SourceError::Read {
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(read_error)?;
                if pipelined {
                    gzip_lines_pipelined(file, per_line)
                } else {
                    gzip_lines(file, per_line)
                }
                .map_err(read_error)?;
                Ok(*len)
            }
            _ => unreachable!("units are built from their own inputs"),
        }
    }

    fn input(&self) -> usize {
        match self {
            Unit::Slice { input, .. } | Unit::Gzip { input } => *input,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    fn gzip(members: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for member in members {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(member).unwrap();
            out.extend(encoder.finish().unwrap());
        }
        out
    }

    fn lines_of(
        read: impl FnOnce(&mut dyn FnMut(&[u8])) -> std::io::Result<()>,
    ) -> (Vec<Vec<u8>>, bool) {
        let mut lines = Vec::new();
        let ok = read(&mut |line: &[u8]| lines.push(line.to_vec())).is_ok();
        (lines, ok)
    }

    proptest! {
        /// Whatever the blocks cut through (lines longer than a block,
        /// empty lines, a missing last newline, several gzip members), the
        /// pipelined reader hands over the lines the plain reader does.
        #[test]
        fn pipelined_inflating_reads_the_same_lines(
            members in prop::collection::vec(
                prop::collection::vec(prop::sample::select(b"ab\n".to_vec()), 0..400), 1..4),
            block in 1usize..64,
        ) {
            let compressed = gzip(&members);
            let plain = lines_of(|f| gzip_lines(&compressed[..], f));
            let pipelined = lines_of(|f| gzip_lines_in_blocks(&compressed[..], block, f));
            prop_assert_eq!(pipelined, plain);
        }
    }

    #[test]
    fn pipelined_inflating_reports_a_truncated_stream() {
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let compressed = gzip(&[text]);
        let (lines, ok) =
            lines_of(|f| gzip_lines_in_blocks(&compressed[..compressed.len() / 2], 4096, f));
        assert!(!ok, "a truncated stream is an error");
        assert!(lines.len() < 20_000);
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}").into_bytes()),
            "the lines before it, in order"
        );
    }
}
