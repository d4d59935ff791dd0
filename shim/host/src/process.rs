//! Supervision of the host processes husk starts (VMMs and their helpers):
//! start times that tell a living process from a reused PID, the members of
//! the process groups they lead, and killing and waiting for them. Depends
//! on nothing else of husk's.

use std::time::Duration;

/// What `/proc/PID/stat` says of a process: whether it is a zombie, its
/// process group and its start time.
struct ProcStat {
    dead: bool,
    group: i32,
    start: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); pgrp is field 5, starttime 22.
    let state = fields.first()?;
    Some(ProcStat {
        dead: *state == "Z" || *state == "X",
        group: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Start time of process `pid` (field 22 of `/proc/PID/stat`), if it lives.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).filter(|s| !s.dead).map(|s| s.start)
}

/// `processes` (PID and start time) with the living members of the process
/// groups they lead (virtiofsd's sandboxed server is a child in its
/// group), so that stopping a VM waits for those too. A group counts when
/// its leader is the recorded process, or is gone: a PID that is still some
/// group's ID is not given to a new process.
pub fn with_group_members(processes: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let leaders: Vec<i32> = processes
        .iter()
        .filter(|&&(pid, start)| pid > 0 && proc_stat(pid).is_none_or(|s| s.start == start))
        .map(|&(pid, _)| pid)
        .collect();
    let mut all = processes.to_vec();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(s) = proc_stat(pid) else { continue };
        if !s.dead && leaders.contains(&s.group) && !all.iter().any(|&(p, _)| p == pid) {
            all.push((pid, s.start));
        }
    }
    all
}

/// Sends SIGKILL to those of `processes` that still run (start time
/// checked, so a reused PID is left alone) and waits, at most `limit`,
/// until none does; true if none does.
pub fn kill_and_wait(processes: &[(i32, u64)], limit: Duration) -> bool {
    let alive = |&(pid, start): &(i32, u64)| pid > 0 && start_time(pid) == Some(start);
    for p in processes.iter().filter(|p| alive(p)) {
        // SAFETY: kill(2) on a PID whose start time matches the recorded
        // one: our own process, not a reused PID.
        unsafe { libc::kill(p.0, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !processes.iter().any(alive) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_dead_ones_do_not() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn stopping_a_group_leader_stops_its_group() {
        use std::os::unix::process::CommandExt;
        // A leader whose child would outlive it, as virtiofsd's does.
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let child: i32 = line.trim().parse().unwrap();
        let pid = leader.id() as i32;
        let all = with_group_members(&[(pid, start_time(pid).unwrap())]);
        assert!(all.iter().any(|&(p, _)| p == child), "{all:?}");
        // Only the group's processes: not this one.
        let me = std::process::id() as i32;
        assert!(all.iter().all(|&(p, _)| p != me), "{all:?}");
        assert!(kill_and_wait(&all, Duration::from_secs(5)));
        let _ = leader.wait();
        assert_eq!(start_time(child), None);
        // Nothing left: waiting again is immediate.
        assert!(kill_and_wait(&all, Duration::ZERO));
    }
}
