//! Exit codes and error printing.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | runtime failure: a socket, interface or network error |
//! | 2 | invalid arguments or settings |
//! | 3 | `browse` found no instance before its timeout |

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::commands;

pub(crate) const FAILURE: u8 = 1;
pub(crate) const USAGE: u8 = 2;
pub(crate) const NOTHING_FOUND: u8 = 3;

/// An error with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Runtime(#[from] msd::Error),
    #[error("{0}")]
    Failure(String),
    #[error("no instance found within {0}")]
    NothingFound(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => USAGE,
            CliError::Runtime(error) => match error {
                msd::Error::InvalidSetting { .. }
                | msd::Error::InterfaceNotFound { .. }
                | msd::Error::LoopbackNeedsIpv4 { .. } => USAGE,
                _ => FAILURE,
            },
            CliError::Failure(_) => FAILURE,
            CliError::NothingFound(_) => NOTHING_FOUND,
        }
    }
}

pub(crate) fn run() -> ExitCode {
    let cli = Cli::parse();
    crate::output::init_logging(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("msd: failed to start the async runtime: {error}");
            return ExitCode::from(FAILURE);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print_error(&error);
            ExitCode::from(error.code())
        }
    }
}

fn print_error(error: &CliError) {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    eprintln!("msd: {message}");
}
