//! `berth-runtime`: a runc-compatible command line over berth-namespaces.
//!
//! `berth-runtime [--root DIR] create|start|state|kill|delete|run|exec|ps|pause|resume|list`
//! with runc's flags, so scripts and tools written for runc work with it.

mod cli;

use std::process::ExitCode;

use anyhow::{Context, bail};
use berth_namespaces::oci_spec::runtime::Process;
use berth_namespaces::{Container, CreateOptions, Runtime, Stdio, foreground};
use cli::{Cli, Command, CreateArgs, ExecArgs};

fn main() -> ExitCode {
    berth_namespaces::init::main_if_init();
    let cli = match cli::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("berth-runtime: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("berth-runtime: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<u8> {
    let runtime = Runtime::new(&cli.root).with_cgroup_parent("berth-runtime");
    match &cli.command {
        Command::Help => {
            print!("{}", cli::USAGE);
            Ok(0)
        }
        Command::Version => {
            println!("berth-runtime version {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Create(args) => {
            create(&runtime, args, false)?;
            Ok(0)
        }
        Command::Start { id } => {
            runtime.load(id)?.start()?;
            Ok(0)
        }
        Command::State { id } => {
            let state = runtime.load(id)?.state();
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let text = signal.as_deref().unwrap_or("SIGTERM");
            let signal =
                foreground::parse_signal(text).with_context(|| format!("unknown signal {text}"))?;
            let container = runtime.load(id)?;
            if *all {
                container.kill_all(signal)?
            } else {
                container.kill(signal)?
            }
            Ok(0)
        }
        Command::Delete { force, id } => {
            match runtime.load(id) {
                Ok(container) => container.delete(*force)?,
                // runc: deleting a missing container with --force succeeds.
                Err(berth_namespaces::Error::NotFound(_)) if *force => {}
                Err(e) => return Err(e.into()),
            }
            Ok(0)
        }
        Command::Run {
            create: args,
            detach,
            keep,
        } => {
            let mut container = create(&runtime, args, !*detach)?;
            let console = container.take_console();
            let forward = if *detach {
                None
            } else {
                Some(foreground::forward_signals(container.pid())?)
            };
            container.start()?;
            if *detach {
                return Ok(0);
            }
            if let Some(master) = console {
                foreground::proxy_console(master);
            }
            let status = container.wait()?;
            drop(forward);
            if !*keep {
                container.delete(true)?;
            }
            Ok(status.code() as u8)
        }
        Command::Exec(exec) => {
            let ExecArgs {
                tty,
                env,
                cwd,
                user,
                additional_gids,
                process,
                detach,
                pid_file,
                console_socket,
                no_new_privs,
                preserve_fds,
                id,
                command,
            } = exec.as_ref();
            let container = runtime.load(id)?;
            let process = match process {
                Some(path) => {
                    let text =
                        std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
                    serde_json::from_slice::<Process>(&text)
                        .with_context(|| format!("parse {}", path.display()))?
                }
                None => {
                    if command.is_empty() {
                        bail!("exec needs a command (or --process)");
                    }
                    let mut p = container.spec().process().clone().unwrap_or_default();
                    p.set_args(Some(command.clone()));
                    p.set_terminal(Some(*tty));
                    let mut vars = p.env().clone().unwrap_or_default();
                    for e in env {
                        let key = e.split('=').next().unwrap_or_default();
                        vars.retain(|v| v.split('=').next() != Some(key));
                        vars.push(e.clone());
                    }
                    p.set_env(Some(vars));
                    if let Some(cwd) = cwd {
                        p.set_cwd(cwd.clone());
                    }
                    if let Some(user) = user {
                        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
                        p.user_mut().set_uid(uid.parse().context("--user uid")?);
                        p.user_mut().set_gid(gid.parse().context("--user gid")?);
                    }
                    if !additional_gids.is_empty() {
                        p.user_mut()
                            .set_additional_gids(Some(additional_gids.clone()));
                    }
                    if *no_new_privs {
                        p.set_no_new_privileges(Some(true));
                    }
                    p
                }
            };
            let terminal = process.terminal() == Some(true);
            if terminal && *detach && console_socket.is_none() {
                bail!("cannot allocate a tty for a detached process without --console-socket");
            }
            let stdio = foreground::stdio(terminal && console_socket.is_none(), true)?;
            let options = CreateOptions {
                stdio,
                console_socket: console_socket.clone(),
                preserve_fds: *preserve_fds,
                pid_file: pid_file.clone(),
            };
            let mut exec = container.exec(process, options)?;
            if *detach {
                return Ok(0);
            }
            let forward = foreground::forward_signals(exec.pid())?;
            if let Some(master) = exec.take_console() {
                foreground::proxy_console(master);
            }
            let status = exec.wait()?;
            drop(forward);
            Ok(status.code() as u8)
        }
        Command::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = runtime.load(id)?.pids()?;
            let pids: Vec<i32> = pids.iter().map(|p| p.as_raw()).collect();
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
                return Ok(0);
            }
            let args = if ps_args.is_empty() {
                vec!["-ef".to_string()]
            } else {
                ps_args.clone()
            };
            let output = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            let text = String::from_utf8_lossy(&output.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let column = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for line in lines {
                if let Some(pid) = line
                    .split_whitespace()
                    .nth(column)
                    .and_then(|p| p.parse::<i32>().ok())
                    && pids.contains(&pid)
                {
                    println!("{line}");
                }
            }
            Ok(0)
        }
        Command::Pause { id } => {
            runtime.load(id)?.pause()?;
            Ok(0)
        }
        Command::Resume { id } => {
            runtime.load(id)?.resume()?;
            Ok(0)
        }
        Command::List { format, quiet } => {
            let states = runtime.list()?;
            if *quiet {
                for s in &states {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&states)?);
            } else {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for s in &states {
                    println!(
                        "{:<20} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created
                    );
                }
            }
            Ok(0)
        }
    }
}

/// `create` (and the first half of `run`): a terminal needs a console socket unless `run`
/// stays in the foreground and proxies the pty itself.
fn create(runtime: &Runtime, args: &CreateArgs, foreground: bool) -> anyhow::Result<Container> {
    let spec = berth_namespaces::load_config(&args.bundle)?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let stdio = match (terminal, &args.console_socket, foreground) {
        (true, None, false) => {
            bail!("cannot allocate tty if berth-runtime will detach without setting console socket")
        }
        (true, None, true) => Stdio::Console,
        (true, Some(_), _) => Stdio::Console,
        (false, Some(_), _) => bail!("--console-socket given but process.terminal is false"),
        (false, None, _) => Stdio::Inherit,
    };
    let options = CreateOptions {
        stdio,
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
        pid_file: args.pid_file.clone(),
    };
    Ok(runtime.create_from_spec(&args.id, &args.bundle, spec, options)?)
}
