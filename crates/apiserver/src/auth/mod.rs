//! Authentication: who is asking. An [`Authenticator`] looks at a request's headers (and the
//! TLS layer's [`PeerCertificate`]) and answers with a [`UserInfo`], "no credentials of my
//! kind", or a rejection. Implementations: static bearer tokens ([`StaticTokens`], loaded from
//! Kubernetes' token CSV by [`StaticTokens::from_csv_file`]), x509 client certificates signed
//! by the cluster CA ([`ClientCertificates`]: CN = user, O = groups), and [`Union`] of several,
//! tried in order as kube-apiserver's union authenticator does. Every authenticated user is
//! also in `system:authenticated`.

mod token;
mod x509;

use std::sync::Arc;

pub use token::StaticTokens;
pub use x509::{ClientCertificates, PeerCertificate};

/// Why a token file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the file failed.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of anonymous requests.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of anonymous requests.
pub const ANONYMOUS: &str = "system:anonymous";

/// An authenticated identity (Kubernetes' `user.Info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// The user name, e.g. `jane` or `system:node:worker-1`.
    pub name: String,
    /// A unique id, may be empty.
    pub uid: String,
    /// Groups, e.g. `system:masters`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user in `groups`.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    /// The identity of requests when authentication is off (the in-process server): a member
    /// of `system:masters`.
    pub fn unsecured_admin() -> Self {
        UserInfo::new("system:admin", &[crate::tls::MASTERS_GROUP, AUTHENTICATED])
    }

    /// The anonymous user.
    pub fn anonymous() -> Self {
        UserInfo::new(ANONYMOUS, &[UNAUTHENTICATED])
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Adds `system:authenticated` if missing.
    fn authenticated(mut self) -> Self {
        if !self.in_group(AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }
}

/// What an authenticator makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request is from this user.
    User(UserInfo),
    /// The request carries no credentials this authenticator handles.
    NoCredentials,
    /// The request carries credentials of this authenticator's kind, and they are wrong
    /// (an unknown token): 401 without trying further.
    Rejected(String),
}

/// Authenticates requests (Kubernetes' `authenticator.Request`).
pub trait Authenticator: Send + Sync + 'static {
    /// Who sent the request with these headers and extensions.
    fn authenticate(&self, parts: &http::request::Parts) -> Outcome;
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(&self, parts: &http::request::Parts) -> Outcome {
        (**self).authenticate(parts)
    }
}

/// Several authenticators, tried in order: the first that knows the user wins, a rejection
/// stops the search.
#[derive(Default, Clone)]
pub struct Union(Vec<Arc<dyn Authenticator>>);

impl std::fmt::Debug for Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Union({} authenticators)", self.0.len())
    }
}

impl Union {
    /// An empty union: every request has no credentials.
    pub fn new() -> Self {
        Union::default()
    }

    /// Adds `a` after those already present.
    pub fn with(mut self, a: impl Authenticator) -> Self {
        self.0.push(Arc::new(a));
        self
    }
}

impl Authenticator for Union {
    fn authenticate(&self, parts: &http::request::Parts) -> Outcome {
        let mut rejected = None;
        for a in &self.0 {
            match a.authenticate(parts) {
                Outcome::User(u) => return Outcome::User(u.authenticated()),
                Outcome::NoCredentials => {}
                Outcome::Rejected(why) => {
                    rejected.get_or_insert(why);
                }
            }
        }
        rejected.map_or(Outcome::NoCredentials, Outcome::Rejected)
    }
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(parts: &http::request::Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
