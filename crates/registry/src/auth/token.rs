//! Bearer tokens: scoped grants signed with HMAC-SHA256 by a key that may be kept on disk.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

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
