//! `.dockerignore`: which files of the build context COPY and ADD may see. Docker's rules: one
//! glob per line (`*`, `?`, `[…]`, `**` for any number of directories), `#` comments, a leading
//! `!` re-includes, the last matching line wins, and a pattern matching a directory matches
//! everything below it.

use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

use crate::error::{Error, Result};

/// The compiled patterns of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<(GlobMatcher, bool)>,
    has_exceptions: bool,
}

impl Ignore {
    /// Reads `<context>/.dockerignore`; no file means nothing is ignored.
    pub fn load(context: &Path) -> Result<Ignore> {
        let path = context.join(".dockerignore");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ignore::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(e) => Err(Error::Io {
                op: "read",
                path,
                source: e,
            }),
        }
    }

    /// Compiles the patterns of a `.dockerignore` text.
    pub fn parse(text: &str) -> Result<Ignore> {
        let mut ignore = Ignore::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| Error::IgnorePattern {
                    line: i + 1,
                    pattern: line.to_owned(),
                    source,
                })?;
            ignore.has_exceptions |= exception;
            ignore.patterns.push((glob.compile_matcher(), exception));
        }
        Ok(ignore)
    }

    /// Whether the context-relative path `rel` (`/`-separated, no leading `/`) is excluded.
    pub fn is_excluded(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (glob, exception) in &self.patterns {
            if matches_self_or_parent(glob, rel) {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether a walk may skip everything below the excluded directory `rel`: true unless some
    /// `!` pattern could re-include a path inside it.
    pub fn prunes(&self, rel: &str) -> bool {
        !self.has_exceptions && self.is_excluded(rel)
    }
}

fn matches_self_or_parent(glob: &GlobMatcher, rel: &str) -> bool {
    if glob.is_match(rel) {
        return true;
    }
    rel.match_indices('/')
        .any(|(i, _)| glob.is_match(&rel[..i]))
}

/// Lexical cleaning as Go's `filepath.Clean`, then relative to the context root.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules() {
        let ig =
            Ignore::parse("# comment\n*.log\n/build\ndocs/**/*.md\n!docs/keep.md\n\n temp? \n")
                .unwrap();
        assert!(ig.is_excluded("a.log"));
        assert!(!ig.is_excluded("dir/a.log"), "* does not cross directories");
        assert!(ig.is_excluded("build"));
        assert!(
            ig.is_excluded("build/out/x"),
            "a matched directory excludes its contents"
        );
        assert!(ig.is_excluded("docs/a/b/c.md"));
        assert!(ig.is_excluded("docs/x.md"), "** matches zero directories");
        assert!(
            !ig.is_excluded("docs/keep.md"),
            "the last matching line wins"
        );
        assert!(ig.is_excluded("temp1"));
        assert!(!ig.is_excluded("src/main.rs"));
        assert!(!ig.prunes("build"), "an exception pattern exists");
        let ig = Ignore::parse("**/target\n../x/../node_modules\n").unwrap();
        assert!(ig.is_excluded("a/b/target/debug/x"));
        assert!(ig.is_excluded("target"));
        assert!(ig.is_excluded("node_modules/p"));
        assert!(ig.prunes("target"));
    }

    #[test]
    fn bad_patterns_are_errors_with_lines() {
        let err = Ignore::parse("ok\n[unclosed\n").unwrap_err().to_string();
        assert!(
            err.starts_with(".dockerignore line 2: bad pattern \"[unclosed\""),
            "{err}"
        );
    }
}
