//! Requests per client IP over windows that end at one instant: the counts
//! every log source produces and detection reads.
//!
//! Memory grows with the number of distinct IPs, never with the number of
//! records: each IP holds one counter per window and per action.
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::traffic::{CountSpec, TrafficCounter};
//! use floodgate_responder::waflog::{Action, Hit};
//!
//! // 5-minute and 1-minute windows ending at t = 600 s.
//! let spec = CountSpec::new(600_000, &[300, 60]).unwrap();
//! let mut counter = TrafficCounter::new(spec);
//! let ip = "198.51.100.7".parse().unwrap();
//! for ts in [250_000, 400_000, 599_999, 600_000] {
//!     counter.add_hit(Hit { timestamp_ms: ts, client_ip: ip, action: Action::Allow });
//! }
//! let traffic = counter.finish();
//! let counts = traffic.get(ip).unwrap();
//! assert_eq!(counts.requests(300), Some(3)); // 250 s is outside (300, 600]
//! assert_eq!(counts.requests(60), Some(2));
//! ```

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::waflog::{Action, BadLine, Hit};

/// The most distinct windows one count can carry.
pub const MAX_WINDOWS: usize = 8;

/// Which windows to count: each covers `(end - window, end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountSpec {
    end_ms: i64,
    /// Distinct window lengths in seconds, ascending.
    windows: Vec<u32>,
    /// Per window: IPs with fewer requests may be left out by server-side
    /// sources, to keep their results small (1 keeps every IP).
    floors: Vec<u32>,
}

/// A count was asked for more distinct windows than [`MAX_WINDOWS`], or none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} distinct windows; between 1 and {MAX_WINDOWS} are supported")]
pub struct TooManyWindows(pub usize);

impl CountSpec {
    /// Windows of these lengths (seconds; duplicates merged) ending at `end_ms`.
    pub fn new(end_ms: i64, windows: &[u32]) -> Result<CountSpec, TooManyWindows> {
        let mut windows: Vec<u32> = windows.iter().copied().filter(|&w| w > 0).collect();
        windows.sort_unstable();
        windows.dedup();
        if windows.is_empty() || windows.len() > MAX_WINDOWS {
            return Err(TooManyWindows(windows.len()));
        }
        let floors = vec![1; windows.len()];
        Ok(CountSpec {
            end_ms,
            windows,
            floors,
        })
    }

    /// Lets server-side sources leave out IPs with fewer than `min_requests`
    /// in the window of `window_seconds` (the lowest threshold that matters).
    pub fn with_floor(mut self, window_seconds: u32, min_requests: u32) -> Self {
        if let Some(i) = self.windows.iter().position(|&w| w == window_seconds) {
            self.floors[i] = min_requests.max(1);
        }
        self
    }

    /// The floor of a window (1 when none was set).
    pub fn floor(&self, window_seconds: u32) -> u32 {
        self.windows
            .iter()
            .position(|&w| w == window_seconds)
            .map_or(1, |i| self.floors[i])
    }

    /// End of every window, in ms since the epoch (inclusive).
    pub fn end_ms(&self) -> i64 {
        self.end_ms
    }

    /// The window lengths in seconds, ascending.
    pub fn windows(&self) -> &[u32] {
        &self.windows
    }

    /// The longest window in seconds.
    pub fn widest(&self) -> u32 {
        *self.windows.last().expect("at least one window")
    }

    /// Start of the longest window, in ms since the epoch (exclusive).
    pub fn start_ms(&self) -> i64 {
        self.end_ms - i64::from(self.widest()) * 1000
    }
}

/// Accumulates hits; one per thread, merged at the end.
#[derive(Debug, Clone)]
pub struct TrafficCounter {
    spec: CountSpec,
    /// Window lengths in ms, ascending, for the hot loop.
    windows_ms: Vec<i64>,
    slots: FxHashMap<IpAddr, u32>,
    /// Per slot: one counter per window, then one per action.
    counts: Vec<u32>,
    stats: Stats,
}

/// What a count saw besides the per-IP numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Usable records read (malformed lines are not records).
    pub records: u64,
    /// Lines that were not usable records (counted, then skipped).
    pub malformed: u64,
    /// Usable records outside the widest window.
    pub outside_window: u64,
    /// Bytes read (or scanned, for server-side queries).
    pub bytes: u64,
    /// Server-side queries that hit their row limit. Their results hold
    /// every IP above the lowest count returned, and may miss IPs at it.
    pub truncated_queries: u64,
    /// What the second pass of a server-side count over several query
    /// partitions added (its bytes are in `bytes` too).
    pub second_pass: SecondPass,
}

/// The exact second pass of a count split over several queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SecondPass {
    /// Queries run.
    pub queries: u64,
    /// Rows they returned.
    pub rows: u64,
    /// Bytes they scanned.
    pub bytes: u64,
}

impl TrafficCounter {
    /// An empty counter for `spec`.
    pub fn new(spec: CountSpec) -> Self {
        TrafficCounter {
            windows_ms: spec.windows.iter().map(|&w| i64::from(w) * 1000).collect(),
            spec,
            slots: FxHashMap::default(),
            counts: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn stride(&self) -> usize {
        self.spec.windows.len() + Action::ALL.len()
    }

    fn slot(&mut self, ip: IpAddr) -> usize {
        // An IPv4-mapped IPv6 address is the IPv4 client it carries.
        let ip = ip.to_canonical();
        let stride = self.stride();
        let next = self.slots.len() as u32;
        let slot = *self.slots.entry(ip).or_insert(next) as usize;
        if slot == next as usize {
            self.counts.resize(self.counts.len() + stride, 0);
        }
        slot * stride
    }

    /// Counts one line: a record, or a malformed line.
    pub fn add_parsed(&mut self, parsed: Result<Hit, BadLine>) {
        match parsed {
            Ok(hit) => self.add_hit(hit),
            Err(_) => self.stats.malformed += 1,
        }
    }

    /// Counts one usable record.
    pub fn add_hit(&mut self, hit: Hit) {
        self.stats.records += 1;
        let age_ms = self.spec.end_ms - hit.timestamp_ms;
        let widest = *self.windows_ms.last().expect("at least one window");
        if !(0..widest).contains(&age_ms) {
            self.stats.outside_window += 1;
            return;
        }
        let base = self.slot(hit.client_ip);
        let windows = self.windows_ms.len();
        for (i, &window) in self.windows_ms.iter().enumerate() {
            if age_ms < window {
                self.counts[base + i] += 1;
            }
        }
        self.counts[base + windows + hit.action as usize] += 1;
    }

    /// Adds `requests` for `ip` in the window of `window_seconds`, as a
    /// server-side aggregate reports them.
    pub fn add_requests(&mut self, ip: IpAddr, window_seconds: u32, requests: u32) {
        if let Some(i) = self.spec.windows.iter().position(|&w| w == window_seconds) {
            let base = self.slot(ip);
            self.counts[base + i] = self.counts[base + i].saturating_add(requests);
        }
    }

    /// Adds to the read statistics.
    pub fn add_stats(&mut self, stats: Stats) {
        self.stats.records += stats.records;
        self.stats.malformed += stats.malformed;
        self.stats.outside_window += stats.outside_window;
        self.stats.bytes += stats.bytes;
        self.stats.truncated_queries += stats.truncated_queries;
        self.stats.second_pass.queries += stats.second_pass.queries;
        self.stats.second_pass.rows += stats.second_pass.rows;
        self.stats.second_pass.bytes += stats.second_pass.bytes;
    }

    /// Adds another counter's counts (same spec) into this one.
    pub fn merge(&mut self, other: TrafficCounter) {
        debug_assert_eq!(self.spec, other.spec);
        let stride = self.stride();
        for (ip, other_slot) in other.slots {
            let base = self.slot(ip);
            let from = other_slot as usize * stride;
            for i in 0..stride {
                self.counts[base + i] =
                    self.counts[base + i].saturating_add(other.counts[from + i]);
            }
        }
        self.add_stats(other.stats);
    }

    /// The counts, ready to read.
    pub fn finish(self) -> Traffic {
        Traffic { counter: self }
    }
}

/// Finished counts.
#[derive(Debug, Clone)]
pub struct Traffic {
    counter: TrafficCounter,
}

/// One IP's counts.
#[derive(Debug, Clone, Copy)]
pub struct IpCounts<'a> {
    windows: &'a [u32],
    counts: &'a [u32],
}

impl IpCounts<'_> {
    /// Requests in the window of that many seconds, if it was counted.
    pub fn requests(&self, window_seconds: u32) -> Option<u32> {
        self.windows
            .iter()
            .position(|&w| w == window_seconds)
            .map(|i| self.counts[i])
    }

    /// Requests per action over the widest window (none for server-side
    /// aggregates, which count requests only).
    pub fn actions(&self) -> impl Iterator<Item = (Action, u32)> + '_ {
        let actions = &self.counts[self.windows.len()..];
        Action::ALL
            .into_iter()
            .zip(actions.iter().copied())
            .filter(|&(_, n)| n > 0)
    }
}

impl Traffic {
    /// The windows counted.
    pub fn spec(&self) -> &CountSpec {
        &self.counter.spec
    }

    /// Usable records read, malformed lines, bytes.
    pub fn stats(&self) -> Stats {
        self.counter.stats
    }

    /// Number of distinct client IPs seen in the widest window.
    pub fn distinct_ips(&self) -> usize {
        self.counter.slots.len()
    }

    /// One IP's counts.
    pub fn get(&self, ip: IpAddr) -> Option<IpCounts<'_>> {
        self.counter
            .slots
            .get(&ip)
            .map(|&slot| self.counts_at(slot))
    }

    /// Every IP with its counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, IpCounts<'_>)> + '_ {
        self.counter
            .slots
            .iter()
            .map(|(&ip, &slot)| (ip, self.counts_at(slot)))
    }

    fn counts_at(&self, slot: u32) -> IpCounts<'_> {
        let stride = self.counter.stride();
        let base = slot as usize * stride;
        IpCounts {
            windows: &self.counter.spec.windows,
            counts: &self.counter.counts[base..base + stride],
        }
    }
}
