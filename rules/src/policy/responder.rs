//! The `[responder]` section: how the responder job runs.

use std::num::NonZeroU32;
use std::path::PathBuf;

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
}

impl Default for Responder {
    fn default() -> Self {
        Responder {
            state_dir: PathBuf::from("state"),
            concurrency: NonZeroU32::new(4).expect("4 is not zero"),
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
    responder
}
