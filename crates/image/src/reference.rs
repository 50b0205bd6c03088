//! Image references (`name:tag`, `name@digest`) with Docker's normalisation of short names.
//!
//! `busybox` means `docker.io/library/busybox:latest`; `me/app` means `docker.io/me/app:latest`; a
//! first component with a `.` or a `:` (or `localhost`) is a registry host, so
//! `127.0.0.1:5000/demo/app:1` names repository `demo/app` on that registry. A reference keeps its
//! tag and/or digest; with neither, the tag is `latest`.

use std::fmt;
use std::str::FromStr;

use berth_api::Digest;

use crate::error::{Error, Result};

/// The registry short names live on.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The repository namespace of official images on the default registry.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// The tag of a reference that names none.
pub const DEFAULT_TAG: &str = "latest";

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `s` (see the module docs).
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidReference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > 512 {
            return Err(invalid("longer than 512 characters"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse::<Digest>().map_err(|e| Error::InvalidReference {
                    reference: s.to_owned(),
                    reason: e.to_string(),
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| invalid(&r))?;
        }
        let (domain, path) = split_domain(name);
        validate_domain(&domain).map_err(|r| invalid(&r))?;
        validate_path(&path).map_err(|r| invalid(&r))?;
        if domain.len() + 1 + path.len() > 255 {
            return Err(invalid("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host (with port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// This repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self> {
        validate_tag(tag).map_err(|reason| Error::InvalidReference {
            reference: format!("{}:{tag}", self.name()),
            reason,
        })?;
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// This repository with `digest` and no tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The repository's short name: `busybox` for `docker.io/library/busybox`, `me/app` for
    /// `docker.io/me/app`, the full name for other registries.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix("library/")
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.path)
                .to_owned()
        } else {
            self.name()
        }
    }

    /// The short form Docker prints: `busybox:latest` for `docker.io/library/busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut name = self.familiar_name();
        if let Some(tag) = &self.tag {
            name.push(':');
            name.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            name.push('@');
            name.push_str(&digest.to_string());
        }
        name
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

fn split_domain(name: &str) -> (String, String) {
    let (domain, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN.to_owned()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !rest.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{rest}")
    } else {
        rest
    };
    (domain, path)
}

fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let mut chars = tag.chars();
    let ok = tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

fn validate_domain(domain: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port))
                if !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') =>
            {
                (
                    None,
                    port.strip_prefix(':')
                        .map(str::to_owned)
                        .or_else(|| (!port.is_empty()).then(|| port.to_owned())),
                )
            }
            _ => return Err(format!("bad registry host {domain:?}")),
        }
    } else {
        match domain.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port.to_owned())),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!("bad registry host {domain:?}"));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("bad registry port in {domain:?}"));
    }
    Ok(())
}

/// Repository path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by `/`.
fn validate_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name".to_owned());
    }
    for component in path.split('/') {
        if !is_valid_path_component(component) {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

/// True when `c` is a valid repository path component per the distribution spec:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (so never empty, `.`, `..` or starting with `_`).
pub fn is_valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("me/app"), "docker.io/me/app:latest");
        assert_eq!(norm("index.docker.io/me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(
            norm("127.0.0.1:5000/demo/app:1"),
            "127.0.0.1:5000/demo/app:1"
        );
        assert_eq!(norm("ghcr.io/a/b/c"), "ghcr.io/a/b/c:latest");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
        let d = Digest::sha256(b"x");
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.familiar(), format!("busybox@{d}"));
        assert_eq!(
            Reference::parse("me/app:v2").unwrap().familiar(),
            "me/app:v2"
        );
        assert_eq!(
            Reference::parse("localhost:5000/app").unwrap().domain(),
            "localhost:5000"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/../b",
            "a/b@sha256:xyz",
            "-a",
            "a-",
            "host:port/x",
            "a..b",
            "a___b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Reference::parse("a__b/c-d/e--f.g_h").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn display_parse_roundtrip(name in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", tag in "[a-z0-9][a-z0-9._-]{0,10}") {
            let r = Reference::parse(&format!("{name}:{tag}")).unwrap();
            let again = Reference::parse(&r.to_string()).unwrap();
            proptest::prop_assert_eq!(&again, &r);
            let familiar = Reference::parse(&r.familiar()).unwrap();
            proptest::prop_assert_eq!(familiar, r);
        }
    }
}
