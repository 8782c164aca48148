//! `floodgate`: parse the command line, run the command, turn the outcome
//! into an exit code (0 success, 1 invalid input, 2 partial failure).

use std::process::ExitCode;

use clap::Parser;
use floodgate_responder::cli::{self, Cli, CliError, LogFormat, Status};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are not failures; a bad command line is
            // invalid input (exit 1), never clap's default 2, which here
            // means a partial failure.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(Status::Invalid.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.log_format);
    match cli::run(cli) {
        Ok(status) => ExitCode::from(status.code()),
        // A reader that stopped reading (`floodgate top | head`) is not a
        // failure of the command.
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "floodgate: error: {}",
                floodgate_responder::failure::one_line(&error)
            );
            ExitCode::from(Status::Invalid.code())
        }
    }
}

/// Warnings, but not the AWS SDK's own about a credential source it tried:
/// the error the command reports says what is missing, in one line.
const DEFAULT_LOG: &str = "warn,aws_config=error";

/// Log lines go to stderr, so stdout stays the command's result; colour
/// only on a terminal, never into a file or a log pipeline.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_env("FLOODGATE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
