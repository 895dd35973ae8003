mod announce;
mod browse;
mod check;
mod demo;
mod group;
mod key;

use tokio::signal::unix::{signal, Signal, SignalKind};

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

/// SIGINT and SIGTERM. Commands install them before they start their work: a signal that
/// arrives while a command starts is then kept for [`StopSignals::wait`], rather than ending the
/// process with the default action and no LOGOFF.
#[derive(Debug)]
pub(crate) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub(crate) fn install() -> Result<Self, CliError> {
        Ok(StopSignals { interrupt: listen(SignalKind::interrupt())?, terminate: listen(SignalKind::terminate())? })
    }

    /// Waits for the next SIGINT or SIGTERM and returns its name.
    pub(crate) async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Listens for SIGHUP, the signal to reload the key file. Like [`StopSignals`], install it before
/// the work starts: SIGHUP's default action ends the process.
pub(crate) fn hangup_signals() -> Result<Signal, CliError> {
    listen(SignalKind::hangup())
}

fn listen(kind: SignalKind) -> Result<Signal, CliError> {
    signal(kind).map_err(|error| CliError::Failure(format!("failed to install a signal handler: {error}")))
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
