//! The Dockerfile parser: parser directives, comments, line continuations, instruction keywords
//! (case-insensitive), JSON ("exec") and shell forms, flags, and `KEY=value` lists. Variables are
//! lexed here but expanded during the build, when the environment of each step is known.

use super::error::{Error, Result};
use super::words::{self, Word};

/// A parsed Dockerfile: the instructions in order, each with its line number.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The instructions, in file order.
    pub instructions: Vec<Instruction>,
}

/// One instruction and where it came from.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// The 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction as written, continuation lines joined (used in progress output and history).
    pub text: String,
    /// What the instruction does.
    pub kind: Kind,
}

/// The instructions Berth builds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Kind {
    /// `FROM image [AS name]`: `scratch` or a local image.
    From {
        /// The image reference (may use ARGs declared before FROM).
        image: Word,
    },
    /// `ARG name[=default] …`.
    Arg(Vec<(String, Option<Word>)>),
    /// `ENV key=value …` or `ENV key value`.
    Env(Vec<(String, Word)>),
    /// `LABEL key=value …`.
    Label(Vec<(String, Word)>),
    /// `RUN`.
    Run(Command),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `SHELL ["executable", "parameters"]`.
    Shell(Vec<String>),
    /// `COPY [--chown=u:g] [--chmod=mode] src… dest`.
    Copy(Copy),
    /// `ADD`: like COPY, and local tar archives are extracted.
    Add(Copy),
    /// `WORKDIR path`.
    Workdir(Word),
    /// `USER user[:group]`.
    User(Word),
    /// `EXPOSE port[/proto] …`.
    Expose(Vec<Word>),
    /// `VOLUME path …` or `VOLUME ["path", …]`.
    Volume(Vec<Word>),
    /// `STOPSIGNAL signal`.
    StopSignal(Word),
}

/// The argument of RUN, CMD and ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// JSON form: run exactly these arguments.
    Exec(Vec<String>),
    /// Shell form: run through the image's shell (`/bin/sh -c` by default).
    Shell(String),
}

/// The arguments of COPY and ADD.
#[derive(Debug, Clone)]
pub struct Copy {
    /// Source paths or globs, relative to the context.
    pub sources: Vec<Word>,
    /// The destination in the image (relative to WORKDIR unless absolute).
    pub dest: Word,
    /// `--chown=user[:group]` (numeric ids).
    pub chown: Option<Word>,
    /// `--chmod=0755` (octal).
    pub chmod: Option<u32>,
}

/// The largest Dockerfile the builder reads (bytes).
pub const MAX_DOCKERFILE_SIZE: u64 = 8 << 20;

/// The longest instruction, continuation lines joined (bytes).
pub const MAX_INSTRUCTION_SIZE: usize = 1 << 20;

impl Dockerfile {
    /// Parses a Dockerfile. Errors name the line of the offending instruction; an instruction
    /// longer than [`MAX_INSTRUCTION_SIZE`] is refused.
    pub fn parse(text: &str) -> Result<Dockerfile> {
        let lines: Vec<&str> = text.lines().collect();
        let (escape, first) = directives(&lines)?;
        let mut instructions = Vec::new();
        let mut i = first;
        while i < lines.len() {
            let raw = lines[i];
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                i += 1;
                continue;
            }
            let start = i + 1;
            let mut logical = String::new();
            loop {
                let line = lines[i];
                i += 1;
                let body = line.trim_end();
                if let Some(stripped) = body.strip_suffix(escape) {
                    logical.push_str(stripped);
                    // Comment and empty lines inside a continuation are skipped.
                    while i < lines.len() && {
                        let t = lines[i].trim();
                        t.is_empty() || t.starts_with('#')
                    } {
                        i += 1;
                    }
                    if i >= lines.len() {
                        break;
                    }
                } else {
                    logical.push_str(line);
                    break;
                }
                if logical.len() > MAX_INSTRUCTION_SIZE {
                    break;
                }
            }
            if logical.len() > MAX_INSTRUCTION_SIZE {
                return Err(parse_err(
                    start,
                    format!(
                        "the instruction is {} bytes long, over the limit of {MAX_INSTRUCTION_SIZE} bytes",
                        logical.len()
                    ),
                ));
            }
            instructions.push(instruction(start, logical.trim(), escape)?);
        }
        let dockerfile = Dockerfile { instructions };
        dockerfile.validate()?;
        Ok(dockerfile)
    }

    fn validate(&self) -> Result<()> {
        let mut from_seen = false;
        for ins in &self.instructions {
            match &ins.kind {
                Kind::From { .. } if from_seen => {
                    return Err(parse_err(
                        ins.line,
                        "multi-stage builds (a second FROM) are not supported",
                    ));
                }
                Kind::From { .. } => from_seen = true,
                Kind::Arg(_) => {}
                _ if !from_seen => {
                    return Err(parse_err(
                        ins.line,
                        "the first instruction must be FROM (ARG may precede it)",
                    ));
                }
                _ => {}
            }
        }
        if !from_seen {
            return Err(parse_err(
                self.instructions.last().map_or(1, |i| i.line),
                "no FROM instruction",
            ));
        }
        Ok(())
    }
}

fn parse_err(line: usize, message: impl Into<String>) -> Error {
    Error::Parse {
        line,
        message: message.into(),
    }
}

/// Reads the parser directives at the top (`# escape=`` ` ``, `# syntax=…`): returns the escape
/// character and the index of the first line after them.
fn directives(lines: &[&str]) -> Result<(char, usize)> {
    let mut escape = '\\';
    for (i, line) in lines.iter().enumerate() {
        let Some(body) = line.trim().strip_prefix('#') else {
            return Ok((escape, i));
        };
        let Some((key, value)) = body.split_once('=') else {
            return Ok((escape, i));
        };
        let key = key.trim().to_ascii_lowercase();
        if key.contains(char::is_whitespace) {
            return Ok((escape, i));
        }
        match key.as_str() {
            "escape" => {
                escape = match value.trim() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(parse_err(
                            i + 1,
                            format!("invalid escape directive {other:?}: use \\ or `"),
                        ));
                    }
                }
            }
            "syntax" | "check" => {}
            _ => return Ok((escape, i)),
        }
    }
    Ok((escape, lines.len()))
}

fn instruction(line: usize, text: &str, escape: char) -> Result<Instruction> {
    let (keyword, rest) = match text.split_once(char::is_whitespace) {
        Some((k, r)) => (k, r.trim()),
        None => (text, ""),
    };
    let keyword = keyword.to_ascii_uppercase();
    let err = |message: String| parse_err(line, message);
    let lex = |s: &str| words::split(s, escape).map_err(|m| err(format!("{keyword}: {m}")));
    if rest.is_empty() {
        return Err(err(format!("{keyword} requires at least one argument")));
    }
    let kind = match keyword.as_str() {
        "FROM" => {
            let (flags, args) = flags(rest, &["platform"], &keyword, line)?;
            if !flags.is_empty() {
                return Err(err(
                    "FROM --platform is not supported: only the host platform is built".into(),
                ));
            }
            let mut w = lex(args)?;
            match w.len() {
                1 => {}
                3 if w[1].expand(&|_| None).eq_ignore_ascii_case("as") => {}
                _ => return Err(err("FROM takes an image and an optional `AS name`".into())),
            }
            Kind::From {
                image: w.swap_remove(0),
            }
        }
        "ARG" => {
            let mut args = Vec::new();
            for w in lex(rest)? {
                match w.split_assignment() {
                    Some((k, v)) => args.push((checked_name(&k, line, "ARG")?, Some(v))),
                    None => {
                        let name = w.expand(&|_| None);
                        args.push((checked_name(&name, line, "ARG")?, None));
                    }
                }
            }
            Kind::Arg(args)
        }
        "ENV" | "LABEL" => {
            let pairs = key_values(rest, escape, &keyword, line)?;
            if keyword == "ENV" {
                Kind::Env(pairs)
            } else {
                Kind::Label(pairs)
            }
        }
        "RUN" => {
            let (flags, args) = flags(rest, &["mount", "network", "security"], &keyword, line)?;
            if let Some((flag, _)) = flags.first() {
                return Err(err(format!("RUN --{flag} is not supported")));
            }
            Kind::Run(command(args))
        }
        "CMD" => Kind::Cmd(command(rest)),
        "ENTRYPOINT" => Kind::Entrypoint(command(rest)),
        "SHELL" => match json_array(rest) {
            Some(v) if !v.is_empty() => Kind::Shell(v),
            _ => {
                return Err(err(
                    "SHELL requires a JSON array, e.g. SHELL [\"/bin/sh\", \"-c\"]".into(),
                ));
            }
        },
        "COPY" | "ADD" => {
            let (flags, args) = flags(
                rest,
                &["chown", "chmod", "from", "link", "checksum", "keep-git-dir"],
                &keyword,
                line,
            )?;
            let mut chown = None;
            let mut chmod = None;
            for (flag, value) in flags {
                match flag.as_str() {
                    "chown" => chown = Some(lex(&value)?.into_iter().next().unwrap_or_default()),
                    "chmod" => {
                        chmod = Some(
                            u32::from_str_radix(&value, 8)
                                .ok()
                                .filter(|m| *m <= 0o7777)
                                .ok_or_else(|| {
                                    err(format!(
                                        "{keyword} --chmod={value}: expected an octal mode"
                                    ))
                                })?,
                        )
                    }
                    other => return Err(err(format!("{keyword} --{other} is not supported"))),
                }
            }
            let mut paths = match json_array(args) {
                Some(v) => v.iter().map(|s| Word::literal(s)).collect(),
                None => lex(args)?,
            };
            if paths.len() < 2 {
                return Err(err(format!(
                    "{keyword} requires at least one source and a destination"
                )));
            }
            let dest = paths.pop().unwrap_or_default();
            let copy = Copy {
                sources: paths,
                dest,
                chown,
                chmod,
            };
            if keyword == "COPY" {
                Kind::Copy(copy)
            } else {
                Kind::Add(copy)
            }
        }
        "WORKDIR" => {
            Kind::Workdir(words::whole(rest, escape).map_err(|m| err(format!("WORKDIR: {m}")))?)
        }
        "USER" => {
            let mut w = lex(rest)?;
            if w.len() != 1 {
                return Err(err("USER takes exactly one argument: user[:group]".into()));
            }
            Kind::User(w.remove(0))
        }
        "EXPOSE" => Kind::Expose(lex(rest)?),
        "VOLUME" => match json_array(rest) {
            Some(v) => Kind::Volume(v.iter().map(|s| Word::literal(s)).collect()),
            None => Kind::Volume(lex(rest)?),
        },
        "STOPSIGNAL" => {
            let mut w = lex(rest)?;
            if w.len() != 1 {
                return Err(err("STOPSIGNAL takes exactly one signal".into()));
            }
            Kind::StopSignal(w.remove(0))
        }
        "MAINTAINER" => Kind::Label(vec![(
            "maintainer".into(),
            words::whole(rest, escape).map_err(err)?,
        )]),
        "ONBUILD" | "HEALTHCHECK" => {
            return Err(err(format!(
                "{keyword} is not supported by Berth's builder"
            )));
        }
        other => return Err(err(format!("unknown instruction {other:?}"))),
    };
    Ok(Instruction {
        line,
        text: text.to_owned(),
        kind,
    })
}

/// Parses leading `--flag=value` options allowed for `keyword`.
fn flags<'a>(
    mut rest: &'a str,
    allowed: &[&str],
    keyword: &str,
    line: usize,
) -> Result<(Vec<(String, String)>, &'a str)> {
    let mut out = Vec::new();
    while let Some(after) = rest.strip_prefix("--") {
        let (flag, tail) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        if !allowed.contains(&name) {
            return Err(parse_err(line, format!("{keyword}: unknown flag --{name}")));
        }
        out.push((name.to_owned(), value.to_owned()));
        rest = tail.trim_start();
    }
    if rest.is_empty() {
        return Err(parse_err(
            line,
            format!("{keyword} requires arguments after its flags"),
        ));
    }
    Ok((out, rest))
}

fn checked_name(name: &str, line: usize, keyword: &str) -> Result<String> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(parse_err(line, format!("{keyword}: invalid name {name:?}")));
    }
    Ok(name.to_owned())
}

fn key_values(rest: &str, escape: char, keyword: &str, line: usize) -> Result<Vec<(String, Word)>> {
    let err = |m: String| parse_err(line, format!("{keyword}: {m}"));
    let list = words::split(rest, escape).map_err(err)?;
    if list[0].split_assignment().is_none() {
        // Legacy form: `ENV key value with spaces`.
        let (key, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| err("expected key=value or `key value`".into()))?;
        let key = words::split(key, escape)
            .map_err(err)?
            .remove(0)
            .expand(&|_| None);
        return Ok(vec![(
            checked_name(&key, line, keyword)?,
            words::whole(value, escape).map_err(err)?,
        )]);
    }
    list.into_iter()
        .map(|w| match w.split_assignment() {
            Some((k, v)) => Ok((checked_name(&k, line, keyword)?, v)),
            None => Err(err(format!("{:?} is not key=value", w.expand(&|_| None)))),
        })
        .collect()
}

fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(args) => Command::Exec(args),
        None => Command::Shell(rest.to_owned()),
    }
}

/// The JSON form `["a", "b"]`, when `s` is one; anything else is shell form (as Docker does).
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_the_supported_subset() {
        let text = r#"# syntax=docker/dockerfile:1
# a comment
ARG BASE=scratch
from $BASE AS build
COPY --chmod=755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo one \
    # a comment inside a continuation
    two
ENV A=1 B="two words"
ENV LEGACY value with spaces
LABEL "org.example.x"=y
WORKDIR /app
USER 1000:1000
EXPOSE 80/tcp 53/udp
VOLUME ["/data"]
CMD echo hi
ENTRYPOINT ["/bin/sh", "-c"]
ADD files.tar /opt/
STOPSIGNAL SIGINT
SHELL ["/bin/sh", "-eu", "-c"]
"#;
        let df = Dockerfile::parse(text).unwrap();
        assert_eq!(df.instructions.len(), 17);
        assert_eq!(df.instructions[0].line, 3);
        assert!(
            matches!(&df.instructions[1].kind, Kind::From { image } if image.expand(&|_| Some("scratch".into())) == "scratch")
        );
        match &df.instructions[2].kind {
            Kind::Copy(c) => {
                assert_eq!(c.chmod, Some(0o755));
                assert_eq!(c.dest.expand(&no_env), "/bin/busybox");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            df.instructions[3].kind.clone().run(),
            Some(Command::Exec(vec![
                "/bin/busybox".into(),
                "--install".into(),
                "-s".into(),
                "/bin".into()
            ]))
        );
        assert_eq!(df.instructions[4].line, 7);
        assert_eq!(
            df.instructions[4].kind.clone().run(),
            Some(Command::Shell("echo one     two".into()))
        );
        match &df.instructions[5].kind {
            Kind::Env(pairs) => {
                assert_eq!(pairs[1].0, "B");
                assert_eq!(pairs[1].1.expand(&no_env), "two words");
            }
            other => panic!("{other:?}"),
        }
        match &df.instructions[6].kind {
            Kind::Env(pairs) => assert_eq!(
                (pairs[0].0.as_str(), pairs[0].1.expand(&no_env).as_str()),
                ("LEGACY", "value with spaces")
            ),
            other => panic!("{other:?}"),
        }
        match &df.instructions[7].kind {
            Kind::Label(pairs) => assert_eq!(pairs[0].0, "org.example.x"),
            other => panic!("{other:?}"),
        }
    }

    impl Kind {
        fn run(self) -> Option<Command> {
            match self {
                Kind::Run(c) => Some(c),
                _ => None,
            }
        }
    }

    #[test]
    fn escape_directive() {
        let df = Dockerfile::parse("# escape=`\nFROM scratch\nRUN a `\n b\n").unwrap();
        assert_eq!(
            df.instructions[1].kind.clone().run(),
            Some(Command::Shell("a  b".into()))
        );
    }

    fn error_of(text: &str) -> String {
        Dockerfile::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn malformed_files_give_line_numbers() {
        assert_eq!(
            error_of("FROM scratch\n\nFOO bar\n"),
            "Dockerfile line 3: unknown instruction \"FOO\""
        );
        assert_eq!(
            error_of("RUN true\n"),
            "Dockerfile line 1: the first instruction must be FROM (ARG may precede it)"
        );
        assert_eq!(
            error_of("# just a comment\n"),
            "Dockerfile line 1: no FROM instruction"
        );
        assert!(
            error_of("FROM scratch\nCOPY onlyone\n")
                .starts_with("Dockerfile line 2: COPY requires")
        );
        assert!(
            error_of("FROM scratch\nENV A=\"x\n")
                .contains("line 2: ENV: unterminated double quote")
        );
        assert!(
            error_of("FROM scratch\nCMD\n").contains("line 2: CMD requires at least one argument")
        );
        assert!(error_of("FROM a\nFROM b\n").contains("line 2: multi-stage"));
        assert!(
            error_of("FROM scratch\nCOPY --from=x a b\n").contains("COPY --from is not supported")
        );
        assert!(error_of("FROM scratch\nCOPY --chmod=9z a b\n").contains("octal"));
        assert!(
            error_of("FROM scratch\nRUN --mount=type=cache x\n")
                .contains("RUN --mount is not supported")
        );
        assert!(error_of("FROM scratch\nUSER a b\n").contains("USER takes exactly one"));
        assert!(error_of("FROM scratch\nSHELL /bin/sh\n").contains("SHELL requires a JSON array"));
        assert!(
            error_of("FROM scratch\nWORKDIR ${X\n").contains("line 2: WORKDIR: bad substitution")
        );
        assert!(error_of("FROM scratch\nHEALTHCHECK NONE\n").contains("not supported"));
        assert!(error_of("# escape=x\nFROM scratch\n").contains("line 1: invalid escape"));
    }

    #[test]
    fn invalid_json_falls_back_to_shell_form() {
        let df = Dockerfile::parse("FROM scratch\nCMD [\"unterminated\"\n").unwrap();
        match &df.instructions[1].kind {
            Kind::Cmd(Command::Shell(s)) => assert_eq!(s, "[\"unterminated\""),
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(text in "(?s).{0,200}") {
            let _ = Dockerfile::parse(&text);
        }

        #[test]
        fn arbitrary_instruction_lines_never_panic(kw in "(FROM|RUN|ENV|COPY|ADD|ARG|LABEL|USER|EXPOSE|VOLUME|CMD)", rest in "[ -~]{0,40}") {
            let _ = Dockerfile::parse(&format!("FROM scratch\n{kw} {rest}\n"));
        }
    }
}
