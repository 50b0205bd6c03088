//! Authentication: the `Authorization: Basic` encoding and `WWW-Authenticate` challenges that
//! both sides share, and (feature `server`) htpasswd files (bcrypt) and signed bearer tokens
//! scoped per repository (the Docker token flow).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

#[cfg(feature = "server")]
mod htpasswd;
#[cfg(feature = "server")]
mod token;

#[cfg(feature = "server")]
pub use htpasswd::Htpasswd;
#[cfg(feature = "server")]
pub use token::{Access, REFRESH_TOKEN_LIFETIME, TokenIssuer};

/// Decodes an `Authorization: Basic …` value into user and password.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Encodes user and password as an `Authorization: Basic …` value.
pub fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}
/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service name to ask a token for.
        service: Option<String>,
        /// The scope the request needed.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let params = parse_params(params);
                Some(Challenge::Bearer {
                    realm: params.get("realm")?.clone(),
                    service: params.get("service").cloned(),
                    scope: params.get("scope").cloned(),
                })
            }
            _ => None,
        }
    }
}

/// `key="value",key2=value2` pairs (values may contain commas inside quotes).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = after.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "server")]
    use crate::Error;
    #[cfg(feature = "server")]
    use std::time::Duration;

    #[test]
    #[cfg(feature = "server")]
    fn htpasswd_verifies_bcrypt() {
        let h = Htpasswd::single("alice", "secret");
        assert!(h.verify("alice", "secret"));
        assert!(h.verify("alice", "secret"), "cached");
        assert!(!h.verify("alice", "wrong"));
        assert!(!h.verify("bob", "secret"));
        assert!(Htpasswd::parse("alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("nocolon").is_err());
    }

    #[test]
    fn basic_roundtrip() {
        let h = basic_header("u", "p:w");
        assert_eq!(parse_basic(&h), Some(("u".into(), "p:w".into())));
        assert_eq!(parse_basic("Bearer x"), None);
    }

    #[test]
    #[cfg(feature = "server")]
    fn tokens_are_scoped_and_signed() {
        let issuer = TokenIssuer::new(Duration::from_secs(60));
        let access = vec![Access::parse_scope("repository:a/b:pull").unwrap()];
        let token = issuer.issue("alice", access);
        let granted = issuer.verify(&token).unwrap();
        assert!(TokenIssuer::allows(&granted, "repository", "a/b", "pull"));
        assert!(!TokenIssuer::allows(&granted, "repository", "a/b", "push"));
        assert!(!TokenIssuer::allows(&granted, "repository", "a/c", "pull"));
        let mut forged = token.clone();
        forged.insert(3, 'x');
        assert!(issuer.verify(&forged).is_none());
        assert!(
            TokenIssuer::new(Duration::from_secs(60))
                .verify(&token)
                .is_none()
        );
    }

    #[test]
    #[cfg(feature = "server")]
    fn refresh_tokens_are_not_access_tokens() {
        let issuer = TokenIssuer::new(Duration::from_secs(60));
        let refresh = issuer.issue_refresh("alice");
        assert_eq!(issuer.verify_refresh(&refresh).as_deref(), Some("alice"));
        assert!(issuer.verify(&refresh).is_none());
        let access = issuer.issue("alice", Vec::new());
        assert!(issuer.verify_refresh(&access).is_none());
        assert!(issuer.verify(&access).is_some());
    }

    #[test]
    #[cfg(feature = "server")]
    fn persistent_key_survives_and_stays_private() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let first = TokenIssuer::persistent(&path, Duration::from_secs(60)).unwrap();
        let token = first.issue(
            "alice",
            vec![Access::parse_scope("repository:a:pull").unwrap()],
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        // A second issuer over the same file (a restart) accepts the first one's tokens.
        let second = TokenIssuer::persistent(&path, Duration::from_secs(60)).unwrap();
        assert!(second.verify(&token).is_some());
        // No temp files are left beside the key.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = TokenIssuer::persistent(&path, Duration::from_secs(60));
        assert!(
            matches!(open, Err(Error::TokenKey { .. })),
            "world-readable key refused"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let short = TokenIssuer::persistent(&path, Duration::from_secs(60));
        assert!(
            matches!(short, Err(Error::TokenKey { .. })),
            "truncated key refused"
        );
    }

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://r/token",service="reg",scope="repository:a:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://r/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
    }
}
