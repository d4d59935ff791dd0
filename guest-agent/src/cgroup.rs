//! cgroup v2 of the containers: each container's cgroup is `/husk/<id>`;
//! process lists, statistics, resource updates (through libcgroups) and an
//! OOM-kill watch on `memory.events`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use protocol::{ContainerStats, ErrorCode, ErrorReply, IoStat, OomEvent};

const ROOT: &str = "/sys/fs/cgroup";

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

/// The cgroup path (below the cgroup root) of container `id`.
pub fn path(id: &str) -> PathBuf {
    Path::new("/husk").join(id)
}

fn dir(id: &str) -> PathBuf {
    Path::new(ROOT).join("husk").join(id)
}

fn read(dir: &Path, file: &str) -> Result<String, ErrorReply> {
    std::fs::read_to_string(dir.join(file)).map_err(|e| {
        err(
            ErrorCode::Internal,
            format!("read {}: {e}", dir.join(file).display()),
        )
    })
}

/// `key value` lines.
fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single number, or `None` for `max`.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Every process in the container's cgroup and the cgroups below it.
pub fn pids(id: &str) -> Result<Vec<i32>, ErrorReply> {
    let mut out = Vec::new();
    let mut stack = vec![dir(id)];
    while let Some(d) = stack.pop() {
        let procs = read(&d, "cgroup.procs")?;
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The container's cgroup v2 figures.
pub fn stats(id: &str) -> Result<ContainerStats, ErrorReply> {
    let d = dir(id);
    let cpu = flat_keyed(&read(&d, "cpu.stat")?);
    let events = flat_keyed(&read(&d, "memory.events")?);
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let mut io = Vec::new();
    for line in read(&d, "io.stat").unwrap_or_default().lines() {
        let mut words = line.split_whitespace();
        let Some((major, minor)) = words.next().and_then(|dev| dev.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        let mut s = IoStat {
            major,
            minor,
            ..IoStat::default()
        };
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            let v = v.parse().unwrap_or(0);
            match k {
                "rbytes" => s.read_bytes = v,
                "wbytes" => s.write_bytes = v,
                "rios" => s.read_ios = v,
                "wios" => s.write_ios = v,
                _ => {}
            }
        }
        io.push(s);
    }
    Ok(ContainerStats {
        cpu_usage_usec: get(&cpu, "usage_usec"),
        cpu_user_usec: get(&cpu, "user_usec"),
        cpu_system_usec: get(&cpu, "system_usec"),
        cpu_throttled_periods: get(&cpu, "nr_throttled"),
        cpu_throttled_usec: get(&cpu, "throttled_usec"),
        memory_usage: limit(&read(&d, "memory.current")?).unwrap_or(0),
        memory_limit: limit(&read(&d, "memory.max")?),
        memory_oom_kills: get(&events, "oom_kill"),
        memory_stat: flat_keyed(&read(&d, "memory.stat")?),
        pids_current: limit(&read(&d, "pids.current")?).unwrap_or(0),
        pids_limit: limit(&read(&d, "pids.max")?),
        io,
    })
}

/// Applies an OCI `linux.resources` object to the container's cgroup.
pub fn update(id: &str, resources: serde_json::Value) -> Result<(), ErrorReply> {
    let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(resources)
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("resources: {e}")))?;
    if !dir(id).is_dir() {
        return Err(err(
            ErrorCode::NotFound,
            format!("container {id} has no cgroup"),
        ));
    }
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: path(id),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| err(ErrorCode::Internal, format!("cgroup of {id}: {e}")))?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("update {id}: {e}")))
}

/// Most OOM events remembered for hosts that fall behind.
const MAX_EVENTS: usize = 256;

#[derive(Default)]
struct Events {
    seq: u64,
    queue: VecDeque<OomEvent>,
}

fn events() -> &'static (Mutex<Events>, Condvar) {
    static E: OnceLock<(Mutex<Events>, Condvar)> = OnceLock::new();
    E.get_or_init(Default::default)
}

fn publish(container_id: &str) {
    let (lock, cv) = events();
    let mut e = lock.lock().unwrap_or_else(|e| e.into_inner());
    e.seq += 1;
    let seq = e.seq;
    if e.queue.len() >= MAX_EVENTS {
        e.queue.pop_front();
    }
    e.queue.push_back(OomEvent {
        seq,
        container_id: container_id.to_string(),
    });
    cv.notify_all();
}

/// The first OOM event after sequence number `after`; blocks until there is
/// one.
pub fn wait_oom(after: u64) -> OomEvent {
    let (lock, cv) = events();
    let mut e = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(ev) = e.queue.iter().find(|ev| ev.seq > after) {
            return ev.clone();
        }
        e = cv.wait(e).unwrap_or_else(|e| e.into_inner());
    }
}

/// Watches a container's `memory.events` until dropped.
pub struct OomWatch {
    _stop: OwnedFd,
}

/// Starts watching container `id` for OOM kills; each new kill becomes an
/// [`OomEvent`].
pub fn watch_oom(id: &str) -> Result<OomWatch, ErrorReply> {
    let file = File::open(dir(id).join("memory.events"))
        .map_err(|e| err(ErrorCode::Internal, format!("memory.events of {id}: {e}")))?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(
            ErrorCode::Internal,
            format!("pipe: {}", std::io::Error::last_os_error()),
        ));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let id = id.to_string();
    std::thread::Builder::new()
        .name("oom-watch".into())
        .spawn(move || oom_loop(&id, &file, &stop_r))
        .map_err(|e| err(ErrorCode::Internal, format!("oom watch: {e}")))?;
    Ok(OomWatch { _stop: stop_w })
}

fn oom_kills(file: &File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    flat_keyed(&String::from_utf8_lossy(&buf[..n]))
        .get("oom_kill")
        .copied()
        .unwrap_or(0)
}

fn oom_loop(id: &str, file: &File, stop: &OwnedFd) {
    let mut seen = oom_kills(file);
    loop {
        // memory.events signals a change with POLLPRI (kernfs notify); the
        // stop pipe hangs up when the watch is dropped.
        let mut pfds = [
            libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        // Read the counter before honouring a stop, so that a kill that
        // came just before the container was removed is still reported.
        let now = oom_kills(file);
        for _ in seen..now {
            publish(id);
        }
        seen = seen.max(now);
        if pfds[1].revents != 0 {
            return;
        }
    }
}
