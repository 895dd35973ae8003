//! The `msd` command: announce, browse and demonstrate multicast service discovery.

mod args;
mod commands;
mod config;
mod connections;
mod exit;
mod http_server;
mod output;
mod proxy;
mod serve;
mod settings;
mod warning_limit;
#[cfg(test)]
mod testing;

fn main() -> std::process::ExitCode {
    exit::run()
}
