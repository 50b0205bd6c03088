//! Names the distribution spec defines: repository names, tags, manifest references, and the
//! `host/name:tag@digest` image references clients use.

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
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.split('/').all(valid_component) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        Ok(RepositoryName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", followed by an alphanumeric.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
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

/// The registry Docker-style references without a host resolve to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A full image reference: `registry/repository[:tag][@digest]`, e.g.
/// `127.0.0.1:5000/demo/app:1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Registry host (and port), e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// Repository within the registry.
    pub repository: RepositoryName,
    /// Tag, if given (`latest` is assumed when neither tag nor digest is).
    pub tag: Option<String>,
    /// Digest, if given; it wins over the tag when fetching.
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses a reference the way Docker does: the first component is a registry host when it
    /// contains `.` or `:` or is `localhost`; otherwise the registry is `docker.io` (and a
    /// one-component name gets the `library/` prefix there).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidReference(s.to_owned());
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path)
            }
            _ => (DEFAULT_REGISTRY.to_owned(), rest),
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match path[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&path[..i], Some(path[i + 1..].to_owned()))
            }
            None => (path, None),
        };
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(bad());
        }
        let name = if registry == DEFAULT_REGISTRY && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        };
        let repository = RepositoryName::new(&name).map_err(|_| bad())?;
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The manifest reference to fetch: the digest if any, else the tag, else `latest`.
    pub fn manifest_ref(&self) -> ManifestRef {
        match (&self.digest, &self.tag) {
            (Some(d), _) => ManifestRef::Digest(d.clone()),
            (None, Some(t)) => ManifestRef::Tag(t.clone()),
            (None, None) => ManifestRef::Tag("latest".to_owned()),
        }
    }

    /// The tag to store or push under (`latest` when none was given).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
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

    #[test]
    fn references() {
        let r = ImageReference::parse("127.0.0.1:5000/demo/app:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository.as_str(), "demo/app");
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r = ImageReference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository.as_str(), "library/busybox");
        assert_eq!(r.manifest_ref(), ManifestRef::Tag("latest".into()));
        let d = Digest::sha256(b"x");
        let r = ImageReference::parse(&format!("localhost/a@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), ManifestRef::Digest(d));
        assert!(ImageReference::parse("Host.com/A").is_err());
        assert!(ImageReference::parse("a:b:c").is_err());
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
