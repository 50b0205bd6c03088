//! Shell-like words of Dockerfile arguments: quotes, escapes and `$VAR` / `${VAR:-default}`
//! references, lexed once at parse time and expanded later against the build's environment.

use std::iter::Peekable;
use std::str::Chars;

/// One word: literal text interleaved with variable references.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Variable { name: String, modifier: Modifier },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Modifier {
    /// `$X`, `${X}`.
    None,
    /// `${X:-word}` (colon: also when set but empty) or `${X-word}`.
    Default { colon: bool, word: Word },
    /// `${X:+word}` or `${X+word}`.
    Alternative { colon: bool, word: Word },
}

/// The longest expansion of one word: one byte over the largest image config the builder
/// writes ([`berth_image::content::MAX_JSON_SIZE`]).
pub(crate) const MAX_EXPANSION: usize = berth_image::content::MAX_JSON_SIZE as usize + 1;

impl Word {
    /// A word of literal text.
    pub fn literal(text: &str) -> Word {
        Word(vec![Segment::Literal(text.to_owned())])
    }

    /// Substitutes every variable with `lookup` (unset variables expand to nothing).
    ///
    /// The result is cut at `MAX_EXPANSION` bytes (repeated references to a large variable
    /// cannot make memory grow without bound); anything that long is then refused by the
    /// config-size check.
    pub fn expand(&self, lookup: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            if out.len() > MAX_EXPANSION {
                break;
            }
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Variable { name, modifier } => {
                    let value = lookup(name);
                    match modifier {
                        Modifier::None => out.push_str(value.as_deref().unwrap_or("")),
                        Modifier::Default { colon, word } => match value {
                            Some(v) if !(*colon && v.is_empty()) => out.push_str(&v),
                            _ => out.push_str(&word.expand(lookup)),
                        },
                        Modifier::Alternative { colon, word } => match value {
                            Some(v) if !(*colon && v.is_empty()) => {
                                out.push_str(&word.expand(lookup))
                            }
                            _ => {}
                        },
                    }
                }
            }
        }
        out
    }

    /// The literal prefix of this word up to its first `=` (for `KEY=value` forms), and the
    /// rest as a word. `None` when no `=` appears in literal text before any variable.
    pub fn split_assignment(&self) -> Option<(String, Word)> {
        let mut key = String::new();
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Literal(text) => {
                    if let Some(pos) = text.find('=') {
                        key.push_str(&text[..pos]);
                        let mut rest = vec![Segment::Literal(text[pos + 1..].to_owned())];
                        rest.extend(self.0[i + 1..].iter().cloned());
                        return Some((key, Word(rest)));
                    }
                    key.push_str(text);
                }
                Segment::Variable { .. } => return None,
            }
        }
        None
    }

    fn push_char(&mut self, c: char) {
        if let Some(Segment::Literal(text)) = self.0.last_mut() {
            text.push(c);
        } else {
            self.0.push(Segment::Literal(c.to_string()));
        }
    }
}

/// Splits `input` into whitespace-separated words.
pub(crate) fn split(input: &str, escape: char) -> Result<Vec<Word>, String> {
    let mut lexer = Lexer {
        chars: input.chars().peekable(),
        escape,
    };
    let mut words = Vec::new();
    loop {
        while lexer.chars.next_if(|c| c.is_whitespace()).is_some() {}
        if lexer.chars.peek().is_none() {
            return Ok(words);
        }
        words.push(lexer.word(true, None)?);
    }
}

/// Lexes all of `input` as one word, keeping its whitespace (legacy `ENV key value words`).
pub(crate) fn whole(input: &str, escape: char) -> Result<Word, String> {
    let mut lexer = Lexer {
        chars: input.trim().chars().peekable(),
        escape,
    };
    lexer.word(false, None)
}

struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    escape: char,
}

impl Lexer<'_> {
    /// Reads one word; stops at whitespace when `split`, and before `stop` when given.
    fn word(&mut self, split: bool, stop: Option<char>) -> Result<Word, String> {
        let mut word = Word::default();
        while let Some(&c) = self.chars.peek() {
            if (split && c.is_whitespace()) || Some(c) == stop {
                break;
            }
            self.chars.next();
            if c == self.escape {
                // An escape at the very end is kept literally.
                word.push_char(self.chars.next().unwrap_or(c));
            } else if c == '\'' {
                loop {
                    match self.chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push_char(ch),
                        None => return Err("unterminated single quote".into()),
                    }
                }
                // Make an empty '' still count as a (possibly empty) literal.
                if word.0.is_empty() {
                    word.0.push(Segment::Literal(String::new()));
                }
            } else if c == '"' {
                self.double_quoted(&mut word)?;
            } else if c == '$' {
                self.variable(&mut word)?;
            } else {
                word.push_char(c);
            }
        }
        Ok(word)
    }

    fn double_quoted(&mut self, word: &mut Word) -> Result<(), String> {
        if word.0.is_empty() {
            word.0.push(Segment::Literal(String::new()));
        }
        loop {
            match self.chars.next() {
                None => return Err("unterminated double quote".into()),
                Some('"') => return Ok(()),
                Some('$') => self.variable(word)?,
                Some(c) if c == self.escape => match self.chars.peek() {
                    Some(&n) if n == '"' || n == '$' || n == self.escape => {
                        self.chars.next();
                        word.push_char(n);
                    }
                    _ => word.push_char(c),
                },
                Some(c) => word.push_char(c),
            }
        }
    }

    /// After a `$`.
    fn variable(&mut self, word: &mut Word) -> Result<(), String> {
        let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
        if self.chars.next_if_eq(&'{').is_some() {
            let mut name = String::new();
            while let Some(c) = self.chars.next_if(is_name) {
                name.push(c);
            }
            if name.is_empty() {
                return Err("bad substitution: empty variable name in ${}".into());
            }
            let modifier = match self.chars.next() {
                Some('}') => Modifier::None,
                Some(':') => {
                    let op = self.chars.next();
                    let inner = self.word(false, Some('}'))?;
                    self.close_brace(&name)?;
                    match op {
                        Some('-') => Modifier::Default {
                            colon: true,
                            word: inner,
                        },
                        Some('+') => Modifier::Alternative {
                            colon: true,
                            word: inner,
                        },
                        other => {
                            return Err(format!(
                                "bad substitution: unsupported modifier ':{}' in ${{{name}…}}",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    }
                }
                Some(op @ ('-' | '+')) => {
                    let inner = self.word(false, Some('}'))?;
                    self.close_brace(&name)?;
                    if op == '-' {
                        Modifier::Default {
                            colon: false,
                            word: inner,
                        }
                    } else {
                        Modifier::Alternative {
                            colon: false,
                            word: inner,
                        }
                    }
                }
                Some(other) => {
                    return Err(format!(
                        "bad substitution: unexpected {other:?} in ${{{name}…}}"
                    ));
                }
                None => return Err(format!("bad substitution: missing '}}' after ${{{name}")),
            };
            word.0.push(Segment::Variable { name, modifier });
        } else if self.chars.peek().is_some_and(is_name) {
            let mut name = String::new();
            while let Some(c) = self.chars.next_if(is_name) {
                name.push(c);
            }
            word.0.push(Segment::Variable {
                name,
                modifier: Modifier::None,
            });
        } else {
            word.push_char('$');
        }
        Ok(())
    }

    fn close_brace(&mut self, name: &str) -> Result<(), String> {
        match self.chars.next() {
            Some('}') => Ok(()),
            _ => Err(format!("bad substitution: missing '}}' after ${{{name}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn expand_all(input: &str) -> Vec<String> {
        split(input, '\\')
            .unwrap()
            .iter()
            .map(|w| w.expand(&env))
            .collect()
    }

    #[test]
    fn splits_and_expands() {
        assert_eq!(expand_all("a $A ${A}b"), ["a", "alpha", "alphab"]);
        assert_eq!(
            expand_all(r#""x $A" 'y $A' z\ w"#),
            ["x alpha", "y $A", "z w"]
        );
        assert_eq!(
            expand_all("${NO:-def} ${EMPTY:-d2} ${EMPTY-d3}x ${A:+set} ${NO:+set}x"),
            ["def", "d2", "x", "set", "x"]
        );
        assert_eq!(expand_all(r#""" a$ \$A"#), ["", "a$", "$A"]);
        assert_eq!(expand_all(r#"${NO:-"a b"}"#), ["a b"]);
    }

    #[test]
    fn malformed_words_are_errors() {
        assert!(split("'abc", '\\').unwrap_err().contains("single quote"));
        assert!(split("\"abc", '\\').unwrap_err().contains("double quote"));
        assert!(split("${A", '\\').unwrap_err().contains("missing '}'"));
        assert!(split("${}", '\\').unwrap_err().contains("empty variable"));
        assert!(
            split("${A:?x}", '\\')
                .unwrap_err()
                .contains("unsupported modifier")
        );
    }

    #[test]
    fn assignments() {
        let words = split(r#"K="v 1" X=$A"#, '\\').unwrap();
        let (k, v) = words[0].split_assignment().unwrap();
        assert_eq!((k.as_str(), v.expand(&env).as_str()), ("K", "v 1"));
        let (k, v) = words[1].split_assignment().unwrap();
        assert_eq!((k.as_str(), v.expand(&env).as_str()), ("X", "alpha"));
        assert!(split("$A=x", '\\').unwrap()[0].split_assignment().is_none());
        assert_eq!(whole("a  b $A", '\\').unwrap().expand(&env), "a  b alpha");
    }
}
