//! The `floodgate` command line: one module per command.
//!
//! Exit codes, for every command:
//! - 0: done; the policy is valid (warnings may have been printed);
//! - 1: invalid input or configuration; nothing was applied;
//! - 2: partial failure; some target did not converge (the responder commands).

mod backtest;
mod check;
mod gen_logs;
mod healthcheck;
mod manual;
mod plan;
mod render_infra;
mod review;
mod run;
mod status;
mod top;
mod why;

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use floodgate_rules::Policy;
use floodgate_rules::policy::{LogFormat as RecordFormat, LogSourceConfig};
use time::OffsetDateTime;

use crate::clock::{Clock, clock_at, parse_instant};
use crate::loggen::Timestamps;
use crate::policy_file::LoadError;

/// Floodgate: an automated WAF rate-limit and abuse responder.
///
/// It reads WAF logs (files, S3, CloudWatch Logs, Cloudflare's Logpush),
/// finds the top offenders at the policy's tiers and pushes block lists to
/// AWS WAF in every region, to CloudFront and to Cloudflare, expires them
/// on time and never blocks an allow-listed exception. One policy file
/// holds the tiers, the allow-list exceptions, the tenant quotas of the
/// rate-limit middleware and the targets; `check` and `review` show it to
/// the ops who review changes to it.
#[derive(Debug, Parser)]
#[command(
    name = "floodgate",
    version = env!("FLOODGATE_VERSION"),
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 success, 1 invalid input or configuration (nothing applied), 2 partial failure."
)]
pub struct Cli {
    /// Log lines on stderr: `text` for people, `json` (one object a line)
    /// for log pipelines. The level comes from FLOODGATE_LOG (default
    /// `warn`; `info` adds each run report).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy file: exit 0 when it is valid (warnings are
    /// printed), 1 when it is not (every error is printed).
    Check(CheckArgs),
    /// List every allow-list exception and tenant override with its owner,
    /// reason and expiry, flagged when it is too broad, overlapping,
    /// duplicate or expired. With --base, review a change instead: what it
    /// adds, removes, widens or extends, the traffic each change touches
    /// (--logs) and the blocks in force it would end; exit 2 when a change
    /// needs a second reviewer.
    Review(ReviewArgs),
    /// Run responder cycles: detect offenders in the policy's [source], plan
    /// blocks against the ledger, write every [[targets]] entry, save the
    /// ledger, report. With --once, one cycle: exit 0 converged, 1 bad input
    /// (nothing written), 2 some target failed. Without, a daemon on the
    /// policy's schedule that exits 0 on SIGTERM.
    Run(RunArgs),
    /// A dry run of `run`: per target, what would be added and removed and
    /// why (tier, requests, expiry). Writes nothing. Exit 0, or with
    /// --detailed-exitcode 0 for no changes and 2 for changes; 1 on bad
    /// input or a target that can't be read.
    Plan(PlanArgs),
    /// The blocks in force (tier, expiry, offences) from the ledger, and
    /// per target whether its IP sets hold exactly those. Writes nothing.
    /// Exit 0 in sync, 2 drift or an unreadable target, 1 bad input.
    Status(StatusArgs),
    /// Block an address or range on every target now, for --minutes, with
    /// a reason; recorded in the ledger as `manual`. Exit as for run.
    Block(BlockArgs),
    /// End the blocks an address or range has on every target now, and keep
    /// detection from blocking it again for --suppress-minutes. Exit as for run.
    Unblock(UnblockArgs),
    /// Why is this address (or range) blocked, or not? From the ledger and
    /// the targets: by which block (tier, requests, source, when seen,
    /// offences, the next block's length), where (each target, in sync or
    /// not), until when, which allow-list entry covers it, and the exact
    /// `floodgate unblock` command. Writes nothing. Exit 0 answered, 2 a
    /// target could not be read, 1 bad input.
    Why(WhyArgs),
    /// Replay historical WAF logs through detection and planning with the
    /// clock stepping from --from to --to: which addresses would have been
    /// blocked, for how long, the requests that would have stopped, the
    /// allow-list's part and the circuit breaker. Writes an HTML report with
    /// charts; writes nothing to any target or ledger.
    Backtest(BacktestArgs),
    /// Rank client IPs by requests in WAF (or Cloudflare) logs over a window, with the
    /// tier each reached: who is hammering us right now.
    Top(TopArgs),
    /// Write realistic synthetic AWS WAF logs, or the same requests as
    /// Cloudflare request logs (benign traffic mixed with attacks),
    /// deterministically, for tests, benchmarks and demos.
    GenLogs(GenLogsArgs),
    /// Ask a running daemon's /healthz whether its last cycle succeeded
    /// recently: exit 0 on 200, 1 otherwise with the reason. For container
    /// health checks and Kubernetes probes.
    Healthcheck(HealthcheckArgs),
    /// Write the CloudFormation templates under infra/ from the policy (web
    /// ACL rules from the tiers and allow-list, the responder's role,
    /// schedule and ledger), so no threshold or range is typed twice.
    RenderInfra(RenderInfraArgs),
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
    /// Act as if it were this time instead of now: the tier windows end
    /// here (run, plan, block, unblock), and blocks and allow-list
    /// exceptions expire as of it (every command; for backtest, only the
    /// exceptions, as its clock steps from --from to --to). An RFC 3339
    /// time (2026-11-22T08:30:00Z) or a date (2026-11-22, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub now: Option<OffsetDateTime>,
}

impl PolicyArgs {
    /// The clock these options ask for.
    pub fn clock(&self) -> Box<dyn Clock> {
        clock_at(self.now)
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
    /// Log files, directories or globs, or one s3://bucket/prefix/
    /// (every object under it is read, so name a day or an hour folder):
    /// flags allow entries that matched no request in them and shows the
    /// requests each entry carried.
    #[arg(long, value_name = "PATH|S3_URL", num_args = 1..)]
    pub logs: Vec<String>,
    /// What wrote the logs.
    #[command(flatten)]
    pub logs_from: LogsFromArgs,
    /// Review the change from this version of the policy: a file, or a git
    /// revision (main, HEAD~1, a commit) of the --config file, read with
    /// `git show REV:./FILE` from the file's folder. Lists each exception,
    /// override, tier and plan added, removed, widened, extended or
    /// narrowed, with the traffic of --logs inside each changed exception
    /// and the blocks in force (from the ledger) it would end. Exit 2 when
    /// a change needs a second reviewer: an exception wider than a /24 (or
    /// /48), one lasting over a year, a new owner, a loosened block tier, or
    /// blocks it would end now.
    #[arg(long, value_name = "FILE|REV")]
    pub base: Option<String>,
    /// Output format: markdown for a pull-request comment.
    #[arg(long, value_enum, default_value_t = ReviewFormat::Table)]
    pub format: ReviewFormat,
}

/// How `review` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReviewFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for tools.
    Json,
    /// A Markdown table, for a pull-request comment.
    Markdown,
}

/// `--logs-from`, beside `--logs`.
#[derive(Debug, Args)]
pub struct LogsFromArgs {
    /// What wrote the logs --logs names: waf (AWS WAF, directly or through
    /// Firehose) or cloudflare (Logpush's http_requests dataset as NDJSON,
    /// any timestamp format; in S3, Logpush's YYYYMMDD/ folders). Default:
    /// the policy's [source] format, else waf.
    #[arg(
        long,
        value_name = "FORMAT",
        requires = "logs",
        value_parser = record_format_parser(),
    )]
    pub logs_from: Option<RecordFormat>,
}

/// Reads a [`RecordFormat`] by its name, listing the names in `--help`.
fn record_format_parser() -> impl TypedValueParser<Value = RecordFormat> {
    PossibleValuesParser::new(RecordFormat::ALL.map(|(name, _)| name))
        .map(|name| RecordFormat::from_name(&name).expect("a listed format"))
}

impl LogsFromArgs {
    /// The format asked for, else the one `policy`'s `[source]` reads.
    pub fn resolve(&self, policy: &Policy) -> RecordFormat {
        self.logs_from
            .or_else(|| policy.source.as_ref().and_then(LogSourceConfig::format))
            .unwrap_or_default()
    }
}

/// `floodgate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The policy, and the time the cycle runs at (`--now`, for replaying
    /// historic logs and for tests).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Run one cycle and exit. Without it, run cycles on `[responder]
    /// schedule` (cron, with seconds), never two at once, serving /healthz
    /// and /metrics on `[responder] listen`, until SIGTERM or SIGINT.
    #[arg(long)]
    pub once: bool,
    /// Output format of the run report.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Overrides `[responder] role`, so the primary and the standby can
    /// run one reviewed policy file.
    #[arg(long, value_parser = ["primary", "standby"])]
    pub role: Option<String>,
    /// Overrides `[responder] lease.holder_id`: this responder's name in the
    /// lease, different on every responder.
    #[arg(long, value_name = "ID")]
    pub holder_id: Option<String>,
    /// After each cycle, print one line of CloudWatch embedded metric format
    /// on stdout: SuccessfulCycles (1 or 0) and CycleSeconds in the
    /// `Floodgate` namespace, dimension Responder = `[infra] name`. The
    /// awslogs driver ships it and CloudWatch extracts the metrics, with no
    /// agent; render-infra's service mode alarms on them.
    #[arg(long)]
    pub emf_metrics: bool,
}

/// `floodgate plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The policy, and the time to plan at (`--now`).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Exit 2 when some target would change, 0 when none would.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// `floodgate status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The policy, and the time to report at (`--now`).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `floodgate why`.
#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The address or range, such as 203.0.113.7 or 2001:db8::/64.
    #[arg(value_name = "IP|CIDR")]
    pub subject: String,
    /// The policy (its ledger, targets and allow-list), and the time to
    /// answer at (`--now`).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `floodgate block`.
#[derive(Debug, Args)]
pub struct BlockArgs {
    /// The address or range, such as 203.0.113.7 or 203.0.113.0/24.
    #[arg(value_name = "IP|CIDR")]
    pub net: String,
    /// How long the block lasts.
    #[arg(long)]
    pub minutes: u32,
    /// Why: kept in the ledger for the next reader.
    #[arg(long)]
    pub reason: String,
    /// The policy (its targets and ledger), and the time (`--now`).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `floodgate unblock`.
#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The address or range; every block inside it ends.
    #[arg(value_name = "IP|CIDR")]
    pub net: String,
    /// Why: kept in the ledger for the next reader.
    #[arg(long)]
    pub reason: String,
    /// How long detection may not block it again.
    #[arg(long, default_value_t = 60)]
    pub suppress_minutes: u32,
    /// The policy (its targets and ledger), and the time (`--now`).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `floodgate backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The policy to test.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Log files (.jsonl, .json, .log, or .gz of those), directories or
    /// globs; or one s3://bucket/prefix/ holding WAF's or Firehose's
    /// YYYY/MM/DD/HH/ folders (or a folder above them, such as AWSLogs/),
    /// of which only the period's hours are listed. S3 uses the standard
    /// AWS environment: AWS_REGION, AWS_ENDPOINT_URL, credentials.
    #[arg(long, value_name = "PATH|S3_URL", num_args = 1.., required = true)]
    pub logs: Vec<String>,
    /// What wrote the logs.
    #[command(flatten)]
    pub logs_from: LogsFromArgs,
    /// Start of the period: an RFC 3339 time or a date.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub from: OffsetDateTime,
    /// End of the period.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub to: OffsetDateTime,
    /// How far the clock moves each step: seconds, or with s, m or h.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub step: Duration,
    /// Where to write the HTML report.
    #[arg(long, value_name = "FILE", default_value = "backtest.html")]
    pub out: PathBuf,
    /// Format of the summary on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `floodgate top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Log files (.jsonl, .json, .log, or .gz of those), directories or
    /// globs, or one s3://bucket/prefix/ (as for backtest); without it, the
    /// policy's [source] (files, CloudWatch Logs or S3).
    #[arg(long, value_name = "PATH|S3_URL", num_args = 1..)]
    pub logs: Vec<String>,
    /// What wrote the logs.
    #[command(flatten)]
    pub logs_from: LogsFromArgs,
    /// A policy file, to classify IPs into its tiers and mark allow-listed
    /// ones, and to read its [source] when --logs is not given. As for
    /// every command: this, else FLOODGATE_CONFIG, else ./floodgate.toml
    /// when there is one; without any, `top` ranks only.
    #[arg(long, short = 'c', value_name = "FILE", env = "FLOODGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The window to rank by, such as 300, 90s, 5m or 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub window: Duration,
    /// End of the window (RFC 3339 time or date); default: the newest record.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub now: Option<OffsetDateTime>,
    /// How many IPs to show.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `floodgate gen-logs`.
#[derive(Debug, Args)]
pub struct GenLogsArgs {
    /// Where to write; gzip-compressed when the name ends in .gz.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Seed of the pseudo-random choices: the same seed gives the same file.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Time of the first record (RFC 3339 time or date).
    #[arg(long, value_name = "TIME", value_parser = parse_instant, default_value = "2026-11-20T10:00:00Z")]
    pub start: OffsetDateTime,
    /// Minutes of traffic.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub minutes: u32,
    /// Benign records over the whole period.
    #[arg(long, default_value_t = 10_000)]
    pub benign_records: u64,
    /// Distinct benign client IPs.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub benign_ips: u32,
    /// Leave out the attack scenarios.
    #[arg(long)]
    pub no_attacks: bool,
    /// What the records look like: waf (AWS WAF's log format) or
    /// cloudflare (Logpush's http_requests dataset as NDJSON).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "waf",
        value_parser = record_format_parser(),
    )]
    pub format: RecordFormat,
    /// How cloudflare records write EdgeStartTimestamp, as Logpush's
    /// timestamp_format: unixnano (integer nanoseconds, Logpush's default),
    /// unix (integer seconds) or rfc3339 (a string, to the second).
    #[arg(long, value_enum, default_value_t = Timestamps::UnixNano)]
    pub timestamps: Timestamps,
}

/// `floodgate healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to ask; default: /healthz on the policy's `[responder]
    /// listen` (on loopback when it listens on every address).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The policy whose `[responder] listen` to ask, when --url is not given.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "FLOODGATE_CONFIG",
        default_value = "floodgate.toml"
    )]
    pub config: PathBuf,
    /// How long to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub timeout_seconds: u16,
}

/// `floodgate render-infra`.
#[derive(Debug, Args)]
pub struct RenderInfraArgs {
    /// The policy to render.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Where to write waf.yaml, responder.yaml and deployments.tsv.
    #[arg(long, value_name = "DIR", default_value = "infra/cloudformation")]
    pub out: PathBuf,
    /// Write nothing; exit 1 if the files in --out differ from what the
    /// policy renders to (for CI).
    #[arg(long)]
    pub check: bool,
}

/// Parses `300` (seconds) or a duration humantime reads (`90s`, `5m`,
/// `1h`, `1h 30m`): at least one second, in whole seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(text).ok()
    };
    match parsed {
        Some(duration)
            if duration.subsec_nanos() == 0
                && (1..=u64::from(u32::MAX)).contains(&duration.as_secs()) =>
        {
            Ok(duration)
        }
        Some(_) => Err(format!(
            "\"{text}\" is not a whole number of seconds, at least 1, such as 5m"
        )),
        None => Err(format!(
            "\"{text}\": use a number of seconds, or a number with s, m or h, such as 5m"
        )),
    }
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
    Success,
    /// Exit 1: invalid input or configuration; nothing was applied.
    Invalid,
    /// Exit 2: partial failure.
    Partial,
    /// Exit 2: `plan --detailed-exitcode` found changes to make.
    Changes,
    /// Exit 2: `review --base` found a change that needs a second reviewer.
    NeedsReview,
    /// Exit 1: `healthcheck` found the daemon unhealthy or not answering.
    Unhealthy,
}

impl Status {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::Invalid | Status::Unhealthy => 1,
            Status::Partial | Status::Changes | Status::NeedsReview => 2,
        }
    }
}

/// A command that could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The policy could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// Log input could not be read.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The input is unusable, such as a log file of garbage.
    #[error("{0}")]
    Input(String),
    /// The ledger could not be read or saved.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The lease could not be read or written.
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    /// A responder cycle could not run; nothing was written.
    #[error(transparent)]
    Cycle(#[from] crate::cycle::CycleError),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Status, CliError> {
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Review(args) => review::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Block(args) => manual::block(&args),
        Command::Unblock(args) => manual::unblock(&args),
        Command::Why(args) => why::run(&args),
        Command::Backtest(args) => backtest::run(&args),
        Command::Top(args) => top::run(&args),
        Command::GenLogs(args) => gen_logs::run(&args),
        Command::Healthcheck(args) => healthcheck::run(&args),
        Command::RenderInfra(args) => render_infra::run(&args),
    }
}

/// A line on stderr when S3 objects were skipped (each was logged with its
/// key and reason as it happened).
fn warn_skipped_objects(stats: &crate::traffic::Stats) {
    if stats.skipped_objects > 0 {
        eprintln!(
            "warning: skipped {} S3 objects that could not be fetched or decoded (see the log lines above)",
            stats.skipped_objects
        );
    }
}

/// The parts of a count the row limit left cut, in one line: "us-east-1
/// 300 s all (keys at ≤ 2 requests may be missing); …".
/// Where the policy's source reads logs, for `plan` and `status`.
fn source_locations(policy: &Policy) -> Vec<String> {
    policy
        .source
        .as_ref()
        .map(LogSourceConfig::locations)
        .unwrap_or_default()
}

fn incomplete_parts(cut: &[crate::traffic::CutCount]) -> String {
    let parts: Vec<String> = cut
        .iter()
        .map(|c| {
            format!(
                "{} {} s{} {} (keys at {} requests or fewer may be missing)",
                c.region,
                c.window_seconds,
                if c.scoped { " scoped" } else { "" },
                c.addresses,
                c.lowest
            )
        })
        .collect();
    parts.join("; ")
}

/// Writes a command's result to stdout. A closed pipe comes back as
/// [`CliError::Output`], which `main` takes for a reader that has enough.
fn write_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
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

/// `1 error`, `2 errors`, `2 allow entries`, `2 addresses`.
fn plural(count: usize, noun: &str) -> String {
    match (count, noun.strip_suffix('y')) {
        (1, _) => format!("{count} {noun}"),
        (_, Some(stem)) => format!("{count} {stem}ies"),
        (_, None) if noun.ends_with('s') => format!("{count} {noun}es"),
        (_, None) => format!("{count} {noun}s"),
    }
}

/// The JSON Schema of each command's `--format json` output, by command:
/// what `docs/schemas/<command>.schema.json` holds (a test keeps the two
/// the same, and checks real output against the files).
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    // What is written, not what would be read back: a field skipped when
    // empty is optional.
    fn schema<T: schemars::JsonSchema>() -> serde_json::Value {
        let generator = schemars::generate::SchemaSettings::default()
            .for_serialize()
            .into_generator();
        serde_json::to_value(generator.into_root_schema_for::<T>()).expect("schemas serialize")
    }
    vec![
        ("run", schema::<crate::cycle::CycleReport>()),
        ("run-fast", schema::<crate::fast::FastReport>()),
        ("plan", schema::<plan::PlanReport>()),
        ("status", schema::<status::StatusReport>()),
        ("why", schema::<why::WhyReport>()),
        ("top", schema::<top::TopReport>()),
        ("review", schema::<review::ReviewReport>()),
        ("review-diff", schema::<review::DiffReport>()),
        ("backtest", schema::<backtest::BacktestReport>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_humantime_in_whole_seconds() {
        let seconds = |text| parse_duration(text).map(|d| d.as_secs());
        assert_eq!(seconds("300"), Ok(300));
        assert_eq!(seconds("90s"), Ok(90));
        assert_eq!(seconds("5m"), Ok(300));
        assert_eq!(seconds("1h"), Ok(3600));
        assert_eq!(seconds("1h 30m"), Ok(5400));
        for bad in ["", "0", "0s", "1500ms", "5 parsecs", "-5m"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains(&format!("\"{bad}\"")), "{bad}: {error}");
        }
    }
}
