//! PID 1 of the nested KVM lab's L1 "KVM host" (see `tests/src/lab.rs`),
//! started by the lab initramfs after it has mounted the host's root file
//! system (9p, read-only, under a tmpfs overlay) and switched to it.
//!
//! `husk-lab-init DIR`: DIR is the lab's writable share. The host writes
//! commands as `DIR/cmd/N.sh` (N = 0, 1, …, each renamed into place when
//! complete); this program runs each with `/bin/sh` in a process group of
//! its own, its output in `DIR/cmd/N.out`, and writes the exit status (or
//! `signal S`, or `timeout`) to `DIR/cmd/N.status` when it ends. A command's
//! time limit in seconds is the first line of its script when that line is
//! `# timeout N`. `DIR/cmd/stop` powers the machine off. As PID 1 it also
//! reaps every orphan.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
    let dir = match std::env::args_os().nth(1) {
        Some(d) => PathBuf::from(d),
        None => {
            eprintln!("usage: husk-lab-init DIR");
            std::process::exit(2);
        }
    };
    let cmd_dir = dir.join("cmd");
    if let Err(e) = std::fs::create_dir_all(&cmd_dir) {
        eprintln!("husk-lab-init: {}: {e}", cmd_dir.display());
    }
    println!("HUSK-LAB-READY");
    std::thread::spawn(heartbeat);
    let mut n = 0u32;
    loop {
        reap_orphans(None);
        if cmd_dir.join("stop").exists() {
            power_off();
        }
        let script = cmd_dir.join(format!("{n}.sh"));
        if script.exists() {
            let status = run(&script, &cmd_dir.join(format!("{n}.out")));
            let tmp = cmd_dir.join(format!("{n}.status.tmp"));
            let done = std::fs::write(&tmp, format!("{status}\n"))
                .and_then(|()| std::fs::rename(&tmp, cmd_dir.join(format!("{n}.status"))));
            if let Err(e) = done {
                eprintln!("husk-lab-init: cannot write the status of command {n}: {e}");
            }
            n += 1;
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The time limit the script asks for on its first line.
fn time_limit(script: &Path) -> Duration {
    let text = std::fs::read_to_string(script).unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# timeout "))
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(600))
}

/// Runs one script; returns what to write as its status.
fn run(script: &Path, out: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let limit = time_limit(script);
    let log = match std::fs::File::create(out) {
        Ok(f) => f,
        Err(e) => return format!("error {}: {e}", out.display()),
    };
    let err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return format!("error {}: {e}", out.display()),
    };
    let child = std::process::Command::new("/bin/sh")
        .arg(script)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return format!("error /bin/sh: {e}"),
    };
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = reap_orphans(Some(pid)) {
            // What the command left running in its group goes with it.
            // SAFETY: kill(2) with a negative pid signals a process group;
            // no memory is involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            return status;
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // A process stuck in the kernel does not die of SIGKILL; the
            // status is written anyway, naming what is stuck.
            let grace = Instant::now() + Duration::from_secs(30);
            while reap_orphans(Some(pid)).is_none() {
                if Instant::now() > grace {
                    return format!("timeout (not ended by SIGKILL:{})", stuck());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return "timeout".into();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reaps every ended child; returns the status of `watched` if it was one
/// of them.
fn reap_orphans(watched: Option<libc::pid_t>) -> Option<String> {
    let mut found = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) writes only to `status`, a live local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if Some(pid) == watched {
            found = Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status).to_string()
            } else {
                format!("signal {}", libc::WTERMSIG(status))
            });
        }
    }
}

/// Prints a line about L1's state on the console every 30 s.
fn heartbeat() {
    loop {
        std::thread::sleep(Duration::from_secs(30));
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let uptime = read("/proc/uptime");
        let load = read("/proc/loadavg");
        let avail = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            .unwrap_or_default();
        println!(
            "HUSK-LAB-ALIVE up={} load={} avail_kib={avail} stuck:{}",
            uptime.split_whitespace().next().unwrap_or("?"),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(","),
            stuck()
        );
    }
}

/// The processes in uninterruptible sleep (state D), as ` PID:COMM@WCHAN`.
fn stuck() -> String {
    let mut out = String::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        if stat[close + 1..].split_whitespace().next() != Some("D") {
            continue;
        }
        let comm = stat
            .get(stat.find('(').map_or(0, |i| i + 1)..close)
            .unwrap_or("?");
        let wchan = std::fs::read_to_string(entry.path().join("wchan")).unwrap_or_default();
        out.push_str(&format!(" {pid}:{comm}@{wchan}"));
        if out.len() > 600 {
            out.push_str(" …");
            break;
        }
    }
    out
}

/// Flushes file systems and powers the machine off; QEMU then exits.
fn power_off() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    std::process::exit(0);
}
