//! Client-side token buckets that keep the controller below ARM's request limits.
//!
//! ARM limits each (subscription, principal, operation type) with token buckets (ARM-NOTES §4:
//! 25 reads, 10 writes, 10 deletes per second). The controller keeps its own, slightly smaller
//! buckets so it waits on its side instead of collecting 429s. The bucket arithmetic takes the
//! current instant as a parameter, so it is tested by counting, not by timing. The same bucket
//! type also paces the IMDS client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket: `capacity` tokens at most, refilled at `refill_per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        let capacity = f64::from(rate.burst.max(1));
        Self {
            capacity,
            refill_per_sec: rate.per_second.max(f64::MIN_POSITIVE),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token at `now`, or says how long to wait until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.refill_per_sec))
        }
    }

    /// Tokens currently available (after refilling up to `now`), rounded down.
    pub fn available(&mut self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = self.last.max(now);
        // The value is bounded by `capacity`, which came from a u32.
        self.tokens.floor().clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// A refill rate and a burst size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket capacity (requests that may go out at once after a quiet period).
    pub burst: u32,
}

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

/// Per-operation-type rates for each subscription.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Reads per subscription.
    pub reads: Rate,
    /// Writes per subscription.
    pub writes: Rate,
    /// Deletes per subscription.
    pub deletes: Rate,
}

impl Default for ThrottleConfig {
    /// Below ARM's 25/10/10 per second, with bursts well under ARM's 250/200/200 buckets.
    fn default() -> Self {
        Self {
            reads: Rate {
                per_second: 20.0,
                burst: 100,
            },
            writes: Rate {
                per_second: 8.0,
                burst: 50,
            },
            deletes: Rate {
                per_second: 8.0,
                burst: 50,
            },
        }
    }
}

/// Buckets keyed by (subscription, operation type), created on first use.
#[derive(Debug, Clone)]
pub struct SubscriptionThrottle {
    config: ThrottleConfig,
    buckets: Arc<Mutex<HashMap<(String, OpKind), TokenBucket>>>,
}

impl SubscriptionThrottle {
    /// Empty set of buckets with the given rates.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            buckets: Arc::default(),
        }
    }

    /// Takes a token for (subscription, kind) at `now` or returns the wait.
    /// The subscription is compared case-insensitively.
    pub fn try_take(&self, subscription: &str, kind: OpKind, now: Instant) -> Result<(), Duration> {
        let rate = match kind {
            OpKind::Read => self.config.reads,
            OpKind::Write => self.config.writes,
            OpKind::Delete => self.config.deletes,
        };
        let mut buckets = self.buckets.lock();
        buckets
            .entry((subscription.to_ascii_lowercase(), kind))
            .or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(now)
    }

    /// Waits until a token for (subscription, kind) is available, then takes it.
    pub async fn acquire(&self, subscription: &str, kind: OpKind) {
        loop {
            match self.try_take(subscription, kind, Instant::now()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait.max(Duration::from_millis(1))).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_empty_at_one_instant() {
        let now = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                per_second: 10.0,
                burst: 5,
            },
            now,
        );
        let granted = (0..8).filter(|_| b.try_take(now).is_ok()).count();
        assert_eq!(granted, 5);
        let wait = b.try_take(now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
    }

    #[test]
    fn refills_by_elapsed_time_up_to_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                per_second: 10.0,
                burst: 5,
            },
            t0,
        );
        for _ in 0..5 {
            b.try_take(t0).unwrap();
        }
        // 300 ms at 10/s refills three tokens.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..10).filter(|_| b.try_take(t1).is_ok()).count(), 3);
        // A long pause refills to capacity, never beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.available(t2), 5);
    }

    #[test]
    fn subscriptions_and_kinds_have_separate_buckets() {
        let cfg = ThrottleConfig {
            reads: Rate {
                per_second: 1.0,
                burst: 2,
            },
            writes: Rate {
                per_second: 1.0,
                burst: 1,
            },
            deletes: Rate {
                per_second: 1.0,
                burst: 1,
            },
        };
        let t = SubscriptionThrottle::new(cfg);
        let now = Instant::now();
        assert!(t.try_take("SUB-A", OpKind::Read, now).is_ok());
        assert!(t.try_take("sub-a", OpKind::Read, now).is_ok());
        assert!(t.try_take("sub-a", OpKind::Read, now).is_err());
        assert!(t.try_take("sub-a", OpKind::Write, now).is_ok());
        assert!(t.try_take("sub-a", OpKind::Write, now).is_err());
        assert!(t.try_take("sub-a", OpKind::Delete, now).is_ok());
        assert!(t.try_take("sub-b", OpKind::Read, now).is_ok());
    }
}
