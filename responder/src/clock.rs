//! The one place that reads the system time. Everything else asks a
//! [`Clock`], so tests and `--now` can set the time instead of sleeping.

use std::sync::Mutex;

use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, Time};

/// A source of the current time, in UTC.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> OffsetDateTime;

    /// The current UTC day.
    fn today(&self) -> Date {
        self.now().date()
    }
}

/// A shared clock is a clock, so one can be handed to several parts.
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

/// The real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until told to move: for `--now` and tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn new(now: OffsetDateTime) -> Self {
        ManualClock(Mutex::new(now))
    }

    /// Moves the clock forward (or back, for a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Measures how long something took, for reports (monotonic, unlike the
/// wall clock a [`Clock`] gives).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts measuring.
    pub fn start() -> Self {
        Stopwatch(std::time::Instant::now())
    }

    /// Time since the start.
    pub fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
}

/// The clock a `--now` option asks for: stopped at that time, or the real one.
pub fn clock_at(now: Option<OffsetDateTime>) -> Box<dyn Clock> {
    match now {
        Some(now) => Box::new(ManualClock::new(now)),
        None => Box::new(SystemClock),
    }
}

/// Milliseconds since the Unix epoch, as WAF timestamps count.
pub fn unix_ms(instant: OffsetDateTime) -> i64 {
    (instant.unix_timestamp_nanos() / 1_000_000) as i64
}

/// An epoch-milliseconds timestamp as RFC 3339 (UTC).
pub fn rfc3339_from_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses a `--now` value: an RFC 3339 instant (`2026-11-22T08:30:00Z`) or a
/// plain date (`2026-11-22`, meaning its midnight UTC).
pub fn parse_instant(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(instant) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(instant.to_offset(time::UtcOffset::UTC));
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    match Date::parse(text, &date_format) {
        Ok(date) => Ok(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc()),
        Err(_) => Err(format!(
            "\"{text}\" is not an RFC 3339 time such as 2026-11-22T08:30:00Z, or a date such as 2026-11-22"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_instants_and_dates_as_utc() {
        assert_eq!(
            parse_instant("2026-11-22T08:30:00+02:00").unwrap(),
            datetime!(2026-11-22 06:30 UTC)
        );
        assert_eq!(
            parse_instant("2026-11-22").unwrap(),
            datetime!(2026-11-22 00:00 UTC)
        );
        assert!(
            parse_instant("yesterday")
                .unwrap_err()
                .contains("\"yesterday\"")
        );
    }

    #[test]
    fn epoch_milliseconds_round_trip() {
        let instant = datetime!(2026-11-20 10:00:00.25 UTC);
        assert_eq!(unix_ms(instant), 1_795_168_800_250);
        assert_eq!(
            rfc3339_from_ms(1_795_168_800_250),
            "2026-11-20T10:00:00.25Z"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(datetime!(2026-11-22 23:00 UTC));
        assert_eq!(clock.today(), time::macros::date!(2026 - 11 - 22));
        clock.advance(Duration::hours(2));
        assert_eq!(clock.now(), datetime!(2026-11-23 01:00 UTC));
        assert_eq!(clock.today(), time::macros::date!(2026 - 11 - 23));
    }
}
