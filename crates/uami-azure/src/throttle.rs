//! Client-side pacing that keeps the controller within ARM's request limits.
//!
//! ARM limits each (subscription, principal, operation type) with token buckets (ARM-NOTES §4:
//! reads 250 and 25/s, writes and deletes 200 and 10/s) and reports what is left in
//! `x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}`. The controller spends the
//! budget at a ceiling rate while plenty remains, slows towards a floor rate as the reported
//! budget runs low, and stops for `Retry-After` after a 429. The arithmetic takes the current
//! instant as a parameter, so it is tested by counting, not by timing.
//!
//! This is not a `governor` rate limiter (the IMDS client uses one): a governor quota is a fixed
//! rate and burst chosen when the limiter is built, and its state cannot be told what the server
//! reports. Here the rate itself moves with the budget ARM reports in every answer (ceiling while
//! plenty remains, down to the floor near empty), the estimate is reset to that report, and a
//! 429 blocks the bucket until its `Retry-After`. Rebuilding a governor limiter on every answer
//! would lose its state and still not express the report or the block.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The three operation types ARM counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// GET (and HEAD).
    Read,
    /// PUT, PATCH, POST.
    Write,
    /// DELETE.
    Delete,
}

impl OpKind {
    /// A static label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Delete => "delete",
        }
    }
}

/// How one operation type is paced against ARM's remaining budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// Requests per second once the remaining budget is nearly spent (ARM refills writes at 10/s
    /// and reads at 25/s; a floor a little below keeps a reserve for other clients).
    pub floor: f64,
    /// Requests per second at most, however much budget remains.
    pub ceiling: f64,
    /// ARM's bucket size, assumed until a response reports the remaining budget.
    pub budget: u32,
}

/// Pacing per operation type for each subscription.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Reads per subscription.
    pub reads: Pacing,
    /// Writes per subscription.
    pub writes: Pacing,
    /// Deletes per subscription.
    pub deletes: Pacing,
}

impl Default for ThrottleConfig {
    /// ARM's buckets (ARM-NOTES §4): reads 250 and 25/s, writes and deletes 200 and 10/s.
    fn default() -> Self {
        Self {
            reads: Pacing {
                floor: 20.0,
                ceiling: 250.0,
                budget: 250,
            },
            writes: Pacing {
                floor: 8.0,
                ceiling: 100.0,
                budget: 200,
            },
            deletes: Pacing {
                floor: 8.0,
                ceiling: 100.0,
                budget: 200,
            },
        }
    }
}

/// The client's view of one ARM bucket: the remaining budget ARM last reported (less what was
/// sent since, plus what the floor rate refills), and when the next request may go.
///
/// While plenty remains, requests go at the ceiling; below a quarter of the largest budget seen
/// the pace falls linearly to the floor, reached when only a small reserve is left. A 429 stops
/// the bucket until its `Retry-After` has passed.
#[derive(Debug, Clone)]
pub struct PacedBucket {
    pacing: Pacing,
    remaining: f64,
    largest: f64,
    last: Instant,
    next: Instant,
    blocked_until: Instant,
}

impl PacedBucket {
    /// A bucket assumed full (`pacing.budget`) as of `now`.
    pub fn new(pacing: Pacing, now: Instant) -> Self {
        let budget = f64::from(pacing.budget.max(1));
        Self {
            pacing,
            remaining: budget,
            largest: budget,
            last: now,
            next: now,
            blocked_until: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.remaining = (self.remaining + elapsed * self.pacing.floor.max(0.0)).min(self.largest);
        self.last = self.last.max(now);
    }

    /// Requests per second at the current estimate of the remaining budget.
    pub fn rate(&self) -> f64 {
        let floor = self.pacing.floor.max(0.1);
        let ceiling = self.pacing.ceiling.max(floor);
        let reserve = (self.largest * 0.02).max(2.0);
        let low = (self.largest * 0.25).max(reserve + 1.0);
        if self.remaining >= low {
            ceiling
        } else if self.remaining <= reserve {
            floor
        } else {
            floor + (ceiling - floor) * (self.remaining - reserve) / (low - reserve)
        }
    }

    /// Takes a request slot at `now`, or says how long to wait.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if now < self.blocked_until {
            return Err(self.blocked_until - now);
        }
        self.refill(now);
        if now < self.next {
            return Err(self.next - now);
        }
        let interval = Duration::from_secs_f64(1.0 / self.rate());
        self.next = self.next.max(now) + interval;
        self.remaining = (self.remaining - 1.0).max(0.0);
        Ok(())
    }

    /// ARM reported `remaining` requests left in this bucket at `now`.
    pub fn observe(&mut self, remaining: u64, now: Instant) {
        self.refill(now);
        // u64 to f64: budgets are far below 2^52.
        let reported = remaining as f64;
        self.largest = self.largest.max(reported);
        self.remaining = reported;
    }

    /// ARM answered 429: nothing goes before `retry_after` has passed.
    pub fn throttled(&mut self, retry_after: Duration, now: Instant) {
        self.refill(now);
        self.remaining = 0.0;
        self.blocked_until = self.blocked_until.max(now + retry_after);
    }

    /// The estimate of the remaining budget at `now`, rounded down.
    pub fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        // Bounded by `largest`, which came from a u64 or u32.
        self.remaining.floor().max(0.0) as u64
    }
}

/// Buckets keyed by (subscription, operation type), created on first use.
#[derive(Debug, Clone)]
pub struct SubscriptionThrottle {
    config: ThrottleConfig,
    buckets: Arc<Mutex<HashMap<(String, OpKind), PacedBucket>>>,
}

impl SubscriptionThrottle {
    /// Empty set of buckets with the given pacing.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            buckets: Arc::default(),
        }
    }

    fn with<T>(
        &self,
        subscription: &str,
        kind: OpKind,
        now: Instant,
        f: impl FnOnce(&mut PacedBucket) -> T,
    ) -> T {
        let pacing = match kind {
            OpKind::Read => self.config.reads,
            OpKind::Write => self.config.writes,
            OpKind::Delete => self.config.deletes,
        };
        let mut buckets = self.buckets.lock();
        f(buckets
            .entry((subscription.to_ascii_lowercase(), kind))
            .or_insert_with(|| PacedBucket::new(pacing, now)))
    }

    /// Takes a slot for (subscription, kind) at `now` or returns the wait.
    /// The subscription is compared case-insensitively.
    pub fn try_take(&self, subscription: &str, kind: OpKind, now: Instant) -> Result<(), Duration> {
        self.with(subscription, kind, now, |b| b.try_take(now))
    }

    /// Waits until a slot for (subscription, kind) is available, then takes it.
    pub async fn acquire(&self, subscription: &str, kind: OpKind) {
        // Not a retry with backoff: each wait is the one the pacing computed for this bucket.
        loop {
            match self.try_take(subscription, kind, Instant::now()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait.max(Duration::from_millis(1))).await,
            }
        }
    }

    /// Record the remaining budget ARM reported for (subscription, kind).
    pub fn observe(&self, subscription: &str, kind: OpKind, remaining: u64, now: Instant) {
        self.with(subscription, kind, now, |b| b.observe(remaining, now));
    }

    /// Record a 429 for (subscription, kind): no request goes before `retry_after`.
    pub fn throttled(&self, subscription: &str, kind: OpKind, retry_after: Duration, now: Instant) {
        self.with(subscription, kind, now, |b| b.throttled(retry_after, now));
    }

    /// The estimated remaining budget of (subscription, kind).
    pub fn remaining(&self, subscription: &str, kind: OpKind, now: Instant) -> u64 {
        self.with(subscription, kind, now, |b| b.remaining(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing(floor: f64, ceiling: f64, budget: u32) -> Pacing {
        Pacing {
            floor,
            ceiling,
            budget,
        }
    }

    /// Requests granted in `secs` seconds when asking every millisecond.
    fn granted(b: &mut PacedBucket, t0: Instant, secs: u64) -> usize {
        (0..secs * 1000)
            .filter(|ms| b.try_take(t0 + Duration::from_millis(*ms)).is_ok())
            .count()
    }

    #[test]
    fn spends_the_budget_at_the_ceiling_then_slows_to_the_floor() {
        let t0 = Instant::now();
        let mut b = PacedBucket::new(pacing(10.0, 100.0, 200), t0);
        // 150 of the 200 go at the ceiling (100/s): 1.5 s.
        assert_eq!(granted(&mut b, t0, 1), 100);
        assert!(b.rate() >= 99.0, "{}", b.rate());
        // Then the pace falls as the budget runs low and settles near the floor.
        let t1 = t0 + Duration::from_secs(1);
        let second = granted(&mut b, t1, 10);
        assert!(second < 10 * 30, "{second}");
        let t2 = t1 + Duration::from_secs(10);
        let third = granted(&mut b, t2, 10);
        assert!((90..=160).contains(&third), "{third}");
    }

    #[test]
    fn follows_the_remaining_budget_that_arm_reports() {
        let t0 = Instant::now();
        let mut b = PacedBucket::new(pacing(10.0, 100.0, 200), t0);
        // Another client spent most of the budget: the next requests go at the floor.
        b.observe(3, t0);
        assert!((b.rate() - 10.0).abs() < 1e-9);
        // A larger bucket than assumed is learnt from the header and spent at the ceiling.
        b.observe(2000, t0);
        assert_eq!(granted(&mut b, t0, 10), 1000);
    }

    #[test]
    fn a_429_stops_the_bucket_for_retry_after() {
        let t0 = Instant::now();
        let mut b = PacedBucket::new(pacing(10.0, 100.0, 200), t0);
        b.throttled(Duration::from_secs(7), t0);
        assert_eq!(b.try_take(t0), Err(Duration::from_secs(7)));
        assert!(b.try_take(t0 + Duration::from_secs(6)).is_err());
        assert!(b.try_take(t0 + Duration::from_secs(7)).is_ok());
    }

    #[test]
    fn subscriptions_and_kinds_have_separate_buckets() {
        let cfg = ThrottleConfig {
            reads: pacing(1.0, 1.0, 2),
            writes: pacing(1.0, 1.0, 1),
            deletes: pacing(1.0, 1.0, 1),
        };
        let t = SubscriptionThrottle::new(cfg);
        let now = Instant::now();
        assert!(t.try_take("SUB-A", OpKind::Read, now).is_ok());
        assert!(t.try_take("sub-a", OpKind::Read, now).is_err());
        assert!(t.try_take("sub-a", OpKind::Write, now).is_ok());
        assert!(t.try_take("sub-a", OpKind::Write, now).is_err());
        assert!(t.try_take("sub-a", OpKind::Delete, now).is_ok());
        assert!(t.try_take("sub-b", OpKind::Read, now).is_ok());
        t.throttled("sub-b", OpKind::Read, Duration::from_secs(3), now);
        assert!(
            t.try_take("SUB-B", OpKind::Read, now + Duration::from_secs(2))
                .is_err()
        );
        t.observe("sub-a", OpKind::Write, 150, now);
        assert_eq!(t.remaining("sub-a", OpKind::Write, now), 150);
    }
}
