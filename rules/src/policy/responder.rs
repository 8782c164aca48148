//! The `[responder]` section: how the responder job runs.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawResponder;

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
        }
    }
}

/// Checks `[responder]`; a missing key keeps its default.
pub(crate) fn check_responder(
    checker: &mut Checker<'_>,
    raw: Option<&Spanned<RawResponder>>,
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
    responder
}
