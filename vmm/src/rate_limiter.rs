//! Token-bucket rate limiters for the block and network devices.
//!
//! A [`RateLimiter`] holds up to two buckets, one counting bytes and one
//! counting operations (requests or frames), each configured by a
//! [`TokenBucketConfig`]: `size` tokens refilled evenly over `refill_time`
//! milliseconds, plus a `one_time_burst` spent first and never refilled.
//! Buckets start full. A device asks [`RateLimiter::consume`] before each
//! request; when either bucket cannot pay, the request waits, the limiter
//! arms its timer for the moment both can, and the device stops serving
//! that queue until the timer fires on the event loop. One request larger
//! than a bucket is let through when the bucket is full and leaves a debt,
//! so the long-run rate holds whatever the request sizes.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::config::{RateLimiterConfig, TokenBucketConfig};

/// Errors of a rate limiter's timer.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// The timer could not be created.
    #[error("cannot create the rate limiter's timer: {0}")]
    Timer(#[source] vmm_sys_util::errno::Error),
}

/// One bucket: `size` tokens per `refill` period.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u64,
    /// Tokens available; below zero after a request larger than the bucket.
    budget: i128,
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` for a configuration that sets no limit
    /// (zero size or refill time, as in Firecracker's schema).
    pub fn new(config: &TokenBucketConfig, now: Instant) -> Option<Self> {
        if config.size == 0 || config.refill_time == 0 {
            return None;
        }
        Some(TokenBucket {
            size: config.size,
            refill_ns: config.refill_time.saturating_mul(1_000_000),
            budget: i128::from(config.size),
            burst: config.one_time_burst.unwrap_or(0),
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let size = u128::from(self.size);
        let refill_ns = u128::from(self.refill_ns);
        let add = elapsed * size / refill_ns;
        if add == 0 {
            return;
        }
        let full = i128::from(self.size);
        let budget = self
            .budget
            .saturating_add(i128::try_from(add).unwrap_or(i128::MAX));
        if budget >= full {
            self.budget = full;
            self.last = now;
        } else {
            self.budget = budget;
            // Keep the fraction of a token not yet added.
            let used_ns = add * refill_ns / size;
            self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        }
    }

    /// What `n` tokens need available: all of them, or a full bucket.
    fn needed(&self, n: u64) -> i128 {
        i128::from(n.min(self.size))
    }

    fn can_pay(&self, n: u64) -> bool {
        i128::from(self.burst) + self.budget >= self.needed(n)
    }

    fn pay(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(n - from_burst);
    }

    /// How long until `n` tokens can be paid (after a refill at `now`).
    fn wait(&self, n: u64) -> Duration {
        let missing = self.needed(n) - i128::from(self.burst) - self.budget;
        if missing <= 0 {
            return Duration::ZERO;
        }
        let missing = missing.unsigned_abs();
        let ns = (missing * u128::from(self.refill_ns)).div_ceil(u128::from(self.size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Tokens available now, burst included (for tests and metrics).
    pub fn available(&self) -> i128 {
        i128::from(self.burst) + self.budget
    }
}

/// The shortest wait armed: a timer much shorter than this costs more
/// wake-ups than it saves.
const MIN_WAIT: Duration = Duration::from_micros(500);

/// A bandwidth bucket and an operations bucket, with the timer that ends a
/// wait.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    throttled: u64,
}

impl RateLimiter {
    /// A limiter with `config` (no limit for `None` or empty buckets). The
    /// timer exists even without limits, so that a limit can be set later.
    pub fn new(config: Option<&RateLimiterConfig>) -> Result<Self, RateLimiterError> {
        let mut limiter = RateLimiter {
            bandwidth: None,
            ops: None,
            timer: TimerFd::new().map_err(RateLimiterError::Timer)?,
            blocked: false,
            throttled: 0,
        };
        limiter.update(config);
        Ok(limiter)
    }

    /// Replaces the buckets (full again). A wait in progress ends at once
    /// through the timer, so that the device serves its queue again on the
    /// event loop, where it also resumes watching what it stopped watching.
    pub fn update(&mut self, config: Option<&RateLimiterConfig>) {
        let now = Instant::now();
        let config = config.copied().unwrap_or_default();
        self.bandwidth = config
            .bandwidth
            .as_ref()
            .and_then(|b| TokenBucket::new(b, now));
        self.ops = config.ops.as_ref().and_then(|b| TokenBucket::new(b, now));
        if self.blocked && self.timer.reset(MIN_WAIT, None).is_err() {
            self.blocked = false;
        }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Whether the device is waiting for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// How many times a request had to wait.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Pays for one operation of `bytes` bytes, or (when either bucket
    /// cannot pay) arms the timer and returns false: the caller keeps the
    /// request for later and stops serving the queue.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        if !self.is_limited() {
            return true;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        if let Some(b) = &mut self.bandwidth {
            b.refill(now);
            if !b.can_pay(bytes) {
                wait = wait.max(b.wait(bytes));
            }
        }
        if let Some(o) = &mut self.ops {
            o.refill(now);
            if !o.can_pay(1) {
                wait = wait.max(o.wait(1));
            }
        }
        if wait.is_zero() {
            if let Some(b) = &mut self.bandwidth {
                b.pay(bytes);
            }
            if let Some(o) = &mut self.ops {
                o.pay(1);
            }
            return true;
        }
        self.throttled += 1;
        self.blocked = true;
        if let Err(e) = self.timer.reset(wait.max(MIN_WAIT), None) {
            // Without a timer nothing would end the wait: let the request
            // through rather than stall the device.
            log::error!("rate limiter: cannot arm the timer: {e}");
            self.blocked = false;
            return true;
        }
        false
    }

    /// Called when the timer's descriptor is readable: the wait is over.
    pub fn on_timer(&mut self) {
        let _ = self.timer.wait();
        self.blocked = false;
    }

    /// Tokens left in the (bandwidth, ops) buckets, for tests.
    pub fn available(&self) -> (Option<i128>, Option<i128>) {
        (
            self.bandwidth.as_ref().map(TokenBucket::available),
            self.ops.as_ref().map(TokenBucket::available),
        )
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: Option<u64>, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time,
        }
    }

    #[test]
    fn zero_size_or_refill_time_sets_no_limit() {
        let now = Instant::now();
        assert!(TokenBucket::new(&bucket(0, None, 100), now).is_none());
        assert!(TokenBucket::new(&bucket(100, None, 0), now).is_none());
        let mut r = RateLimiter::new(Some(&RateLimiterConfig {
            bandwidth: Some(bucket(0, None, 0)),
            ops: None,
        }))
        .unwrap();
        assert!(!r.is_limited());
        for _ in 0..1000 {
            assert!(r.consume(1 << 30));
        }
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let t0 = Instant::now();
        // 1000 tokens per 100 ms.
        let mut b = TokenBucket::new(&bucket(1000, None, 100), t0).unwrap();
        b.pay(1000);
        assert_eq!(b.available(), 0);
        b.refill(t0 + Duration::from_millis(25));
        assert_eq!(b.available(), 250);
        b.refill(t0 + Duration::from_millis(50));
        assert_eq!(b.available(), 500);
        // Never more than the size.
        b.refill(t0 + Duration::from_secs(10));
        assert_eq!(b.available(), 1000);
    }

    #[test]
    fn fractions_of_a_token_are_not_lost() {
        let t0 = Instant::now();
        // 3 tokens per second: one every 333.3 ms.
        let mut b = TokenBucket::new(&bucket(3, None, 1000), t0).unwrap();
        b.pay(3);
        for ms in (100..=1000).step_by(100) {
            b.refill(t0 + Duration::from_millis(ms));
        }
        assert_eq!(b.available(), 3);
    }

    #[test]
    fn burst_is_spent_first_and_not_refilled() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, Some(50), 1000), t0).unwrap();
        assert_eq!(b.available(), 150);
        b.pay(120);
        assert_eq!((b.burst, b.budget), (0, 30));
        b.refill(t0 + Duration::from_secs(5));
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn a_request_larger_than_the_bucket_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, None, 1000), t0).unwrap();
        assert!(b.can_pay(250));
        b.pay(250);
        assert_eq!(b.available(), -150);
        assert!(!b.can_pay(1));
        // 151 tokens missing at 100 per second.
        assert_eq!(b.wait(1), Duration::from_millis(1510));
    }

    #[test]
    fn wait_is_what_the_missing_tokens_take() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(1000, None, 1000), t0).unwrap();
        b.pay(1000);
        assert_eq!(b.wait(100), Duration::from_millis(100));
        assert_eq!(b.wait(0), Duration::ZERO);
    }

    #[test]
    fn a_blocked_limiter_waits_for_its_timer() {
        let mut r = RateLimiter::new(Some(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(2, None, 50)),
        }))
        .unwrap();
        assert!(r.consume(10));
        assert!(r.consume(10));
        assert!(!r.consume(10));
        assert!(r.is_blocked());
        assert_eq!(r.throttled(), 1);
        // Blocked until the timer fires, whatever time says.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!r.consume(10));
        let mut fds = [libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        assert_eq!(n, 1, "the timer did not fire");
        r.on_timer();
        assert!(!r.is_blocked());
        assert!(r.consume(10));
    }

    #[test]
    fn both_buckets_must_pay_and_neither_pays_alone() {
        let mut r = RateLimiter::new(Some(&RateLimiterConfig {
            bandwidth: Some(bucket(100, None, 1000)),
            ops: Some(bucket(10, None, 1000)),
        }))
        .unwrap();
        assert!(r.consume(60));
        assert!(!r.consume(60));
        // The ops bucket was not charged for the refused request.
        assert_eq!(r.available(), (Some(40), Some(9)));
    }

    #[test]
    fn update_replaces_the_limits_and_ends_a_wait() {
        let mut r = RateLimiter::new(Some(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(1, None, 60_000)),
        }))
        .unwrap();
        assert!(r.consume(1));
        assert!(!r.consume(1));
        r.update(None);
        assert!(!r.is_limited());
        // The wait ends through the timer, soon.
        assert!(r.is_blocked());
        let mut fds = [libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) }, 1);
        r.on_timer();
        assert!(r.consume(1));
    }
}
