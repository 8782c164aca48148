//! The one place the crate reads the wall clock. Rate limiting itself runs
//! on governor's monotonic [`governor::clock::Clock`]; only override expiry
//! dates need the date.

use time::OffsetDateTime;

/// Now, in UTC.
pub(crate) fn wall_now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
