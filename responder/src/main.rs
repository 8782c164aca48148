//! `floodgate`: parse the command line, run the command, turn the outcome
//! into an exit code (0 success, 1 invalid input, 2 partial failure).

use std::process::ExitCode;

use clap::Parser;
use floodgate_responder::cli::{self, Cli, Status};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are not failures; a bad command line is
            // invalid input (exit 1), never clap's default 2, which here
            // means a partial failure.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(Status::Invalid as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli::run(cli) {
        Ok(status) => ExitCode::from(status as u8),
        Err(error) => {
            eprintln!("floodgate: error: {:#}", anyhow::Error::from(error));
            ExitCode::from(Status::Invalid as u8)
        }
    }
}
