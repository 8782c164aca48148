//! The one backoff schedule of every loop that waits and tries again
//! outside the AWS SDK's own retries: a WAFv2 write after a lock conflict,
//! a Cloudflare call after a 429 or 5xx, and the polls of a Cloudflare bulk
//! operation and of a Logs Insights query. The delays come from `backon`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays that start at `first` and double up to `max`, without end (each
/// loop has its own attempt count or deadline). With `jitter`, each delay
/// gets up to as much again at random, so writers that collided do not
/// retry in step; polls of one's own query need none.
pub(crate) fn doubling(
    first: Duration,
    max: Duration,
    jitter: bool,
) -> impl Iterator<Item = Duration> {
    let builder = ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times();
    let builder = if jitter {
        builder.with_jitter()
    } else {
        builder
    };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_and_jitter_adds_at_most_as_much_again() {
        // backon multiplies in f32: compare whole milliseconds.
        let ms = |delays: &mut dyn Iterator<Item = Duration>| -> Vec<u128> {
            delays.take(5).map(|d| d.as_millis()).collect()
        };
        let plain = ms(&mut doubling(
            Duration::from_millis(100),
            Duration::from_millis(500),
            false,
        ));
        assert_eq!(plain, [100, 200, 400, 500, 500]);
        for _ in 0..100 {
            let jittered = ms(&mut doubling(
                Duration::from_millis(100),
                Duration::from_millis(500),
                true,
            ));
            for (delay, base) in jittered.iter().zip(&plain) {
                assert!(
                    *delay >= *base && *delay <= *base * 2,
                    "{delay} ms for {base} ms"
                );
            }
        }
    }
}
