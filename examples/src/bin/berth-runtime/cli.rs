//! The command line: runc's subcommands and flags, parsed by hand. `berth-runtime` runs once
//! per container operation (and once more as each container's init), so its start-up and
//! resident code count; a derive-based parser was a quarter of the code it touched.
//!
//! Accepted forms: `--flag value`, `--flag=value`, `-f value`, `-fvalue`, clusters of short
//! booleans (`-dt`), `--` to end the options. Global options go anywhere; everything after an
//! `exec` command's first word, or after `ps`'s id, is passed through untouched.

use std::path::PathBuf;

use anyhow::{Context, bail};

pub(crate) const USAGE: &str = "\
berth-runtime: a runc-compatible OCI runtime built on berth-namespaces

Usage: berth-runtime [--root DIR] COMMAND [OPTIONS] ID ...

Commands:
  create  [-b BUNDLE] [--console-socket S] [--pid-file F] [--preserve-fds N] ID
  start   ID                  let a created container run its program
  state   ID                  print the state as JSON
  kill    [-a] ID [SIGNAL]    signal the container (default SIGTERM; -a: every process)
  delete  [-f] ID             delete (-f: kill a running container first)
  run     [create options] [-d] [--keep] ID
                              create and start; without -d wait, then delete
  exec    [-t] [-d] [-e K=V] [--cwd D] [-u UID[:GID]] [-g GID] [-p process.json]
          [--pid-file F] [--console-socket S] [--no-new-privs] [--preserve-fds N] ID CMD...
  ps      [-f table|json] ID [PS ARGS...]
  pause   ID
  resume  ID
  list    [-f table|json] [-q]

Global options:
  --root DIR          state directory (default /run/berth-runtime)
  --log F, --log-format F, --debug, --systemd-cgroup
                      accepted for runc compatibility
  -h, --help          this help;  -v, --version  the version
";

/// The parsed command line.
#[derive(Debug)]
pub(crate) struct Cli {
    /// Root directory for container state.
    pub(crate) root: PathBuf,
    /// The subcommand.
    pub(crate) command: Command,
}

/// `create` (and `run`) options.
#[derive(Debug)]
pub(crate) struct CreateArgs {
    pub(crate) bundle: PathBuf,
    pub(crate) console_socket: Option<PathBuf>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) preserve_fds: u32,
    pub(crate) id: String,
}

/// `exec` options.
#[derive(Debug)]
pub(crate) struct ExecArgs {
    pub(crate) tty: bool,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) user: Option<String>,
    pub(crate) additional_gids: Vec<u32>,
    pub(crate) process: Option<PathBuf>,
    pub(crate) detach: bool,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) console_socket: Option<PathBuf>,
    pub(crate) no_new_privs: bool,
    pub(crate) preserve_fds: u32,
    pub(crate) id: String,
    pub(crate) command: Vec<String>,
}

/// What to do.
#[derive(Debug)]
pub(crate) enum Command {
    Help,
    Version,
    Create(CreateArgs),
    Start {
        id: String,
    },
    State {
        id: String,
    },
    Kill {
        all: bool,
        id: String,
        signal: Option<String>,
    },
    Delete {
        force: bool,
        id: String,
    },
    Run {
        create: CreateArgs,
        detach: bool,
        keep: bool,
    },
    Exec(Box<ExecArgs>),
    Ps {
        format: String,
        id: String,
        ps_args: Vec<String>,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    List {
        format: String,
        quiet: bool,
    },
}

/// One option: its long name, its short letter, and whether it takes a value.
struct Opt {
    long: &'static str,
    short: Option<char>,
    value: bool,
}

const fn flag(long: &'static str, short: Option<char>) -> Opt {
    Opt {
        long,
        short,
        value: false,
    }
}

const fn valued(long: &'static str, short: Option<char>) -> Opt {
    Opt {
        long,
        short,
        value: true,
    }
}

const GLOBAL: &[Opt] = &[
    valued("root", None),
    valued("log", None),
    valued("log-format", None),
    flag("debug", None),
    flag("systemd-cgroup", None),
    flag("help", Some('h')),
    flag("version", Some('v')),
];

const CREATE: &[Opt] = &[
    valued("bundle", Some('b')),
    valued("console-socket", None),
    valued("pid-file", None),
    valued("preserve-fds", None),
    flag("no-pivot", None),
    flag("no-new-keyring", None),
];

const RUN_EXTRA: &[Opt] = &[flag("detach", Some('d')), flag("keep", None)];

const EXEC: &[Opt] = &[
    flag("tty", Some('t')),
    valued("env", Some('e')),
    valued("cwd", None),
    valued("user", Some('u')),
    valued("additional-gids", Some('g')),
    valued("process", Some('p')),
    flag("detach", Some('d')),
    valued("pid-file", None),
    valued("console-socket", None),
    flag("no-new-privs", None),
    valued("preserve-fds", None),
];

const KILL: &[Opt] = &[flag("all", Some('a'))];
const DELETE: &[Opt] = &[flag("force", Some('f'))];
const FORMAT: &[Opt] = &[valued("format", Some('f'))];
const LIST: &[Opt] = &[valued("format", Some('f')), flag("quiet", Some('q'))];

/// Options and positionals as given, before they are checked against a subcommand.
#[derive(Default)]
struct Matches {
    values: Vec<(&'static str, String)>,
    positionals: Vec<String>,
}

impl Matches {
    fn has(&self, long: &str) -> bool {
        self.values.iter().any(|(k, _)| *k == long)
    }

    fn last(&self, long: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == long)
            .map(|(_, v)| v.clone())
    }

    fn all(&self, long: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(k, _)| *k == long)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn number(&self, long: &str) -> anyhow::Result<u32> {
        match self.last(long) {
            Some(v) => v
                .parse()
                .with_context(|| format!("--{long} {v:?}: not a number")),
            None => Ok(0),
        }
    }
}

/// How many positionals a subcommand takes before the rest passes through untouched.
fn passthrough_after(command: &str) -> Option<usize> {
    match command {
        "exec" => Some(2), // ID and the program: its own flags are not ours
        "ps" => Some(1),
        _ => None,
    }
}

fn options_of(command: &str) -> anyhow::Result<Vec<&'static Opt>> {
    let own: Vec<&'static [Opt]> = match command {
        "create" => vec![CREATE],
        "run" => vec![CREATE, RUN_EXTRA],
        "exec" => vec![EXEC],
        "kill" => vec![KILL],
        "delete" => vec![DELETE],
        "ps" => vec![FORMAT],
        "list" => vec![LIST],
        "start" | "state" | "pause" | "resume" => vec![],
        other => bail!("unknown command {other:?} (see --help)"),
    };
    Ok(own.into_iter().flatten().chain(GLOBAL).collect())
}

/// Parses `args` (without the program name).
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Cli> {
    let mut args = args.into_iter();
    let mut command: Option<String> = None;
    let mut m = Matches::default();
    let mut only_positionals = false;
    while let Some(arg) = args.next() {
        let options = match &command {
            Some(c) => options_of(c)?,
            None => GLOBAL.iter().collect(),
        };
        let passthrough = command
            .as_deref()
            .and_then(passthrough_after)
            .is_some_and(|n| m.positionals.len() >= n);
        if only_positionals || passthrough {
            m.positionals.push(arg);
            continue;
        }
        if arg == "--" {
            only_positionals = true;
        } else if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let opt = options
                .iter()
                .find(|o| o.long == name)
                .with_context(|| format!("unknown option --{name} (see --help)"))?;
            let value = match (opt.value, inline) {
                (true, Some(v)) => v,
                (true, None) => args
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?,
                (false, None) => String::new(),
                (false, Some(_)) => bail!("--{name} takes no value"),
            };
            m.values.push((opt.long, value));
        } else if arg.len() > 1 && arg.starts_with('-') {
            let shorts: Vec<char> = arg[1..].chars().collect();
            for (i, c) in shorts.iter().enumerate() {
                let opt = options
                    .iter()
                    .find(|o| o.short == Some(*c))
                    .with_context(|| format!("unknown option -{c} (see --help)"))?;
                if !opt.value {
                    m.values.push((opt.long, String::new()));
                    continue;
                }
                let rest: String = shorts[i + 1..].iter().collect();
                let value = if rest.is_empty() {
                    args.next().with_context(|| format!("-{c} needs a value"))?
                } else {
                    rest
                };
                m.values.push((opt.long, value));
                break;
            }
        } else if command.is_none() {
            command = Some(arg);
        } else {
            m.positionals.push(arg);
        }
    }
    let root = PathBuf::from(
        m.last("root")
            .unwrap_or_else(|| "/run/berth-runtime".into()),
    );
    if m.has("help") {
        return Ok(Cli {
            root,
            command: Command::Help,
        });
    }
    if m.has("version") {
        return Ok(Cli {
            root,
            command: Command::Version,
        });
    }
    let Some(name) = command else {
        return Ok(Cli {
            root,
            command: Command::Help,
        });
    };
    let command = build(&name, m)?;
    Ok(Cli { root, command })
}

/// Checks the positionals of `name` and builds its [`Command`].
fn build(name: &str, m: Matches) -> anyhow::Result<Command> {
    let mut positionals = m.positionals.clone().into_iter();
    let mut id = || -> anyhow::Result<String> {
        positionals
            .next()
            .with_context(|| format!("{name}: the container id is missing"))
    };
    let create_args = |id: String| -> anyhow::Result<CreateArgs> {
        Ok(CreateArgs {
            bundle: PathBuf::from(m.last("bundle").unwrap_or_else(|| ".".into())),
            console_socket: m.last("console-socket").map(PathBuf::from),
            pid_file: m.last("pid-file").map(PathBuf::from),
            preserve_fds: m.number("preserve-fds")?,
            id,
        })
    };
    let command = match name {
        "create" => Command::Create(create_args(id()?)?),
        "run" => Command::Run {
            create: create_args(id()?)?,
            detach: m.has("detach"),
            keep: m.has("keep"),
        },
        "start" => Command::Start { id: id()? },
        "state" => Command::State { id: id()? },
        "pause" => Command::Pause { id: id()? },
        "resume" => Command::Resume { id: id()? },
        "kill" => Command::Kill {
            all: m.has("all"),
            id: id()?,
            signal: positionals.next(),
        },
        "delete" => Command::Delete {
            force: m.has("force"),
            id: id()?,
        },
        "ps" => Command::Ps {
            format: m.last("format").unwrap_or_else(|| "table".into()),
            id: id()?,
            ps_args: positionals.by_ref().collect(),
        },
        "list" => Command::List {
            format: m.last("format").unwrap_or_else(|| "table".into()),
            quiet: m.has("quiet"),
        },
        "exec" => Command::Exec(Box::new(ExecArgs {
            tty: m.has("tty"),
            env: m.all("env"),
            cwd: m.last("cwd").map(PathBuf::from),
            user: m.last("user"),
            additional_gids: m
                .all("additional-gids")
                .iter()
                .map(|g| {
                    g.parse()
                        .with_context(|| format!("--additional-gids {g:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
            process: m.last("process").map(PathBuf::from),
            detach: m.has("detach"),
            pid_file: m.last("pid-file").map(PathBuf::from),
            console_socket: m.last("console-socket").map(PathBuf::from),
            no_new_privs: m.has("no-new-privs"),
            preserve_fds: m.number("preserve-fds")?,
            id: id()?,
            command: positionals.by_ref().collect(),
        })),
        other => bail!("unknown command {other:?} (see --help)"),
    };
    if let Some(extra) = positionals.next() {
        bail!("{name}: unexpected argument {extra:?}");
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(line: &str) -> Cli {
        parse(line.split_whitespace().map(String::from)).unwrap()
    }

    #[test]
    fn runc_style_lines_parse() {
        let c = cli("--root /tmp/r run -b /b --pid-file=/p -d c1");
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        let Command::Run {
            create,
            detach,
            keep,
        } = c.command
        else {
            panic!()
        };
        assert_eq!(create.bundle, PathBuf::from("/b"));
        assert_eq!(create.pid_file, Some(PathBuf::from("/p")));
        assert_eq!(create.id, "c1");
        assert!(detach && !keep);

        let Command::Exec(e) = cli("exec -t -e A=1 -e B=2 c1 sh -c ls -l").command else {
            panic!()
        };
        assert!(e.tty);
        assert_eq!(e.env, ["A=1", "B=2"]);
        assert_eq!(e.id, "c1");
        assert_eq!(e.command, ["sh", "-c", "ls", "-l"]);

        let Command::Kill { all, id, signal } = cli("kill -a c1 KILL").command else {
            panic!()
        };
        assert!(all);
        assert_eq!((id.as_str(), signal.as_deref()), ("c1", Some("KILL")));
        let Command::Delete { force, .. } = cli("delete -f c1").command else {
            panic!()
        };
        assert!(force);
        let Command::Ps {
            format, ps_args, ..
        } = cli("ps -f json c1 -o pid").command
        else {
            panic!()
        };
        assert_eq!(
            (format.as_str(), ps_args),
            ("json", vec!["-o".to_string(), "pid".into()])
        );
        // Global options after the subcommand, as clap's `global = true` allowed.
        assert_eq!(cli("state c1 --root /x").root, PathBuf::from("/x"));
    }

    #[test]
    fn mistakes_are_errors() {
        for line in [
            "frobnicate",
            "start",
            "delete --bogus c1",
            "run -b",
            "start a b",
            "exec",
        ] {
            assert!(
                parse(line.split_whitespace().map(String::from)).is_err(),
                "{line}"
            );
        }
    }
}
