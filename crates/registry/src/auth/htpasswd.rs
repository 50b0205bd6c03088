//! Users and bcrypt password hashes from an htpasswd file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Users and bcrypt password hashes, as `htpasswd -B` writes them (`user:$2y$…`).
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// SHA-256 of `user:password` pairs already verified: bcrypt is deliberately slow, and
    /// clients authenticate every request.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Htpasswd {
    /// Reads an htpasswd file; only bcrypt entries are accepted.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
        Self::parse(&text).map_err(|reason| Error::Htpasswd {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses htpasswd text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: no ':'", n + 1))?;
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {}: user {user:?} has no bcrypt hash (use htpasswd -B)",
                    n + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// An htpasswd with one user whose password is hashed here (tests, generated configs).
    pub fn single(user: &str, password: &str) -> Self {
        let hash = bcrypt::hash(password, 5).expect("bcrypt hash of a short password");
        Htpasswd::parse(&format!("{user}:{hash}")).expect("generated entry is valid")
    }

    /// True when `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// True when `password` is `user`'s.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let mut cache = self.verified.lock().expect("htpasswd cache poisoned");
        if cache.contains(&key) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }
}
