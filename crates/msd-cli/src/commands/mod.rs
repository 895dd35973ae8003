mod announce;
mod browse;
mod check;
mod demo;
mod group;
mod key;

use crate::args::{Cli, Command, GroupCommand, KeyCommand};
use crate::exit::CliError;

pub(crate) async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Group(GroupCommand::New { json }) => group::new(json),
        Command::Announce(args) => announce::run(args).await,
        Command::Browse(args) => browse::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Key(KeyCommand::New { output }) => key::new(output.as_deref()),
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Proxy(args) => crate::proxy::run(args).await,
    }
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() -> Result<&'static str, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let failed = |error: std::io::Error| CliError::Failure(format!("failed to install a signal handler: {error}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(failed)?;
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    Ok(name)
}

/// Listens for SIGHUP, the signal to reload the key file.
pub(crate) fn hangup_signals() -> Result<tokio::signal::unix::Signal, CliError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| CliError::Failure(format!("failed to install a signal handler: {error}")))
}

/// Reads the key file again after SIGHUP. Returns `None`, after logging why, when there is no
/// key file or it is invalid; the running key ring then stays as it was.
pub(crate) fn reload_keys(path: Option<&std::path::Path>) -> Option<msd::KeyRing> {
    let Some(path) = path else {
        tracing::info!("SIGHUP ignored: no key file to reload");
        return None;
    };
    match crate::settings::read_key_file(path) {
        Ok(keys) => Some(keys),
        Err(error) => {
            tracing::warn!(%error, "key file not reloaded; keeping the old key ring");
            None
        }
    }
}
