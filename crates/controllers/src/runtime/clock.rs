//! Time, injectable: controllers that act on wall-clock time (CronJob schedules, Job deadlines
//! and TTLs, progress deadlines) read a [`Clock`], so tests drive them with a [`FakeClock`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;
pub use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;

    /// The longest a controller should sleep before looking at this clock again: a real clock
    /// lets it sleep until its deadline, a fake one is polled (its time jumps).
    fn max_sleep(&self) -> Option<Duration> {
        None
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to. Cloning shares it.
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<Mutex<Timestamp>>,
}

impl FakeClock {
    /// A clock standing at `now`.
    pub fn new(now: Timestamp) -> Self {
        FakeClock {
            now: Arc::new(Mutex::new(now)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now = plus(*now, by);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        *self.now.lock() = to;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *self.now.lock()
    }

    fn max_sleep(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

/// `d` capped by the clock's [`Clock::max_sleep`].
pub fn sleep_for(clock: &dyn Clock, d: Duration) -> Duration {
    clock.max_sleep().map_or(d, |m| d.min(m))
}

/// `t` plus `secs` seconds (saturating at the end of time).
pub fn plus_secs(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MAX)
}

/// `t` plus `d`.
pub fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// How long from `now` until `then` (zero if passed).
pub fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}
