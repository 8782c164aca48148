//! The `floodgate` command line: one module per command.
//!
//! Exit codes, for every command:
//! - 0: done; the policy is valid (warnings may have been printed);
//! - 1: invalid input or configuration; nothing was applied;
//! - 2: partial failure; some target did not converge (the responder commands).

mod check;
mod review;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock, parse_instant};
use crate::policy_file::LoadError;

/// Floodgate: an automated AWS WAF rate-limit and abuse responder.
///
/// One policy file holds the responder's tiers, the allow-list exceptions,
/// the tenant quotas and the WAF targets. These commands validate it and
/// show it to the ops who review changes to it.
#[derive(Debug, Parser)]
#[command(
    name = "floodgate",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 success, 1 invalid input or configuration (nothing applied), 2 partial failure."
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy file: exit 0 when it is valid (warnings are
    /// printed), 1 when it is not (every error is printed).
    Check(CheckArgs),
    /// List every allow-list exception and tenant override with its owner,
    /// reason and expiry, flagged when it is too broad, overlapping,
    /// duplicate or expired.
    Review(ReviewArgs),
}

/// Options every policy command takes.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The policy file.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "FLOODGATE_CONFIG",
        default_value = "floodgate.toml"
    )]
    pub config: PathBuf,
    /// Evaluate expiry as of this time instead of now: an RFC 3339 time
    /// (2026-11-22T08:30:00Z) or a date (2026-11-22, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub now: Option<OffsetDateTime>,
}

impl PolicyArgs {
    /// The clock these options ask for.
    pub fn clock(&self) -> Box<dyn Clock> {
        match self.now {
            Some(now) => Box::new(crate::clock::ManualClock::new(now)),
            None => Box::new(SystemClock),
        }
    }
}

/// `floodgate check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Which policy to check.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `floodgate review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Which policy to review.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// WAF log files or directories, to flag exceptions that matched no
    /// traffic and show the requests each one carried.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document for tools.
    Json,
}

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit 0.
    Success = 0,
    /// Exit 1: invalid input or configuration; nothing was applied.
    Invalid = 1,
    /// Exit 2: partial failure.
    Partial = 2,
}

/// A command that could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The policy could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The options ask for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Status, CliError> {
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Review(args) => review::run(&args),
    }
}

/// Prints a policy's diagnostics to stderr and says whether it loaded.
/// Shared by every command that reads the policy.
fn load_policy(args: &PolicyArgs) -> Result<Option<floodgate_rules::LoadedPolicy>, CliError> {
    let today = args.clock().today();
    match crate::policy_file::load(&args.config, today) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            Ok(Some(loaded))
        }
        Err(LoadError::Invalid(error)) => {
            eprintln!("{error}");
            let errors = error.errors().count();
            let warnings = error.diagnostics.len() - errors;
            eprintln!(
                "{}: invalid: {}, {}",
                args.config.display(),
                plural(errors, "error"),
                plural(warnings, "warning")
            );
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// `1 error`, `2 errors`, `2 allow entries`.
fn plural(count: usize, noun: &str) -> String {
    match (count, noun.strip_suffix('y')) {
        (1, _) => format!("{count} {noun}"),
        (_, Some(stem)) => format!("{count} {stem}ies"),
        (_, None) => format!("{count} {noun}s"),
    }
}
