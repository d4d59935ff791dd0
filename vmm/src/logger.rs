//! Logging to stderr and a rate limiter for log lines the guest can trigger.
//!
//! Levels: `error` for what ends the VM or fails a request, `warn` for guest
//! misbehaviour the VMM survives (always rate-limited), `info` for life-cycle
//! steps, `debug` for detail. The level comes from `--log-level` or the
//! `HUSK_VMM_LOG` environment variable (default `warn`).

use std::io::Write;
use std::time::{Duration, Instant};

use log::{LevelFilter, Metadata, Record};

struct StderrLogger {
    /// Messages from the rust-vmm crates that parse guest data (virtio-queue
    /// logs bad descriptors itself) share one rate limit.
    guest_paths: std::sync::Mutex<Option<RateLimiter>>,
}

/// Log targets whose messages the guest can trigger at will.
const GUEST_TRIGGERABLE_TARGETS: &[&str] = &["virtio_queue", "vm_memory"];

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        let target = record.target();
        if GUEST_TRIGGERABLE_TARGETS
            .iter()
            .any(|t| target.starts_with(t))
        {
            let mut limiter = self.guest_paths.lock().unwrap_or_else(|e| e.into_inner());
            let limiter =
                limiter.get_or_insert_with(|| RateLimiter::new(10, Duration::from_secs(5)));
            if !limiter.allow() {
                return;
            }
        }
        if self.enabled(record.metadata()) {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("?");
            let _ = writeln!(
                std::io::stderr().lock(),
                "husk-vmm[{name}] {}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger {
    guest_paths: std::sync::Mutex::new(None),
};

/// Parses a level name.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.parse().ok()
}

/// Installs the logger at `level` (a second call only changes the level).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Allows at most `burst` events per `period`; counts what it suppressed.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    period: Duration,
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter allowing `burst` events per `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        RateLimiter {
            burst,
            period,
            window_start: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether one more event may be logged now.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= self.period {
            if self.suppressed > 0 {
                log::warn!("{} similar messages suppressed", self.suppressed);
            }
            self.window_start = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Events suppressed in the current window.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_bursts() {
        let mut r = RateLimiter::new(3, Duration::from_secs(3600));
        assert!(r.allow() && r.allow() && r.allow());
        assert!(!r.allow());
        assert!(!r.allow());
        assert_eq!(r.suppressed(), 2);
    }

    #[test]
    fn window_resets() {
        let mut r = RateLimiter::new(1, Duration::from_millis(1));
        assert!(r.allow());
        std::thread::sleep(Duration::from_millis(3));
        assert!(r.allow());
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("nope"), None);
    }
}
