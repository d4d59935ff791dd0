//! The agent's cgroup v2 figures as containerd's `io.containerd.cgroups.v2.Metrics`.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use protocol::ContainerStats;

/// The type URL containerd decodes the metrics by.
pub const METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Converts the agent's statistics.
pub fn to_metrics(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = s.pids_current;
    pids.limit = s.pids_limit.unwrap_or(0);
    m.pids = Some(pids).into();
    let mut cpu = CPUStat::new();
    cpu.usage_usec = s.cpu_usage_usec;
    cpu.user_usec = s.cpu_user_usec;
    cpu.system_usec = s.cpu_system_usec;
    cpu.nr_throttled = s.cpu_throttled_periods;
    cpu.throttled_usec = s.cpu_throttled_usec;
    m.cpu = Some(cpu).into();
    let mut mem = MemoryStat::new();
    mem.usage = s.memory_usage;
    mem.usage_limit = s.memory_limit.unwrap_or(u64::MAX);
    let stat = |k: &str| s.memory_stat.get(k).copied().unwrap_or(0);
    mem.anon = stat("anon");
    mem.file = stat("file");
    mem.kernel_stack = stat("kernel_stack");
    mem.slab = stat("slab");
    mem.sock = stat("sock");
    mem.shmem = stat("shmem");
    mem.file_mapped = stat("file_mapped");
    mem.file_dirty = stat("file_dirty");
    mem.file_writeback = stat("file_writeback");
    mem.inactive_anon = stat("inactive_anon");
    mem.active_anon = stat("active_anon");
    mem.inactive_file = stat("inactive_file");
    mem.active_file = stat("active_file");
    mem.unevictable = stat("unevictable");
    mem.pgfault = stat("pgfault");
    mem.pgmajfault = stat("pgmajfault");
    m.memory = Some(mem).into();
    let mut events = MemoryEvents::new();
    events.oom_kill = s.memory_oom_kills;
    m.memory_events = Some(events).into();
    let mut io = IOStat::new();
    for d in &s.io {
        let mut e = IOEntry::new();
        e.major = u64::from(d.major);
        e.minor = u64::from(d.minor);
        e.rbytes = d.read_bytes;
        e.wbytes = d.write_bytes;
        e.rios = d.read_ios;
        e.wios = d.write_ios;
        io.usage.push(e);
    }
    m.io = Some(io).into();
    m
}

/// The metrics packed for a StatsResponse.
pub fn to_any(s: &ContainerStats) -> Result<Any, String> {
    let value = to_metrics(s)
        .write_to_bytes()
        .map_err(|e| format!("metrics: {e}"))?;
    let mut any = Any::new();
    any.type_url = METRICS_TYPE.to_string();
    any.value = value;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_land_in_containerds_fields() {
        let mut s = ContainerStats {
            cpu_usage_usec: 7,
            memory_usage: 4096,
            memory_limit: Some(1 << 20),
            pids_current: 3,
            ..ContainerStats::default()
        };
        s.memory_stat.insert("anon".into(), 512);
        s.io.push(protocol::IoStat {
            major: 254,
            minor: 0,
            read_bytes: 9,
            ..protocol::IoStat::default()
        });
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 7);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (4096, 1 << 20, 512)
        );
        assert_eq!(m.pids.current, 3);
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes), (254, 9));
    }
}
