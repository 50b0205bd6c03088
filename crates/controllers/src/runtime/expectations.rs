//! "Expectations": what a controller has created or deleted and not yet seen in its cache, per
//! owner, so that a stale cache never makes it create duplicates or delete twice. This is
//! kube-controller-manager's `ControllerExpectations` (with `UIDTrackingControllerExpectations`'
//! idea of remembering *which* objects), checked against the shared cache instead of counted
//! from watch events: a create is observed once the cache holds the created name, a delete once
//! the cache no longer holds that uid (or shows it terminating).
//!
//! A controller calls [`Expectations::satisfied`] at the top of a reconcile and, while it returns
//! `false`, only updates status; it records every create and delete it issues. Entries expire
//! after a timeout (five minutes, as in Kubernetes) in case the cache never sees an object that
//! was created and removed again in between.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long an unobserved expectation blocks its owner (Kubernetes' `ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Pending {
    /// Names created, not yet in the cache.
    creates: HashSet<String>,
    /// (name, uid) deleted, still in the cache.
    deletes: HashSet<(String, String)>,
    since: Option<Instant>,
}

/// Per-owner creates and deletes in flight. Cloning shares the table.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    table: Arc<Mutex<HashMap<String, Pending>>>,
}

/// What the cache says about one object a controller created or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// The cache has no object of that name.
    Absent,
    /// The cache holds it with this uid; `terminating` if it has a deletionTimestamp.
    Present {
        /// Its uid.
        uid: &'a str,
        /// Whether it is being deleted.
        terminating: bool,
    },
}

impl Expectations {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `owner` created an object called `name`.
    pub fn created(&self, owner: &str, name: &str) {
        let mut t = self.table.lock();
        let p = t.entry(owner.to_owned()).or_default();
        p.creates.insert(name.to_owned());
        p.since.get_or_insert_with(Instant::now);
    }

    /// Records that `owner` deleted the object `name` with `uid`.
    pub fn deleted(&self, owner: &str, name: &str, uid: &str) {
        let mut t = self.table.lock();
        let p = t.entry(owner.to_owned()).or_default();
        p.deletes.insert((name.to_owned(), uid.to_owned()));
        p.since.get_or_insert_with(Instant::now);
    }

    /// Whether everything `owner` created and deleted has been observed, looking each name up
    /// with `lookup`. Observed entries are dropped; expired ones too (with a warning).
    pub fn satisfied<'a>(&self, owner: &str, lookup: impl Fn(&str) -> Seen<'a>) -> bool {
        let mut t = self.table.lock();
        let Some(p) = t.get_mut(owner) else {
            return true;
        };
        p.creates.retain(|name| lookup(name) == Seen::Absent);
        p.deletes.retain(|(name, uid)| match lookup(name) {
            Seen::Present {
                uid: seen,
                terminating,
            } => seen == uid && !terminating,
            Seen::Absent => false,
        });
        if p.creates.is_empty() && p.deletes.is_empty() {
            t.remove(owner);
            return true;
        }
        if p.since.is_some_and(|s| s.elapsed() > EXPECTATIONS_TIMEOUT) {
            tracing::warn!(owner, "expectations expired unobserved");
            t.remove(owner);
            return true;
        }
        false
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.table.lock().remove(owner);
    }

    /// How many creates and deletes of `owner` are still unobserved.
    pub fn pending(&self, owner: &str) -> (usize, usize) {
        self.table
            .lock()
            .get(owner)
            .map_or((0, 0), |p| (p.creates.len(), p.deletes.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_deletes_block_until_seen() {
        let e = Expectations::new();
        assert!(e.satisfied("rs", |_| Seen::Absent));
        e.created("rs", "p1");
        e.deleted("rs", "p0", "u0");
        let live = |n: &str| match n {
            "p0" => Seen::Present {
                uid: "u0",
                terminating: false,
            },
            _ => Seen::Absent,
        };
        assert!(!e.satisfied("rs", live));
        assert_eq!(e.pending("rs"), (1, 1));
        // p1 appears, p0 is terminating: both observed.
        let seen = |n: &str| match n {
            "p0" => Seen::Present {
                uid: "u0",
                terminating: true,
            },
            _ => Seen::Present {
                uid: "u1",
                terminating: false,
            },
        };
        assert!(e.satisfied("rs", seen));
        assert_eq!(e.pending("rs"), (0, 0));
    }

    #[test]
    fn a_recreated_name_with_another_uid_counts_as_deleted() {
        let e = Expectations::new();
        e.deleted("ss", "web-0", "old");
        assert!(e.satisfied("ss", |_| Seen::Present {
            uid: "new",
            terminating: false
        }));
    }
}
