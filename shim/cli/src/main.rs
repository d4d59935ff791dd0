//! `husk`, the runc-compatible OCI runtime CLI; each container is a
//! microVM. Argument parsing (youki's `liboci-cli`), error reporting, and
//! dispatch to the commands; the provisioning itself is the host library's
//! (`husk_host::sandbox`), run by each container's monitor process.

mod commands;
mod console;
mod exec;
mod log;
mod monitor;
mod state;
mod tty;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

use crate::log::LogOpts;
use crate::monitor::{MonitorArgs, Role};
use crate::state::Store;

/// husk: runs each OCI container in its own microVM.
#[derive(Parser, Debug)]
#[command(name = "husk", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    /// The husk configuration file (default: $HUSK_CONFIG, else
    /// /etc/husk/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    /// Internal: the monitor of a container.
    #[command(name = "__monitor", hide = true)]
    Monitor(MonitorCmd),
}

#[derive(clap::Args, Debug)]
struct MonitorCmd {
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long)]
    process: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    id: String,
}

/// A command's failure: one line for the user.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

fn main() {
    std::process::exit(run());
}

/// Runs the CLI; returns the process exit status.
fn run() -> i32 {
    let cli = Cli::parse();
    if let Some(config) = &cli.config {
        // The monitors this process starts read the same file.
        // SAFETY: no other thread exists yet to read the environment.
        unsafe { std::env::set_var(husk_host::config::ENV, config) };
    }
    let store = Store::new(cli.global.root.as_deref());
    log::init(LogOpts {
        path: cli.global.log.clone(),
        json: cli.global.log_format.as_deref() == Some("json"),
        debug: cli.global.debug,
    });
    let result = match cli.command {
        Command::Monitor(m) => {
            let role = match (m.bundle, m.process) {
                (Some(bundle), None) => Role::Container { bundle },
                (None, Some(process)) => Role::Exec { process },
                _ => return 2,
            };
            return monitor::run(&MonitorArgs {
                store,
                id: m.id,
                role,
                console_socket: m.console_socket,
            });
        }
        Command::Standard(cmd) => commands::standard(&store, *cmd),
        Command::Common(cmd) => commands::common(&store, *cmd),
    };
    match result {
        Ok(status) => status,
        Err(CliError(message)) => {
            log::error(&message);
            1
        }
    }
}
