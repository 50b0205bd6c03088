//! `berth-runtime`: a runc-compatible command line over berth-namespaces.
//!
//! `berth-runtime [--root DIR] create|start|state|kill|delete|run|exec|ps|pause|resume|list`
//! with runc's flags, so scripts and tools written for runc work with it.

// Doc comments here are clap help text (`NAME[:TAG]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use berth_namespaces::oci_spec::runtime::{Process, Spec};
use berth_namespaces::{Container, CreateOptions, Runtime, Signal, Stdio};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "A runc-compatible OCI runtime built on berth-namespaces"
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/berth-runtime")]
    root: PathBuf,
    /// Accepted for runc compatibility: log file for runtime messages (stderr is used).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility: log format.
    #[arg(long = "log-format", global = true)]
    log_format: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility (systemd cgroups are not supported; cgroupfs is used).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the pty master (process.terminal).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the container process's pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Pass this many extra fds (3, 4, …) into the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility (pivot_root is always used).
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// The container id.
    id: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// The container id.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// The container id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        /// Send to every process of the container.
        #[arg(short, long)]
        all: bool,
        /// The container id.
        id: String,
        /// Signal name (TERM, SIGKILL, …) or number.
        signal: Option<String>,
    },
    /// Delete a container.
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// The container id.
        id: String,
    },
    /// Create and start a container; without -d, wait for it and delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Do not wait for the container.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a new process in a running container.
    Exec {
        /// Allocate a pty.
        #[arg(short, long)]
        tty: bool,
        /// Set an environment variable (KEY=VALUE).
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// uid[:gid] to run as.
        #[arg(short, long)]
        user: Option<String>,
        /// Additional gids.
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// A process.json describing the process (replaces the command line).
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Do not wait for the process.
        #[arg(short, long)]
        detach: bool,
        /// File to write the process's pid to.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the pty master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Set no_new_privs for the process.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Pass this many extra fds into the process.
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// The container id.
        id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List the processes of a container.
    Ps {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// The container id.
        id: String,
        /// Arguments for ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause {
        /// The container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// The container id.
        id: String,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Print only ids.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    berth_namespaces::init::main_if_init();
    let cli = Cli::parse();
    let _ = (&cli.log, &cli.log_format, cli.debug, cli.systemd_cgroup);
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
        Command::Exec {
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
        } => {
            let container = runtime.load(id)?;
            let process = match process {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("read {}", path.display()))?;
                    serde_json::from_str::<Process>(&text)
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
    let _ = (args.no_pivot, args.no_new_keyring);
    let config = args.bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|source| berth_namespaces::Error::InvalidConfig {
        path: config.clone(),
        source,
    })?;
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
            let _ = nix::sys::termios::tcsetattr(
                stdin.as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
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
