//! The Dockerfile parser: parser directives, comments, line continuations, instruction keywords
//! (case-insensitive), JSON ("exec") and shell forms, flags, and `KEY=value` lists. Variables are
//! lexed here but expanded during the build, when the environment of each step is known. Stages
//! (`FROM … AS name`, `COPY --from`), `RUN --mount=type=cache|bind|tmpfs` and here-documents
//! (`RUN <<EOF`) are parsed here too; inputs are bounded ([`MAX_DOCKERFILE_SIZE`],
//! [`MAX_INSTRUCTION_SIZE`]).

use crate::error::{Error, Result};
use crate::words::{self, Word};

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
    pub kind: InstructionKind,
}

/// The instructions Berth builds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum InstructionKind {
    /// `FROM image [AS name]`: `scratch`, a local image or an earlier stage; starts a stage.
    From {
        /// The image reference (may use ARGs declared before the first FROM).
        image: Word,
        /// The stage's name (`AS name`), lower-cased.
        name: Option<String>,
    },
    /// `ARG name[=default] …`.
    Arg(Vec<(String, Option<Word>)>),
    /// `ENV key=value …` or `ENV key value`.
    Env(Vec<(String, Word)>),
    /// `LABEL key=value …`.
    Label(Vec<(String, Word)>),
    /// `RUN [--mount=…] command`.
    Run(Command, Vec<RunMount>),
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

/// A `RUN --mount=…` (BuildKit's): what the command sees at `target` while it runs; nothing of
/// it ends up in the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// `type=cache,target=…[,id=…][,sharing=…]`: a directory kept between builds under the
    /// builder's root, keyed by `id` (default: the target).
    Cache {
        /// Where it is mounted.
        target: String,
        /// Which cache directory.
        id: String,
    },
    /// `type=bind,target=…[,source=…][,from=stage|image][,rw]`: a read-only (or throw-away
    /// writable) view of the context or of another stage.
    Bind {
        /// Where it is mounted.
        target: String,
        /// The path inside the context or stage (default: its root).
        source: String,
        /// A stage or image instead of the context.
        from: Option<String>,
        /// Writes allowed (and discarded).
        rw: bool,
    },
    /// `type=tmpfs,target=…`: an empty tmpfs.
    Tmpfs {
        /// Where it is mounted.
        target: String,
    },
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
    /// `--from=stage|image`: copy from an earlier stage (by name or index) or an image instead
    /// of the context.
    pub from: Option<Word>,
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
            let heredocs = heredoc_markers(&logical);
            if !heredocs.is_empty() {
                for (strip_tabs, word) in &heredocs {
                    let mut terminated = false;
                    logical.push('\n');
                    while i < lines.len() {
                        let line = lines[i];
                        i += 1;
                        let body = if *strip_tabs {
                            line.trim_start_matches('\t')
                        } else {
                            line
                        };
                        logical.push_str(body);
                        logical.push('\n');
                        if body == word {
                            terminated = true;
                            break;
                        }
                        if logical.len() > MAX_INSTRUCTION_SIZE {
                            break;
                        }
                    }
                    if !terminated && logical.len() <= MAX_INSTRUCTION_SIZE {
                        return Err(parse_err(
                            start,
                            format!("the here-document <<{word} has no terminating {word} line"),
                        ));
                    }
                }
                logical.pop();
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
        let mut names = std::collections::BTreeSet::new();
        for ins in &self.instructions {
            match &ins.kind {
                InstructionKind::From { name, .. } => {
                    from_seen = true;
                    if let Some(name) = name
                        && !names.insert(name.clone())
                    {
                        return Err(parse_err(
                            ins.line,
                            format!("duplicate stage name {name:?}"),
                        ));
                    }
                }
                InstructionKind::Arg(_) => {}
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
            let name = match w.len() {
                1 => None,
                3 if w[1].expand(&|_| None).eq_ignore_ascii_case("as") => {
                    let name = w[2].expand(&|_| None).to_ascii_lowercase();
                    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !valid {
                        return Err(err(format!("invalid stage name {name:?}")));
                    }
                    Some(name)
                }
                _ => return Err(err("FROM takes an image and an optional `AS name`".into())),
            };
            InstructionKind::From {
                image: w.swap_remove(0),
                name,
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
            InstructionKind::Arg(args)
        }
        "ENV" | "LABEL" => {
            let pairs = key_values(rest, escape, &keyword, line)?;
            if keyword == "ENV" {
                InstructionKind::Env(pairs)
            } else {
                InstructionKind::Label(pairs)
            }
        }
        "RUN" => {
            let (flags, args) = flags(rest, &["mount", "network", "security"], &keyword, line)?;
            let mut mounts = Vec::new();
            for (flag, value) in flags {
                if flag != "mount" {
                    return Err(err(format!("RUN --{flag} is not supported")));
                }
                mounts
                    .push(run_mount(&value).map_err(|m| err(format!("RUN --mount={value}: {m}")))?);
            }
            InstructionKind::Run(run_command(args), mounts)
        }
        "CMD" => InstructionKind::Cmd(command(rest)),
        "ENTRYPOINT" => InstructionKind::Entrypoint(command(rest)),
        "SHELL" => match json_array(rest) {
            Some(v) if !v.is_empty() => InstructionKind::Shell(v),
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
            let mut from = None;
            for (flag, value) in flags {
                match flag.as_str() {
                    "from" if keyword == "COPY" && !value.is_empty() => {
                        from = Some(lex(&value)?.into_iter().next().unwrap_or_default());
                    }
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
                from,
            };
            if keyword == "COPY" {
                InstructionKind::Copy(copy)
            } else {
                InstructionKind::Add(copy)
            }
        }
        "WORKDIR" => InstructionKind::Workdir(
            words::whole(rest, escape).map_err(|m| err(format!("WORKDIR: {m}")))?,
        ),
        "USER" => {
            let mut w = lex(rest)?;
            if w.len() != 1 {
                return Err(err("USER takes exactly one argument: user[:group]".into()));
            }
            InstructionKind::User(w.remove(0))
        }
        "EXPOSE" => InstructionKind::Expose(lex(rest)?),
        "VOLUME" => match json_array(rest) {
            Some(v) => InstructionKind::Volume(v.iter().map(|s| Word::literal(s)).collect()),
            None => InstructionKind::Volume(lex(rest)?),
        },
        "STOPSIGNAL" => {
            let mut w = lex(rest)?;
            if w.len() != 1 {
                return Err(err("STOPSIGNAL takes exactly one signal".into()));
            }
            InstructionKind::StopSignal(w.remove(0))
        }
        "MAINTAINER" => InstructionKind::Label(vec![(
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

/// The `<<WORD` / `<<-WORD` (optionally quoted) here-document markers of a RUN or COPY line,
/// in order: (strip leading tabs, terminator).
fn heredoc_markers(logical: &str) -> Vec<(bool, String)> {
    let keyword = logical
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if keyword != "RUN" && keyword != "COPY" {
        return Vec::new();
    }
    let rest = logical[keyword.len()..].trim_start();
    if rest.starts_with('[') {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut search = rest;
    while let Some(pos) = search.find("<<") {
        let mut tail = &search[pos + 2..];
        let strip = tail.starts_with('-');
        if strip {
            tail = &tail[1..];
        }
        let quote = tail.chars().next().filter(|c| *c == '\'' || *c == '"');
        if let Some(q) = quote {
            tail = &tail[1..];
            let end = tail.find(q).unwrap_or(tail.len());
            let word = &tail[..end];
            if !word.is_empty() {
                out.push((strip, word.to_owned()));
            }
            search = &tail[end..];
        } else {
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let word = &tail[..end];
            if word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                out.push((strip, word.to_owned()));
            }
            search = &tail[end..];
        }
    }
    out
}

/// RUN's command: exec or shell form; a shell form that is only a here-document (`RUN <<EOF`
/// with the script on the next lines) runs the script itself.
fn run_command(rest: &str) -> Command {
    if let Some((first, body)) = rest.split_once('\n')
        && let [(_, word)] = heredoc_markers(&format!("RUN {first}")).as_slice()
        && first
            .trim()
            .trim_start_matches("<<")
            .trim_start_matches('-')
            .trim_matches(['\'', '"'])
            == word
    {
        let script = body.strip_suffix(word.as_str()).unwrap_or(body);
        let script = script.strip_suffix('\n').unwrap_or(script);
        return Command::Shell(script.to_owned());
    }
    command(rest)
}

/// Parses one `--mount=type=…,target=…,…` value.
fn run_mount(value: &str) -> std::result::Result<RunMount, String> {
    let mut typ = "bind".to_owned();
    let mut target = None;
    let mut id = None;
    let mut source = String::new();
    let mut from = None;
    let mut rw = false;
    for part in value.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "type" => typ = v.to_owned(),
            "target" | "dst" | "destination" => target = Some(v.to_owned()),
            "id" => id = Some(v.to_owned()),
            "source" | "src" => source = v.to_owned(),
            "from" => from = Some(v.to_owned()),
            "rw" | "readwrite" => rw = v.is_empty() || v == "true",
            "ro" | "readonly" => rw = !(v.is_empty() || v == "true"),
            "sharing" | "mode" | "uid" | "gid" | "size" | "required" => {}
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let target = target
        .filter(|t| !t.is_empty())
        .ok_or("a target is required")?;
    if !target.starts_with('/') {
        return Err("the target must be an absolute path".into());
    }
    match typ.as_str() {
        "cache" => Ok(RunMount::Cache {
            id: id.unwrap_or_else(|| target.clone()),
            target,
        }),
        "bind" => Ok(RunMount::Bind {
            target,
            source,
            from,
            rw,
        }),
        "tmpfs" => Ok(RunMount::Tmpfs { target }),
        other => Err(format!(
            "type={other} is not supported (cache, bind, tmpfs are)"
        )),
    }
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
            matches!(&df.instructions[1].kind, InstructionKind::From { image, .. } if image.expand(&|_| Some("scratch".into())) == "scratch")
        );
        match &df.instructions[2].kind {
            InstructionKind::Copy(c) => {
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
            InstructionKind::Env(pairs) => {
                assert_eq!(pairs[1].0, "B");
                assert_eq!(pairs[1].1.expand(&no_env), "two words");
            }
            other => panic!("{other:?}"),
        }
        match &df.instructions[6].kind {
            InstructionKind::Env(pairs) => assert_eq!(
                (pairs[0].0.as_str(), pairs[0].1.expand(&no_env).as_str()),
                ("LEGACY", "value with spaces")
            ),
            other => panic!("{other:?}"),
        }
        match &df.instructions[7].kind {
            InstructionKind::Label(pairs) => assert_eq!(pairs[0].0, "org.example.x"),
            other => panic!("{other:?}"),
        }
    }

    impl InstructionKind {
        fn run(self) -> Option<Command> {
            match self {
                InstructionKind::Run(c, _) => Some(c),
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
    fn stages_mounts_and_heredocs() {
        let text = "ARG V=1\nFROM scratch AS Build\nRUN --mount=type=cache,target=/c,id=x --mount=type=tmpfs,target=/t --mount=type=bind,source=a,target=/a,from=build make\nCOPY --from=build /out /out\nFROM build\nRUN <<EOF\necho one\n# not a comment\necho two\nEOF\nRUN cat <<-'END' > /f\n\thello $HOME\n\tEND\nCMD x\n";
        let df = Dockerfile::parse(text).unwrap();
        let kinds: Vec<&InstructionKind> = df.instructions.iter().map(|i| &i.kind).collect();
        assert!(matches!(kinds[1], InstructionKind::From { name: Some(n), .. } if n == "build"));
        let InstructionKind::Run(Command::Shell(cmd), mounts) = kinds[2] else {
            panic!("{:?}", kinds[2]);
        };
        assert_eq!(cmd, "make");
        assert_eq!(
            mounts,
            &[
                RunMount::Cache {
                    target: "/c".into(),
                    id: "x".into()
                },
                RunMount::Tmpfs {
                    target: "/t".into()
                },
                RunMount::Bind {
                    target: "/a".into(),
                    source: "a".into(),
                    from: Some("build".into()),
                    rw: false
                },
            ]
        );
        assert!(
            matches!(kinds[3], InstructionKind::Copy(c) if c.from.as_ref().unwrap().expand(&no_env) == "build")
        );
        assert!(matches!(kinds[4], InstructionKind::From { name: None, .. }));
        assert!(
            matches!(kinds[5], InstructionKind::Run(Command::Shell(s), _) if s == "echo one\n# not a comment\necho two"),
            "{:?}",
            kinds[5]
        );
        assert!(
            matches!(kinds[6], InstructionKind::Run(Command::Shell(s), _) if s == "cat <<-'END' > /f\nhello $HOME\nEND"),
            "{:?}",
            kinds[6]
        );
        assert_eq!(df.instructions[7].line, 14);
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
        assert!(error_of("FROM a AS x\nFROM b AS X\n").contains("line 2: duplicate stage name"));
        assert!(error_of("FROM a AS 1x\n").contains("invalid stage name"));
        assert!(
            error_of("FROM a\nRUN --mount=type=secret,target=/s x\n").contains("not supported")
        );
        assert!(error_of("FROM a\nRUN --mount=type=cache x\n").contains("target is required"));
        assert!(error_of("FROM a\nRUN <<EOF\necho\n").contains("no terminating EOF"));
        assert!(
            error_of("FROM scratch\nADD --from=x a b\n").contains("ADD --from is not supported")
        );
        assert!(error_of("FROM scratch\nCOPY --chmod=9z a b\n").contains("octal"));
        assert!(
            error_of("FROM scratch\nRUN --network=none x\n")
                .contains("RUN --network is not supported")
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
            InstructionKind::Cmd(Command::Shell(s)) => assert_eq!(s, "[\"unterminated\""),
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
