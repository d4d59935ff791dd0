//! `husk-jailer`: runs husk-vmm (or another static program) in a jail of
//! its own. See the library's documentation for the steps.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use jailer::{JailConfig, Limits};

/// Exit status when the jail could not be set up (bad input included), as
/// `env` and container runtimes use it: apart from the program's own.
const EXIT_SETUP: u8 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "husk-jailer",
    version,
    args_override_self = true,
    about = "Run husk-vmm confined: own mount and PID namespaces, a root holding only the VM's \
             files, an unprivileged uid and gid, no capabilities, no_new_privs, rlimits, a cgroup",
    after_help = "Example:\n  husk-jailer --id vm1 --exec-file /usr/libexec/husk/husk-vmm --uid 40001 --gid 40001 \\\n    \
                  --file /var/lib/husk/vmlinux --rw-file /var/lib/vms/vm1.ext4:/rootfs.ext4 \\\n    \
                  -- --api-sock /run/api.sock\nThe VM's sockets are then under <base>/husk-vmm/vm1/root/run/."
)]
struct Args {
    /// The VM's id (1-64 of A-Z a-z 0-9 - _): names the jail and its cgroup.
    #[arg(long)]
    id: String,
    /// The program to run (static; copied into the jail).
    #[arg(long)]
    exec_file: PathBuf,
    /// Unprivileged uid the program runs as.
    #[arg(long)]
    uid: u32,
    /// Unprivileged gid the program runs as.
    #[arg(long)]
    gid: u32,
    /// Jails are made in BASE/<program name>/<id>/root.
    #[arg(long = "chroot-base-dir", default_value = "/srv/husk-jail")]
    base_dir: PathBuf,
    /// A host file (or directory) the program may read, as SRC or SRC:DEST
    /// (DEST inside the jail; by default /<name of SRC>). Repeatable.
    #[arg(long = "file", value_name = "SRC[:DEST]")]
    files: Vec<String>,
    /// As --file, writable (the jail's uid must be able to write it).
    #[arg(long = "rw-file", value_name = "SRC[:DEST]")]
    rw_files: Vec<String>,
    /// A network namespace to join, such as /var/run/netns/NAME.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// The cgroup the jail's cgroup is made under.
    #[arg(long, default_value = "husk")]
    cgroup_parent: String,
    /// CPU time the jail may use, in CPUs (such as 1.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory the jail may use, in MiB (guest memory plus the VMM's own).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Tasks (threads) the jail may have.
    #[arg(long, default_value_t = 64)]
    pids_max: u64,
    /// Files the program may have open.
    #[arg(long, default_value_t = 2048)]
    max_open_files: u64,
    /// Largest file the program may write, in bytes.
    #[arg(long)]
    max_file_size: Option<u64>,
    /// Arguments of the program, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut files: Vec<_> = args
        .files
        .iter()
        .map(|f| jailer::config::parse_file(f, false))
        .collect();
    files.extend(
        args.rw_files
            .iter()
            .map(|f| jailer::config::parse_file(f, true)),
    );
    let memory_bytes = match args.memory_mib.map(|m| m.checked_mul(1 << 20)) {
        Some(None) => {
            eprintln!(
                "husk-jailer: error: --memory-mib {:?}: too large",
                args.memory_mib
            );
            return ExitCode::from(EXIT_SETUP);
        }
        Some(Some(b)) => Some(b),
        None => None,
    };
    let config = JailConfig {
        id: args.id,
        exec_file: args.exec_file,
        args: args.args,
        uid: args.uid,
        gid: args.gid,
        base_dir: args.base_dir,
        files,
        netns: args.netns,
        cgroup_parent: args.cgroup_parent,
        limits: Limits {
            cpus: args.cpus,
            memory_bytes,
            pids: Some(args.pids_max),
        },
        max_open_files: args.max_open_files,
        max_file_size: args.max_file_size,
    };
    match jailer::run(&config) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(255)),
        Err(e) => {
            eprintln!("husk-jailer: error: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
