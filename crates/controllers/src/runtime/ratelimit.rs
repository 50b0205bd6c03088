//! Rate-limited requeue, as client-go's `DefaultControllerRateLimiter`: the delay before an
//! item that failed is retried is the larger of a per-item exponential backoff (5 ms doubling
//! to 1000 s, reset when the item succeeds) and an overall token bucket (10 per second, burst
//! 100) that bounds how fast all failing items together hit the API server.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The per-item and overall limits.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// First retry delay of an item.
    pub base: Duration,
    /// Largest retry delay of an item.
    pub max: Duration,
    /// Overall retries per second.
    pub qps: f64,
    /// Overall burst.
    pub burst: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            base: Duration::from_millis(5),
            max: Duration::from_secs(1000),
            qps: 10.0,
            burst: 100,
        }
    }
}

#[derive(Debug)]
struct State<T> {
    failures: HashMap<T, u32>,
    /// When the tokens taken so far are paid back ("virtual time"): up to `burst` tokens may be
    /// outstanding before a retry must wait.
    bucket_empty_until: Instant,
}

/// A requeue rate limiter keyed by `T` (an `ObjectRef`). Cloning shares it.
#[derive(Debug, Clone)]
pub struct RateLimiter<T> {
    limits: RateLimits,
    state: Arc<Mutex<State<T>>>,
}

impl<T: Eq + Hash + Clone> RateLimiter<T> {
    /// A limiter with `limits`.
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            state: Arc::new(Mutex::new(State {
                failures: HashMap::new(),
                bucket_empty_until: Instant::now(),
            })),
        }
    }

    /// How long to wait before retrying `item`, which just failed (counts the failure).
    pub fn when(&self, item: &T) -> Duration {
        let mut s = self.state.lock();
        let n = s.failures.entry(item.clone()).or_insert(0);
        let exp = *n;
        *n = n.saturating_add(1);
        let per_item = self
            .limits
            .base
            .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.limits.max)
            .min(self.limits.max);
        // Token bucket: each retry takes 1/qps seconds of budget; `burst` may be borrowed.
        let now = Instant::now();
        let per_token = Duration::from_secs_f64(1.0 / self.limits.qps.max(f64::MIN_POSITIVE));
        let window = per_token * self.limits.burst;
        let start = s.bucket_empty_until.max(now);
        let next = start + per_token;
        s.bucket_empty_until = next;
        let bucket = next.saturating_duration_since(now).saturating_sub(window);
        per_item.max(bucket)
    }

    /// Forgets `item`'s failures (it reconciled successfully).
    pub fn forget(&self, item: &T) {
        self.state.lock().failures.remove(item);
    }

    /// How many times `item` failed in a row.
    pub fn failures(&self, item: &T) -> u32 {
        self.state.lock().failures.get(item).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_item_backoff_doubles_and_resets() {
        let l = RateLimiter::new(RateLimits::default());
        let d: Vec<_> = (0..4).map(|_| l.when(&"a")).collect();
        assert_eq!(
            d,
            [5, 10, 20, 40].map(Duration::from_millis).to_vec(),
            "exponential per item"
        );
        assert_eq!(
            l.when(&"b"),
            Duration::from_millis(5),
            "items are independent"
        );
        l.forget(&"a");
        assert_eq!(l.when(&"a"), Duration::from_millis(5));
    }

    #[test]
    fn the_bucket_bounds_everything_after_the_burst() {
        let l = RateLimiter::new(RateLimits {
            base: Duration::ZERO,
            max: Duration::from_secs(1),
            qps: 10.0,
            burst: 5,
        });
        let delays: Vec<_> = (0..8).map(|i| l.when(&i)).collect();
        assert!(delays[..5].iter().all(|d| d.is_zero()), "{delays:?}");
        assert!(delays[5] > Duration::from_millis(50), "{delays:?}");
        assert!(delays[7] > delays[6] && delays[6] > delays[5], "{delays:?}");
        assert!(l.when(&100) > Duration::ZERO);
        let l2 = RateLimiter::new(RateLimits::default());
        assert_eq!(l2.when(&1), Duration::from_millis(5));
        assert!(l2.when(&1) <= Duration::from_millis(10));
    }
}
