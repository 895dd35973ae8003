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
                | msd::Error::LoopbackNeedsIpv4 { .. }
                | msd::Error::Encode(_) => USAGE,
                _ => FAILURE,
            },
            CliError::Failure(_) => FAILURE,
            CliError::NothingFound(_) => NOTHING_FOUND,
        }
    }
}

pub(crate) fn run() -> ExitCode {
    let argv = match crate::config::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(error) => {
            print_error(&error);
            return ExitCode::from(error.code());
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(error) => return clap_error(&error),
    };
    if let Err(message) = crate::output::init_logging(&cli.global) {
        eprintln!("msd: {message}");
        return ExitCode::from(USAGE);
    }
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

/// Prints help and version as clap formats them, and argument errors as one `msd:` line.
fn clap_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            return if error.exit_code() == 0 { ExitCode::SUCCESS } else { ExitCode::from(USAGE) };
        }
        _ => {}
    }
    let rendered = error.render().to_string();
    // clap's first paragraph contains the error, sometimes over several indented lines.
    let paragraph = rendered.split("\n\n").next().unwrap_or_default();
    let first = paragraph
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .replace(":; ", ": ");
    let first = first.trim();
    let hint = if first.contains("--group") {
        "; set --group or MSD_GROUP (create a group id with `msd group new`)"
    } else {
        "; see `msd help`"
    };
    eprintln!("msd: {first}{hint}");
    ExitCode::from(USAGE)
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
