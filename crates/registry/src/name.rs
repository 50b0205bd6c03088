//! Names the distribution spec defines: repository names, tags and manifest references. Full
//! `host/name:tag@digest` image references are `berth_image::Reference`.

use std::fmt;
use std::str::FromStr;

use berth_api::Digest;

use crate::{Error, Result};

/// Longest repository name accepted (the spec asks clients to keep host + name under 255).
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/busybox`.
///
/// Each `/`-separated component matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, so no component
/// is empty, `.` or `..`, or starts with `_`: names map safely onto directories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name
                .split('/')
                .all(berth_image::reference::is_valid_path_component)
        {
            return Err(Error::InvalidName(name.to_owned()));
        }
        Ok(RepositoryName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepositoryName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RepositoryName::new(s)
    }
}

/// True when `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What a manifest endpoint names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ManifestRef {
    /// A tag such as `latest`.
    Tag(String),
    /// A content digest.
    Digest(Digest),
}

impl ManifestRef {
    /// Parses a `<reference>` path segment: a digest if it contains `:`, else a tag.
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains(':') {
            Ok(ManifestRef::Digest(s.parse()?))
        } else if valid_tag(s) {
            Ok(ManifestRef::Tag(s.to_owned()))
        } else {
            Err(Error::InvalidTag(s.to_owned()))
        }
    }
}

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestRef::Tag(t) => f.write_str(t),
            ManifestRef::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["a", "library/busybox", "a.b_c__d---e/f0", "x/y/z", "0"] {
            assert!(RepositoryName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a/../b", "..", ".a", "a.", "_a", "a___b", "a_-b", "a..b",
            "a b", "a:b",
        ] {
            assert!(RepositoryName::new(bad).is_err(), "{bad}");
        }
        assert!(RepositoryName::new(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        assert!(valid_tag("latest") && valid_tag("_x") && valid_tag("v1.2-rc_3"));
        assert!(!valid_tag("") && !valid_tag(".x") && !valid_tag("-x") && !valid_tag("a/b"));
        assert!(valid_tag(&"a".repeat(128)) && !valid_tag(&"a".repeat(129)));
    }

    proptest::proptest! {
        #[test]
        fn valid_names_never_traverse(name in "[a-z0-9._/-]{1,40}") {
            if let Ok(n) = RepositoryName::new(&name) {
                for c in n.as_str().split('/') {
                    proptest::prop_assert!(!c.is_empty() && c != "." && c != ".." && !c.starts_with('_'));
                }
            }
        }
    }
}
