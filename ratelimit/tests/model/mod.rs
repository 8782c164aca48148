//! The independent model the layer's property tests check it against.

/// One GCRA limit as a token bucket in nanoseconds of credit: refilled one
/// nanosecond per nanosecond up to `interval × burst`, drained by `interval
/// × cost` per admitted request.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub interval: u64,
    pub capacity: u64,
    pub credit: u64,
    pub at: u64,
}

impl Bucket {
    pub fn refill(&mut self, now: u64) {
        self.credit = (self.credit + (now - self.at)).min(self.capacity);
        self.at = now;
    }
}

/// Full buckets for limits given as (interval in ns, burst).
pub fn buckets(limits: &[(u64, u64)]) -> Vec<Bucket> {
    limits
        .iter()
        .map(|&(interval, burst)| Bucket {
            interval,
            capacity: interval * burst,
            credit: interval * burst,
            at: 0,
        })
        .collect()
}
