//! Requests per aggregation key over windows that end at one instant: the
//! counts every log source produces and detection reads.
//!
//! A key is a client address cut to a prefix ([`Prefixes`]): by default an
//! IPv4 address is its own key and an IPv6 address counts under its /64. A
//! count may group by several prefix pairs at once (tiers may set their
//! own); each hit then counts once under each.
//!
//! Memory grows with the number of distinct keys and addresses, never with
//! the number of records: each key holds one counter per window and per
//! action, and a key wider than one address remembers the addresses seen in
//! it, to tell how many there were.
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
//!     counter.add_hit(Hit { timestamp_ms: ts, client_ip: ip, action: Action::Allow, scopes: 0 });
//! }
//! let traffic = counter.finish();
//! let counts = traffic.get(0, ip.into()).unwrap();
//! assert_eq!(counts.requests(300), Some(3)); // 250 s is outside (300, 600]
//! assert_eq!(counts.requests(60), Some(2));
//! ```

use std::net::IpAddr;

use floodgate_rules::policy::{Aggregation, Prefixes, RequestMatch};
use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::waflog::{Action, BadLine, Hit};

/// The most distinct windows one count can carry.
pub const MAX_WINDOWS: usize = 8;
/// The most distinct request matches one count can carry (a bit each in
/// [`Hit::scopes`]); a validated policy has no more.
pub const MAX_SCOPES: usize = floodgate_rules::policy::MAX_MATCHES;

/// The floor of a key's window that no tier reads: server-side sources
/// need not count it.
pub const NOT_READ: u32 = u32::MAX;

/// Which windows to count, each covering `(end - window, end]`, and by
/// which keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountSpec {
    end_ms: i64,
    /// Distinct window lengths in seconds, ascending.
    windows: Vec<u32>,
    /// How keys are counted, distinct; the first is the report's.
    keys: Vec<Aggregation>,
    /// The distinct request matches of the keys: bit `i` of a hit's
    /// `scopes` says it matches `scopes[i]`.
    scopes: Vec<RequestMatch>,
    /// Per key: the bit of its match, if it has one.
    key_scopes: Vec<Option<u32>>,
    /// Per key and window (`key * windows + window`): keys with fewer
    /// requests may be left out by server-side sources, to keep their
    /// results small (1 keeps every key).
    floors: Vec<u32>,
}

/// A count was asked for more distinct windows than [`MAX_WINDOWS`], or none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} distinct windows; between 1 and {MAX_WINDOWS} are supported")]
pub struct TooManyWindows(pub usize);

impl CountSpec {
    /// Windows of these lengths (seconds; duplicates merged) ending at
    /// `end_ms`, keyed by the default prefixes (IPv4 per address, IPv6 per
    /// /64).
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
            keys: vec![Prefixes::default().into()],
            scopes: Vec::new(),
            key_scopes: vec![None],
            floors,
        })
    }

    /// Keys counted these ways (duplicates merged; the first is the
    /// report's), instead of the default. Floors set before are reset.
    ///
    /// # Panics
    ///
    /// With more than [`MAX_SCOPES`] distinct matches, which a validated
    /// policy never has.
    pub fn with_keys(mut self, keys: &[Aggregation]) -> Self {
        self.keys.clear();
        self.scopes.clear();
        for key in keys {
            if !self.keys.contains(key) {
                self.keys.push(key.clone());
            }
            if let Some(scope) = &key.scope
                && !self.scopes.contains(scope)
            {
                self.scopes.push(scope.clone());
            }
        }
        assert!(
            self.scopes.len() <= MAX_SCOPES,
            "{} distinct tier matches; at most {MAX_SCOPES} are supported",
            self.scopes.len()
        );
        if self.keys.is_empty() {
            self.keys.push(Prefixes::default().into());
        }
        self.key_scopes = self
            .keys
            .iter()
            .map(|key| {
                let scope = key.scope.as_ref()?;
                self.scopes
                    .iter()
                    .position(|s| s == scope)
                    .map(|i| i as u32)
            })
            .collect();
        self.floors = vec![1; self.keys.len() * self.windows.len()];
        self
    }

    /// Lets server-side sources leave out keys of `prefixes` with fewer
    /// than `min_requests` in the window of `window_seconds` (the lowest
    /// threshold that matters).
    pub fn with_floor(mut self, key: &Aggregation, window_seconds: u32, min_requests: u32) -> Self {
        if let Some(i) = self.floor_index(key, window_seconds) {
            self.floors[i] = min_requests.max(1);
        }
        self
    }

    /// The floor of a key's window (1 when none was set).
    pub fn floor(&self, key: &Aggregation, window_seconds: u32) -> u32 {
        self.floor_index(key, window_seconds)
            .map_or(1, |i| self.floors[i])
    }

    fn floor_index(&self, key: &Aggregation, window_seconds: u32) -> Option<usize> {
        let key = self.key_index(key)?;
        let window = self.windows.iter().position(|&w| w == window_seconds)?;
        Some(key * self.windows.len() + window)
    }

    /// How keys are counted; the first is the report's.
    pub fn keys(&self) -> &[Aggregation] {
        &self.keys
    }

    /// The index of `key` among [`CountSpec::keys`].
    pub fn key_index(&self, key: &Aggregation) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    /// The request matches a source must test each record against, in the
    /// order of [`Hit::scopes`]' bits.
    pub fn scopes(&self) -> &[RequestMatch] {
        &self.scopes
    }

    /// The bit of `scope` in [`Hit::scopes`].
    pub fn scope_bit(&self, scope: &RequestMatch) -> Option<u32> {
        self.scopes
            .iter()
            .position(|s| s == scope)
            .map(|i| i as u32)
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
    /// By key index (into the spec's keys) and key.
    slots: FxHashMap<(u8, IpNet), u32>,
    /// Per slot: one counter per window, one per action, then the number
    /// of distinct addresses seen in the key.
    counts: Vec<u32>,
    /// The addresses seen in keys wider than one address, by key index.
    members: FxHashSet<(u8, IpAddr)>,
    /// Keys whose address count came (in part) from a prefix aggregate:
    /// a lower bound, not a union of known addresses.
    at_least: FxHashSet<(u8, IpNet)>,
    stats: Stats,
}

/// What a count saw besides the per-IP numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Usable records read (malformed lines are not records).
    pub records: u64,
    /// Lines that were not usable records (counted, then skipped).
    pub malformed: u64,
    /// Usable records outside the widest window.
    pub outside_window: u64,
    /// Records inside each window, in the order of the spec's windows
    /// (ascending). Empty when the source cannot tell: a server-side count
    /// whose service gave no statistics.
    pub in_windows: Vec<u64>,
    /// The newest record read, ms since the epoch, inside the window or
    /// not (`None` when nothing was read, or for server-side counts).
    pub newest_ms: Option<i64>,
    /// Bytes read (or scanned, for server-side queries).
    pub bytes: u64,
    /// Parts of a server-side count that its row limit cut and that no
    /// later pass or split repaired: each holds every key above its lowest
    /// count, and may miss keys at it. Empty when every count is exact.
    pub incomplete: Vec<CutCount>,
    /// What the passes after the first added to a server-side count: the
    /// exact counts of candidates across query partitions, and prefix
    /// counts where a result was cut (their bytes are in `bytes` too).
    pub second_pass: SecondPass,
    /// Server-side queries run over halves of a result the row limit cut
    /// (their bytes are in `bytes`).
    pub split_queries: u64,
    /// Server-side queries run in all: every pass, and the splits.
    pub queries: u64,
    /// Objects read whole (S3).
    pub objects: u64,
    /// Objects that could not be fetched or decoded, and were skipped (S3).
    pub skipped_objects: u64,
}

/// One part of a server-side count that stayed cut by the row limit
/// (the query budget ran out before splitting repaired it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct CutCount {
    /// The region queried.
    pub region: String,
    /// Its log groups.
    pub log_groups: Vec<String>,
    /// The window counted.
    pub window_seconds: u32,
    /// Whether it counted one tier's `match` rather than every request.
    pub scoped: bool,
    /// The client addresses it counted: `all`, or one family's subnet.
    pub addresses: String,
    /// The fewest requests of a row it returned: keys at this count or
    /// under may be missing.
    pub lowest: u32,
}

impl CutCount {
    /// What identifies the part: where, which window, which addresses.
    pub fn part(&self) -> (&str, &[String], u32, bool, &str) {
        (
            &self.region,
            &self.log_groups,
            self.window_seconds,
            self.scoped,
            &self.addresses,
        )
    }
}

/// The passes of a server-side count after the first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
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
        let spec_windows = spec.windows.len();
        TrafficCounter {
            windows_ms: spec.windows.iter().map(|&w| i64::from(w) * 1000).collect(),
            spec,
            slots: FxHashMap::default(),
            counts: Vec::new(),
            members: FxHashSet::default(),
            at_least: FxHashSet::default(),
            stats: Stats {
                in_windows: vec![0; spec_windows],
                ..Stats::default()
            },
        }
    }

    fn stride(&self) -> usize {
        self.spec.windows.len() + Action::ALL.len() + 1
    }

    /// The base of the slot of key `key` (a key index) and `net`, created
    /// empty if new.
    fn slot(&mut self, key: u8, net: IpNet) -> usize {
        let stride = self.stride();
        let next = self.slots.len() as u32;
        let slot = *self.slots.entry((key, net)).or_insert(next) as usize;
        if slot == next as usize {
            self.counts.resize(self.counts.len() + stride, 0);
            if net.prefix_len() == net.max_prefix_len() {
                self.counts[slot * stride + stride - 1] = 1;
            }
        }
        slot * stride
    }

    /// The slot of `ip`'s key under key index `key`, with `ip` recorded as
    /// seen in it. `ip` is canonical: an IPv4-mapped IPv6 address is the
    /// IPv4 client it carries.
    fn slot_of(&mut self, key: usize, ip: IpAddr) -> usize {
        let net = self.spec.keys[key].prefixes.key(ip);
        let base = self.slot(key as u8, net);
        if net.prefix_len() < net.max_prefix_len() && self.members.insert((key as u8, ip)) {
            let addresses = base + self.stride() - 1;
            self.counts[addresses] += 1;
        }
        base
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
        self.stats.newest_ms = self.stats.newest_ms.max(Some(hit.timestamp_ms));
        let age_ms = self.spec.end_ms - hit.timestamp_ms;
        let widest = *self.windows_ms.last().expect("at least one window");
        if !(0..widest).contains(&age_ms) {
            self.stats.outside_window += 1;
            return;
        }
        for (records, &window) in self.stats.in_windows.iter_mut().zip(&self.windows_ms) {
            *records += u64::from(age_ms < window);
        }
        let windows = self.windows_ms.len();
        let ip = hit.client_ip.to_canonical();
        for key in 0..self.spec.keys.len() {
            if let Some(bit) = self.spec.key_scopes[key]
                && hit.scopes & (1 << bit) == 0
            {
                continue;
            }
            let base = self.slot_of(key, ip);
            for (i, &window) in self.windows_ms.iter().enumerate() {
                if age_ms < window {
                    self.counts[base + i] += 1;
                }
            }
            self.counts[base + windows + hit.action as usize] += 1;
        }
    }

    /// Adds `requests` for `ip` in the window of `window_seconds`, as a
    /// server-side aggregate reports them, under each of its keys that
    /// count the requests of `scope` (a bit of [`Hit::scopes`], or `None`
    /// for all requests).
    pub fn add_requests(
        &mut self,
        ip: IpAddr,
        window_seconds: u32,
        requests: u32,
        scope: Option<u32>,
    ) {
        self.add_requests_where(ip, window_seconds, requests, scope, |_| true);
    }

    /// [`TrafficCounter::add_requests`], under only the keys whose
    /// prefixes `wanted` accepts.
    pub fn add_requests_where(
        &mut self,
        ip: IpAddr,
        window_seconds: u32,
        requests: u32,
        scope: Option<u32>,
        wanted: impl Fn(&Prefixes) -> bool,
    ) {
        if let Some(i) = self.spec.windows.iter().position(|&w| w == window_seconds) {
            let ip = ip.to_canonical();
            for key in 0..self.spec.keys.len() {
                if self.spec.key_scopes[key] != scope || !wanted(&self.spec.keys[key].prefixes) {
                    continue;
                }
                let base = self.slot_of(key, ip);
                self.counts[base + i] = self.counts[base + i].saturating_add(requests);
            }
        }
    }

    /// Adds `requests` from `addresses` distinct addresses in `net`, in the
    /// window of `window_seconds`, as a server-side aggregate by prefix
    /// reports them, under each key of `scope` that groups `net`'s family
    /// by a prefix wider than one address and no longer than `net`'s. The
    /// keys' address counts take the largest reported (the addresses
    /// themselves are not known).
    pub fn add_prefix_requests(
        &mut self,
        net: IpNet,
        window_seconds: u32,
        requests: u32,
        addresses: u32,
        scope: Option<u32>,
    ) {
        let Some(i) = self.spec.windows.iter().position(|&w| w == window_seconds) else {
            return;
        };
        for key in 0..self.spec.keys.len() {
            let prefixes = self.spec.keys[key].prefixes;
            let length = if net.addr().is_ipv4() {
                prefixes.ipv4
            } else {
                prefixes.ipv6
            };
            if self.spec.key_scopes[key] != scope
                || length == net.max_prefix_len()
                || length > net.prefix_len()
            {
                continue;
            }
            let key_net = IpNet::new(net.addr(), length)
                .expect("a prefix no longer than the net's")
                .trunc();
            let base = self.slot(key as u8, key_net);
            self.counts[base + i] = self.counts[base + i].saturating_add(requests);
            let seen = base + self.stride() - 1;
            self.counts[seen] = self.counts[seen].max(addresses);
            self.at_least.insert((key as u8, key_net));
        }
    }

    /// The read statistics so far.
    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Adds to the read statistics.
    pub fn add_stats(&mut self, stats: Stats) {
        self.stats.records += stats.records;
        self.stats.malformed += stats.malformed;
        self.stats.outside_window += stats.outside_window;
        if self.stats.in_windows.len() < stats.in_windows.len() {
            self.stats.in_windows.resize(stats.in_windows.len(), 0);
        }
        for (mine, theirs) in self.stats.in_windows.iter_mut().zip(stats.in_windows) {
            *mine += theirs;
        }
        self.stats.newest_ms = self.stats.newest_ms.max(stats.newest_ms);
        self.stats.bytes += stats.bytes;
        self.stats.incomplete.extend(stats.incomplete);
        self.stats.split_queries += stats.split_queries;
        self.stats.queries += stats.queries;
        self.stats.second_pass.queries += stats.second_pass.queries;
        self.stats.second_pass.rows += stats.second_pass.rows;
        self.stats.second_pass.bytes += stats.second_pass.bytes;
        self.stats.objects += stats.objects;
        self.stats.skipped_objects += stats.skipped_objects;
    }

    /// Adds another counter's counts (same spec) into this one.
    pub fn merge(&mut self, other: TrafficCounter) {
        debug_assert_eq!(self.spec, other.spec);
        let stride = self.stride();
        for ((key, net), other_slot) in other.slots {
            let base = self.slot(key, net);
            let from = other_slot as usize * stride;
            // The address count is merged below, from the members.
            for i in 0..stride - 1 {
                self.counts[base + i] =
                    self.counts[base + i].saturating_add(other.counts[from + i]);
            }
        }
        self.at_least.extend(other.at_least);
        for (key, ip) in other.members {
            if self.members.insert((key, ip)) {
                let net = self.spec.keys[key as usize].prefixes.key(ip);
                let addresses = self.slots[&(key, net)] as usize * stride + stride - 1;
                self.counts[addresses] += 1;
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

/// One key's counts.
#[derive(Debug, Clone, Copy)]
pub struct IpCounts<'a> {
    windows: &'a [u32],
    counts: &'a [u32],
    addresses_at_least: bool,
}

impl IpCounts<'_> {
    /// Distinct addresses seen in the key (1 for a single address).
    pub fn addresses(&self) -> u32 {
        *self.counts.last().expect("the address count")
    }

    /// Whether [`IpCounts::addresses`] is a lower bound rather than the
    /// count of the addresses seen: a server-side count by prefix
    /// (Logs Insights' `count_distinct`, per region) gave it.
    pub fn addresses_at_least(&self) -> bool {
        self.addresses_at_least
    }

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
        let actions = &self.counts[self.windows.len()..self.counts.len() - 1];
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
    pub fn stats(&self) -> &Stats {
        &self.counter.stats
    }

    /// Number of distinct keys of the report's prefixes seen in the widest
    /// window.
    pub fn distinct_keys(&self) -> usize {
        self.counter
            .slots
            .keys()
            .filter(|(key, _)| *key == 0)
            .count()
    }

    /// The counts of `net` under key index `key` (0 is the report's).
    pub fn get(&self, key: usize, net: IpNet) -> Option<IpCounts<'_>> {
        self.counter
            .slots
            .get(&(key as u8, net))
            .map(|&slot| self.counts_at(key as u8, net, slot))
    }

    /// Every key with its key index and counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, IpNet, IpCounts<'_>)> + '_ {
        self.counter
            .slots
            .iter()
            .map(|(&(key, net), &slot)| (key as usize, net, self.counts_at(key, net, slot)))
    }

    /// The addresses seen in `net` under key index `key`, ascending (just
    /// `net`'s address for a single-address key).
    pub fn addresses_in(&self, key: usize, net: IpNet) -> Vec<IpAddr> {
        if net.prefix_len() == net.max_prefix_len() {
            return vec![net.addr()];
        }
        let mut found: Vec<IpAddr> = self
            .counter
            .members
            .iter()
            .filter(|&&(k, ip)| k as usize == key && net.contains(&ip))
            .map(|&(_, ip)| ip)
            .collect();
        found.sort_unstable();
        found
    }

    fn counts_at(&self, key: u8, net: IpNet, slot: u32) -> IpCounts<'_> {
        let stride = self.counter.stride();
        let base = slot as usize * stride;
        IpCounts {
            windows: &self.counter.spec.windows,
            counts: &self.counter.counts[base..base + stride],
            addresses_at_least: self.counter.at_least.contains(&(key, net)),
        }
    }
}
