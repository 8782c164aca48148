//! The `[responder]` section: how the responder job runs.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;

use toml::Spanned;

use super::check::Checker;
use super::infra::{Infra, InfraMode};
use super::raw::{RawLease, RawLedger, RawResponder};
use super::targets::{ENDPOINT_URL, Region, check_region};

/// The `[responder]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responder {
    /// Where the ledger lives (default `state`, relative to the working directory).
    pub state_dir: PathBuf,
    /// Targets written at once (default 4).
    pub concurrency: NonZeroU32,
    /// When the daemon runs a cycle: a cron expression with seconds
    /// (`sec min hour day month weekday`), checked to parse.
    pub schedule: String,
    /// Each cycle starts up to this many seconds after its tick, at random,
    /// so many responders don't hit the AWS APIs at once (default 0).
    pub jitter_seconds: u32,
    /// Where the daemon serves `/healthz` and `/metrics`.
    pub listen: SocketAddr,
    /// A cycle that finds no record in its window, and none newer than
    /// this, reports the log feed stalled; `None`: the widest tier window.
    /// A site quiet for longer than its windows (staging at night) sets it
    /// higher.
    pub stale_after_minutes: Option<NonZeroU32>,
    /// How often the daemon asks the fast tiers' rate-based rules which
    /// addresses they are limiting (default 10 s: AWS WAF checks rates
    /// about every 10 s).
    pub fast_interval_seconds: NonZeroU32,
    /// Whether this responder applies whenever it can take the lease
    /// (primary) or only once the primary's lease has lapsed (standby).
    pub role: Role,
    /// Where the ledger is kept (default a file in `state_dir`).
    pub ledger: LedgerStore,
    /// The lease a responder must hold to apply; none for a lone responder.
    pub lease: Option<Lease>,
}

/// A responder's part in a primary/standby pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Applies whenever it holds the lease; a standby hands the lease back
    /// to it.
    Primary,
    /// Detects and plans every cycle, but applies only after the lease has
    /// lapsed, and hands it back when a primary asks.
    Standby,
}

impl Role {
    /// The word the policy file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// Where the ledger is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerStore {
    /// `<state_dir>/ledger.json`: one responder on one host.
    File,
    /// A DynamoDB table, shared by every responder and operator.
    DynamoDb(DynamoDbTable),
}

/// A DynamoDB table the responder keeps its ledger (and lease) in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbTable {
    /// The table name.
    pub table: String,
    /// Its region.
    pub region: Region,
    /// Another endpoint, such as a local moto server, instead of AWS.
    pub endpoint_url: Option<String>,
}

/// `[responder] lease`: who may apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The table holding the lease item (default the ledger's table, in the
    /// ledger's region).
    pub table: String,
    /// This responder's name in the lease; different on every responder.
    pub holder_id: String,
    /// How long a take or renewal holds the lease. At least twice the
    /// schedule's period, so the holder renews before it lapses.
    pub ttl_seconds: NonZeroU32,
    /// How far any responder's clock may be from the true time (default 5).
    /// A holder stops writing this long before its lease ends by its clock,
    /// and a taker waits this long after it by its own, so two holders never
    /// overlap.
    pub max_clock_skew_seconds: u32,
}

/// Every minute, on the minute.
pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";

impl Default for Responder {
    fn default() -> Self {
        Responder {
            state_dir: PathBuf::from("state"),
            concurrency: NonZeroU32::new(4).expect("4 is not zero"),
            schedule: DEFAULT_SCHEDULE.to_owned(),
            jitter_seconds: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            stale_after_minutes: None,
            fast_interval_seconds: NonZeroU32::new(10).expect("10 is not zero"),
            role: Role::Primary,
            ledger: LedgerStore::File,
            lease: None,
        }
    }
}

/// Checks `[responder]`; a missing key keeps its default.
pub(crate) fn check_responder(
    checker: &mut Checker<'_>,
    raw: Option<&Spanned<RawResponder>>,
    infra: Option<&Infra>,
) -> Responder {
    let mut responder = Responder::default();
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return responder;
    };
    if let Some(dir) = &raw.state_dir
        && let Some(dir) = checker.text(dir, "responder.state_dir")
    {
        responder.state_dir = PathBuf::from(dir);
    }
    if let Some(concurrency) = &raw.concurrency
        && let Some(concurrency) = checker.positive(concurrency, "responder.concurrency")
    {
        responder.concurrency = concurrency;
    }
    if let Some(schedule) = &raw.schedule {
        match cron::Schedule::from_str(schedule.get_ref()) {
            Ok(_) => responder.schedule = schedule.get_ref().clone(),
            Err(_) => {
                let help = Some(
                    "use six fields with seconds, such as \"0 * * * * *\" (every minute) or \"0 */5 * * * *\""
                        .to_owned(),
                );
                let message = format!("\"{}\" is not a cron schedule", schedule.get_ref());
                checker.error(schedule.span(), "responder.schedule", message, help);
            }
        }
    }
    if let Some(jitter) = &raw.jitter_seconds
        && let Some(jitter) = checker.in_range(jitter, "responder.jitter_seconds", 0, 3600)
    {
        responder.jitter_seconds = jitter;
    }
    if let Some(minutes) = &raw.stale_after_minutes
        && let Some(minutes) = checker.in_range(minutes, "responder.stale_after_minutes", 1, 10_080)
    {
        responder.stale_after_minutes = NonZeroU32::new(minutes);
    }
    if let Some(seconds) = &raw.fast_interval_seconds
        && let Some(seconds) = checker.in_range(seconds, "responder.fast_interval_seconds", 1, 3600)
        && let Some(seconds) = NonZeroU32::new(seconds)
    {
        responder.fast_interval_seconds = seconds;
    }
    if let Some(listen) = &raw.listen {
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => responder.listen = addr,
            Err(_) => {
                let help = Some("write an address and port, such as \"127.0.0.1:9464\"".to_owned());
                let message = format!("\"{}\" is not an address and port", listen.get_ref());
                checker.error(listen.span(), "responder.listen", message, help);
            }
        }
    }
    if let Some(role) = &raw.role {
        match checker.choice(role, "responder.role", &["primary", "standby"]) {
            Some("standby") => responder.role = Role::Standby,
            _ => responder.role = Role::Primary,
        }
    }
    if let Some(ledger) = &raw.ledger {
        responder.ledger = check_ledger(checker, ledger).unwrap_or(LedgerStore::File);
    }
    if let Some(lease) = &raw.lease {
        // A DynamoDB ledger with errors of its own is already reported.
        let ledger_written = raw
            .ledger
            .as_ref()
            .is_some_and(|l| l.get_ref().backend.get_ref() == "dynamodb");
        responder.lease = check_lease(checker, lease, &responder, ledger_written, infra);
    }
    if responder.role == Role::Standby
        && responder.lease.is_none()
        && let Some(role) = &raw.role
    {
        let help = Some(
            "add lease = { holder_id = \"standby-1\", ttl_seconds = 180 } with a dynamodb ledger"
                .to_owned(),
        );
        let message =
            "a standby needs a lease: without one it cannot tell when the primary is down"
                .to_owned();
        checker.error(role.span(), "responder.role", message, help);
    }
    responder
}

/// Checks `ledger = { backend = ..., table = ..., region = ... }`.
fn check_ledger(checker: &mut Checker<'_>, raw: &Spanned<RawLedger>) -> Option<LedgerStore> {
    let span = raw.span();
    let raw = raw.get_ref();
    match checker.choice(
        &raw.backend,
        "responder.ledger.backend",
        &["file", "dynamodb"],
    )? {
        "file" => {
            for (key, value) in [
                ("table", &raw.table),
                ("region", &raw.region),
                ("endpoint_url", &raw.endpoint_url),
            ] {
                if let Some(value) = value {
                    let message = format!("{key} does not apply to backend = \"file\"");
                    let help = Some(format!("remove {key}, or set backend = \"dynamodb\""));
                    checker.error(
                        value.span(),
                        &format!("responder.ledger.{key}"),
                        message,
                        help,
                    );
                }
            }
            Some(LedgerStore::File)
        }
        _ => {
            let mut missing = |key: &str, example: &str| {
                let message = format!("backend = \"dynamodb\" needs {key}");
                let help = Some(format!("add {key} = {example}"));
                checker.error(span.clone(), "responder.ledger", message, help);
            };
            if raw.table.is_none() {
                missing("table", "\"floodgate-ledger\"");
            }
            if raw.region.is_none() {
                missing("region", "\"eu-west-1\"");
            }
            let table = check_table_name(checker, raw.table.as_ref()?, "responder.ledger.table");
            let region = check_region(checker, raw.region.as_ref()?, "responder.ledger.region");
            let endpoint_url = match &raw.endpoint_url {
                Some(url) => {
                    Some(checker.url(url, "responder.ledger.endpoint_url", &ENDPOINT_URL)?)
                }
                None => None,
            };
            Some(LedgerStore::DynamoDb(DynamoDbTable {
                table: table?,
                region: region?,
                endpoint_url,
            }))
        }
    }
}

/// Checks `lease = { holder_id = ..., ttl_seconds = ... }` against the
/// ledger and schedule already checked.
fn check_lease(
    checker: &mut Checker<'_>,
    raw: &Spanned<RawLease>,
    responder: &Responder,
    ledger_written: bool,
    infra: Option<&Infra>,
) -> Option<Lease> {
    let span = raw.span();
    let raw = raw.get_ref();
    let ledger = match &responder.ledger {
        LedgerStore::DynamoDb(ledger) => Some(ledger),
        LedgerStore::File => {
            if !ledger_written {
                let message =
                    "a lease needs the shared ledger: a file ledger is not seen by the other responder"
                        .to_owned();
                let help = Some(
                    "add ledger = { backend = \"dynamodb\", table = \"floodgate-ledger\", region = \"eu-west-1\" }"
                        .to_owned(),
                );
                checker.error(span, "responder.lease", message, help);
            }
            None
        }
    };
    let table = match &raw.table {
        Some(table) => check_table_name(checker, table, "responder.lease.table"),
        None => ledger.map(|l| l.table.clone()),
    };
    let holder_id = check_holder_id(checker, &raw.holder_id);
    let max_clock_skew_seconds = match &raw.max_clock_skew_seconds {
        Some(skew) => checker.in_range(skew, "responder.lease.max_clock_skew_seconds", 0, 300),
        None => Some(DEFAULT_MAX_CLOCK_SKEW_SECONDS),
    };
    let ttl_seconds = checker.in_range(&raw.ttl_seconds, "responder.lease.ttl_seconds", 10, 86_400);
    // The daemon runs on `schedule`; the deployed task on the infra's
    // EventBridge rate. Either may be how the lease is renewed.
    let daemon = schedule_period_seconds(&responder.schedule).map(|p| (p, "the schedule runs"));
    let task = infra
        .filter(|i| i.mode == InfraMode::Scheduled)
        .and_then(|i| rate_period_seconds(&i.schedule_expression))
        .map(|p| (p, "the scheduled task runs"));
    let period = daemon.into_iter().chain(task).max();
    if let (Some(ttl), Some(skew), Some((period, what))) =
        (ttl_seconds, max_clock_skew_seconds, period)
    {
        // The holder renews once per cycle and stops writing `skew` early,
        // so the lease must outlast two periods plus the skew margin.
        let least = 2 * period + 2 * u64::from(skew);
        if u64::from(ttl) < least {
            let message = format!(
                "{ttl} s lapses between renewals: {what} every {period} s and each clock may be {skew} s off"
            );
            let help = Some(format!("set ttl_seconds to at least {least}"));
            checker.error(
                raw.ttl_seconds.span(),
                "responder.lease.ttl_seconds",
                message,
                help,
            );
            return None;
        }
    }
    ledger?;
    Some(Lease {
        table: table?,
        holder_id: holder_id?,
        ttl_seconds: NonZeroU32::new(ttl_seconds?)?,
        max_clock_skew_seconds: max_clock_skew_seconds?,
    })
}

/// The default bound on how far a responder's clock is from the true time.
pub const DEFAULT_MAX_CLOCK_SKEW_SECONDS: u32 = 5;

/// A DynamoDB table name: 3 to 255 letters, digits, `_`, `-` or `.`.
fn check_table_name(
    checker: &mut Checker<'_>,
    value: &Spanned<String>,
    path: &str,
) -> Option<String> {
    let name = value.get_ref();
    let valid = (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        let message = format!("\"{name}\" is not a DynamoDB table name");
        let help = Some("use 3 to 255 letters, digits, '_', '-' or '.'".to_owned());
        checker.error(value.span(), path, message, help);
    }
    valid.then(|| name.clone())
}

/// A holder id: 1 to 128 letters, digits, `_`, `-`, `.`, `:` or `@`.
fn check_holder_id(checker: &mut Checker<'_>, value: &Spanned<String>) -> Option<String> {
    let id = value.get_ref();
    let valid = is_holder_id(id);
    if !valid {
        let message = format!("\"{id}\" is not a holder id");
        let help = Some(
            "use 1 to 128 letters, digits, '_', '-', '.', ':' or '@', such as \"primary-eu-west-1\""
                .to_owned(),
        );
        checker.error(value.span(), "responder.lease.holder_id", message, help);
    }
    valid.then(|| id.clone())
}

/// Whether `id` is a holder id: 1 to 128 letters, digits, `_`, `-`, `.`,
/// `:` or `@`.
pub fn is_holder_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@'))
}

/// The period of an EventBridge `rate(N unit)` expression, in seconds;
/// `None` for `cron(...)`, `at(...)` or anything else.
pub fn rate_period_seconds(expression: &str) -> Option<u64> {
    let inner = expression.strip_prefix("rate(")?.strip_suffix(')')?;
    let (count, unit) = inner.trim().split_once(' ')?;
    let count: u64 = count.parse().ok()?;
    let unit_seconds = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(count * unit_seconds)
}

/// The longest gap between two runs of a cron schedule, in seconds, over
/// its next 500 runs; `None` when it does not parse.
pub fn schedule_period_seconds(schedule: &str) -> Option<u64> {
    let schedule = cron::Schedule::from_str(schedule).ok()?;
    // A fixed start keeps `check` deterministic.
    let start = chrono::DateTime::<chrono::Utc>::from_timestamp(1_767_225_600, 0)?;
    let runs: Vec<_> = schedule.after(&start).take(500).collect();
    runs.windows(2)
        .map(|pair| (pair[1] - pair[0]).num_seconds().unsigned_abs())
        .max()
}

#[cfg(test)]
mod tests {
    use super::schedule_period_seconds;

    #[test]
    fn a_rate_expression_has_a_period() {
        use super::rate_period_seconds;
        assert_eq!(rate_period_seconds("rate(1 minute)"), Some(60));
        assert_eq!(rate_period_seconds("rate(5 minutes)"), Some(300));
        assert_eq!(rate_period_seconds("rate(2 hours)"), Some(7200));
        assert_eq!(rate_period_seconds("cron(0/5 * * * ? *)"), None);
        assert_eq!(rate_period_seconds("rate(often)"), None);
    }

    #[test]
    fn the_period_is_the_longest_gap_between_runs() {
        assert_eq!(schedule_period_seconds("0 * * * * *"), Some(60));
        assert_eq!(schedule_period_seconds("*/5 * * * * *"), Some(5));
        assert_eq!(schedule_period_seconds("0 0,10 * * * *"), Some(50 * 60));
        assert_eq!(schedule_period_seconds("not cron"), None);
    }
}
