//! Authentication: htpasswd files (bcrypt), signed bearer tokens scoped per repository, and the
//! `WWW-Authenticate` challenges that tie them together (the Docker token flow).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
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

/// One grant of a token: actions on a named resource (`repository:demo/app:pull,push`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Resource type: `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource name: a repository name, or `catalog`.
    pub name: String,
    /// Granted actions: `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

impl Access {
    /// Parses a scope string such as `repository:demo/app:pull,push`.
    pub fn parse_scope(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        Some(Access {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// The scope string for this grant.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }

    fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        self.kind == kind
            && self.name == name
            && self.actions.iter().any(|a| a == action || a == "*")
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    access: Vec<Access>,
    /// A refresh token: trades for access tokens at the token endpoint, grants nothing itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    refresh: bool,
}

/// How long refresh tokens (the OAuth2 `grant_type=password` flow) live.
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Issues and verifies HMAC-SHA256-signed bearer tokens (and refresh tokens for the OAuth2
/// flow docker and containerd use).
///
/// The signing key is random per issuer ([`TokenIssuer::new`]) or kept in a file
/// ([`TokenIssuer::persistent`]), so tokens stay valid across restarts.
pub struct TokenIssuer {
    key: [u8; 32],
    lifetime: Duration,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

impl TokenIssuer {
    /// An issuer with a fresh random key; tokens live for `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        TokenIssuer {
            key: rand::random(),
            lifetime,
        }
    }

    /// An issuer whose signing key is kept in `key_file` (32 random bytes, created with mode
    /// 0600 when missing), so the tokens it issues survive a restart. A key file that others
    /// may read, or that does not hold exactly 32 bytes, is refused.
    pub fn persistent(key_file: &Path, lifetime: Duration) -> Result<Self> {
        let key = load_or_create_key(key_file)?;
        Ok(TokenIssuer { key, lifetime })
    }

    /// How long tokens live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn sign(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let signature = URL_SAFE_NO_PAD.encode(hmac_sha256(&self.key, payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    /// A signed token for `subject` granting `access`.
    pub fn issue(&self, subject: &str, access: Vec<Access>) -> String {
        self.sign(&Claims {
            sub: subject.to_owned(),
            exp: now_secs() + self.lifetime.as_secs(),
            access,
            refresh: false,
        })
    }

    /// A refresh token for `subject`, valid for [`REFRESH_TOKEN_LIFETIME`]: it grants nothing
    /// by itself, but [`TokenIssuer::verify_refresh`] accepts it for new access tokens.
    pub fn issue_refresh(&self, subject: &str) -> String {
        self.sign(&Claims {
            sub: subject.to_owned(),
            exp: now_secs() + REFRESH_TOKEN_LIFETIME.as_secs(),
            access: Vec::new(),
            refresh: true,
        })
    }

    /// The subject of a valid, unexpired refresh token; `None` for anything else (access
    /// tokens included).
    pub fn verify_refresh(&self, token: &str) -> Option<String> {
        let claims = self.claims(token)?;
        claims.refresh.then_some(claims.sub)
    }

    /// The grants of a valid, unexpired access token; `None` for anything else (refresh tokens
    /// included).
    pub fn verify(&self, token: &str) -> Option<Vec<Access>> {
        let claims = self.claims(token)?;
        (!claims.refresh).then_some(claims.access)
    }

    fn claims(&self, token: &str) -> Option<Claims> {
        let (payload, signature) = token.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let expected = hmac_sha256(&self.key, payload.as_bytes());
        if signature.len() != expected.len()
            || signature
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.exp > now_secs()).then_some(claims)
    }

    /// True when the grants allow `action` on `kind:name`.
    pub fn allows(access: &[Access], kind: &str, name: &str, action: &str) -> bool {
        access.iter().any(|a| a.allows(kind, name, action))
    }
}

/// Reads the 32-byte signing key at `path`, or creates it: written to a private temp file first
/// and linked into place, so a concurrent start never sees half a key and exactly one key wins.
fn load_or_create_key(path: &Path) -> Result<[u8; 32]> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

    let bad = |reason: String| Error::TokenKey {
        path: path.to_owned(),
        reason,
    };
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        let key: [u8; 32] = rand::random();
        let tmp = dir.join(format!(".token-key-{}", uuid::Uuid::new_v4()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&key)?;
                f.sync_all()
            });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(key),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create token key", path)(e)),
        }
    }
    let meta = std::fs::metadata(path).map_err(Error::io("stat", path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets others read it (chmod 600)",
            mode & 0o777
        )));
    }
    let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("holds {} bytes, not 32", b.len())))
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

    #[test]
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
