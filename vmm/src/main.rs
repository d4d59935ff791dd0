//! `husk-vmm`: boots one microVM, configured by a Firecracker-style JSON file
//! (`--no-api --config-file`) or over the API socket (`--api-sock`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::channel;

use clap::Parser;
use vmm::config::VmConfig;
use vmm::{EXIT_BAD_CONFIG, EXIT_VMM_ERROR, Vmm, api, logger};

/// Boots one microVM per process.
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version, about)]
struct Args {
    /// Unix socket path of the control API.
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    api_sock: Option<PathBuf>,
    /// Run without the API (requires --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// JSON configuration in Firecracker's schema; the VM boots at once.
    #[arg(long, value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Instance identifier reported by `GET /`.
    #[arg(long, default_value = "husk-vm")]
    id: String,
    /// Write the guest console here instead of stdout.
    #[arg(long, value_name = "PATH")]
    console_out: Option<PathBuf>,
    /// Forward stdin to the guest console.
    #[arg(long)]
    console_in: bool,
    /// Append the metrics (vCPU exits by reason) to this file as one JSON
    /// line when the VM ends and on `FlushMetrics`.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// Run without seccomp filters (for debugging only: the filters are
    /// what keeps a guest that breaks the VMM from reaching the host).
    #[arg(long)]
    no_seccomp: bool,
    /// Log level: error, warn, info, debug, trace (or HUSK_VMM_LOG).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn fail(code: i32, msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "husk-vmm: error: {msg}");
    ExitCode::from(code as u8)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level_name = args
        .log_level
        .clone()
        .or_else(|| std::env::var("HUSK_VMM_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let Some(level) = logger::parse_level(&level_name) else {
        return fail(EXIT_BAD_CONFIG, format!("invalid log level {level_name:?}"));
    };
    logger::init(level);

    if let Some(path) = &args.metrics_path {
        if let Err(e) = vmm::metrics::set_path(path) {
            return fail(
                EXIT_BAD_CONFIG,
                format!("cannot open metrics file {}: {e}", path.display()),
            );
        }
    }

    if !args.no_seccomp {
        if let Err(e) = vmm::seccomp::enable() {
            return fail(EXIT_VMM_ERROR, e);
        }
    }

    if args.api_sock.is_none() && !args.no_api {
        return fail(
            EXIT_BAD_CONFIG,
            "either --api-sock PATH or --no-api with --config-file is required",
        );
    }

    let config = match &args.config_file {
        Some(path) => match VmConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_BAD_CONFIG, e),
        },
        None => VmConfig::default(),
    };
    if args.config_file.is_some() {
        if let Err(e) = config.validate(vmm::config::host_mem_mib()) {
            return fail(EXIT_BAD_CONFIG, e);
        }
    }

    let console: Box<dyn Write + Send> = match &args.console_out {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                return fail(
                    EXIT_BAD_CONFIG,
                    format!("cannot open console output {}: {e}", path.display()),
                );
            }
        },
        None => Box::new(std::io::stdout()),
    };

    let mut vmm = match Vmm::new(args.id.clone(), config, console, args.console_in) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_VMM_ERROR, e),
    };

    // Held until exit: removes the socket file.
    let _api_guard = match &args.api_sock {
        Some(path) => {
            let wake = match vmm::api_eventfd() {
                Ok(w) => w,
                Err(e) => return fail(EXIT_VMM_ERROR, e),
            };
            let (tx, rx) = channel();
            let guard = match api::server::start(path, tx, wake.clone()) {
                Ok(g) => g,
                Err(e) => return fail(EXIT_BAD_CONFIG, e),
            };
            vmm.attach_api(rx, wake);
            Some(guard)
        }
        None => None,
    };

    if args.config_file.is_some() {
        if let Err(e) = vmm.start() {
            return fail(EXIT_BAD_CONFIG, e);
        }
    }

    match vmm.run() {
        Ok(reason) => {
            let code = reason.exit_code();
            if reason.is_clean() {
                log::info!("{reason}");
                ExitCode::from(code as u8)
            } else {
                fail(code, reason)
            }
        }
        Err(e) => fail(EXIT_VMM_ERROR, e),
    }
}
