//! Static bearer tokens: an administrator token from the command line, and Kubernetes' token
//! file (`--token-auth-file`), a CSV of `token,user,uid,"group1,group2"`.

use std::collections::HashMap;
use std::path::Path;

use super::{Authenticator, Error, Outcome, UserInfo, bearer};

/// Bearer tokens mapped to users.
#[derive(Clone, Default)]
pub struct StaticTokens {
    users: HashMap<String, UserInfo>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticTokens({} tokens)", self.users.len())
    }
}

/// Splits one CSV record: commas separate, double quotes enclose, `""` inside quotes is a quote.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("bare \" in a field".into()),
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) if was_quoted => return Err(format!("{c:?} after a closing quote")),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

impl StaticTokens {
    /// No tokens.
    pub fn new() -> Self {
        StaticTokens::default()
    }

    /// One token for the administrator (`berth-admin` in `system:masters`).
    pub fn admin(token: impl Into<String>) -> Self {
        StaticTokens::new().with(
            token,
            UserInfo::new(crate::tls::ADMIN_USER, &[crate::tls::MASTERS_GROUP]),
        )
    }

    /// Adds `token` for `user`.
    pub fn with(mut self, token: impl Into<String>, user: UserInfo) -> Self {
        self.users.insert(token.into(), user);
        self
    }

    /// Parses Kubernetes' static token file: one `token,user,uid[,"group1,group2"]` per line
    /// (blank lines skipped); a line with fewer than 3 columns, an empty token or user, or a
    /// token given twice is an error naming the line.
    pub fn parse_csv(path: &Path, text: &str) -> Result<Self, Error> {
        let mut tokens = StaticTokens::new();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| Error::Parse {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let f = csv_fields(line).map_err(err)?;
            if f.len() < 3 {
                return Err(err(format!(
                    "must have at least 3 columns (token, user name, user uid), found {}",
                    f.len()
                )));
            }
            if f[0].is_empty() || f[1].is_empty() {
                return Err(err("the token and the user name must not be empty".into()));
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let user = UserInfo {
                name: f[1].clone(),
                uid: f[2].clone(),
                groups,
            };
            if tokens.users.insert(f[0].clone(), user).is_some() {
                return Err(err("this token appears on an earlier line too".into()));
            }
        }
        Ok(tokens)
    }

    /// Loads a token file ([`StaticTokens::parse_csv`]).
    pub fn from_csv_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_csv(path, &text)
    }

    /// Adds every token of `other`.
    pub fn merge(mut self, other: StaticTokens) -> Self {
        self.users.extend(other.users);
        self
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator for StaticTokens {
    fn authenticate(&self, parts: &http::request::Parts) -> Outcome {
        let Some(token) = bearer(parts) else {
            return Outcome::NoCredentials;
        };
        // Compare with every token in constant time so timing says nothing of which matched.
        let mut found = None;
        for (t, u) in &self.users {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(u);
            }
        }
        match found {
            Some(u) => Outcome::User(u.clone()),
            None => Outcome::Rejected("invalid bearer token".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_token_files() {
        let t = StaticTokens::parse_csv(
            Path::new("t.csv"),
            "tok1,alice,1,\"dev,ops\"\ntok2,bob,2\n\ntok3,\"c, d\",3,viewers\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.users["tok1"].groups, ["dev", "ops"]);
        assert_eq!(t.users["tok2"].groups, Vec::<String>::new());
        assert_eq!(t.users["tok3"].name, "c, d");
        assert_eq!(t.users["tok3"].groups, ["viewers"]);
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, want) in [
            ("tok,alice\n", ":1: must have at least 3 columns"),
            ("a,b,c\nx,\"y,1\n", ":2: unterminated"),
            ("a,b,c\na,d,e\n", ":2: this token appears"),
            (",b,c\n", ":1: the token and the user name"),
        ] {
            let e = StaticTokens::parse_csv(Path::new("t.csv"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
