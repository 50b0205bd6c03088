//! `berth-runtime`: a runc-compatible command line over berth-namespaces.
//!
//! `berth-runtime [--root DIR] create|start|state|kill|delete|run|exec|ps|pause|resume|list`
//! with runc's flags, so scripts and tools written for runc work with it.

mod cli;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use berth_namespaces::oci_spec::runtime::Process;
use berth_namespaces::{Container, CreateOptions, Runtime, Signal, Stdio};
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
            let signal = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
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
            let forward = (!*detach).then(|| forward_signals(container.pid()));
            container.start()?;
            if *detach {
                return Ok(0);
            }
            let proxy = console.map(|master| proxy_console(master, true));
            let status = container.wait()?;
            drop(forward);
            if let Some(proxy) = proxy {
                let _ = proxy.join();
            }
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
            let stdio = if terminal && console_socket.is_none() {
                Stdio::Console
            } else {
                Stdio::Inherit
            };
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
            let forward = forward_signals(exec.pid());
            let proxy = exec
                .take_console()
                .map(|master| proxy_console(master, true));
            let status = exec.wait()?;
            drop(forward);
            if let Some(proxy) = proxy {
                let _ = proxy.join();
            }
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

fn parse_signal(text: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("unknown signal {n}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).with_context(|| format!("unknown signal {text}"))
}

/// Forwards the signals a foreground runtime receives to the container process, as runc does.
/// Dropping the guard stops forwarding.
struct SignalForwarder {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn forward_signals(pid: nix::unistd::Pid) -> SignalForwarder {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    // Block them in this thread (the forwarding thread inherits the mask and sigwaits).
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        while let Ok(signal) = set.wait() {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let _ = nix::sys::signal::kill(pid, signal);
        }
    });
    SignalForwarder { done }
}

/// Copies between our stdio and the container's pty until the container closes it.
fn proxy_console(master: OwnedFd, raw: bool) -> std::thread::JoinHandle<()> {
    let stdin_is_tty = nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
    let saved = if raw && stdin_is_tty {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(orig) = &saved {
            let mut rawmode = orig.clone();
            nix::sys::termios::cfmakeraw(&mut rawmode);
            // TCSAFLUSH, not TCSANOW: an end-of-file (^D) still queued in canonical mode reads
            // back as a NUL byte once the terminal is raw, and would be typed into the
            // container's terminal at the start of the session.
            let _ = nix::sys::termios::tcsetattr(
                stdin.as_fd(),
                nix::sys::termios::SetArg::TCSAFLUSH,
                &rawmode,
            );
        }
        saved
    } else {
        None
    };
    let master = std::fs::File::from(master);
    let mut writer = master.try_clone().expect("dup pty master");
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || writer.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut master = master;
        let mut stdout = std::io::stdout();
        let mut buf = [0u8; 4096];
        // EIO once the last slave fd closes.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
        if let Some(orig) = saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                &orig,
            );
        }
        let _ = master.as_raw_fd();
    })
}
