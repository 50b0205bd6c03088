//! `berth run|ps|logs|exec|stop|rm`: Docker's container verbs over berth-engine, plus the hidden
//! `container-monitor` that reaps a detached container.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::Context;
use berth_engine::namespaces::{InitBinary, Runtime};
use berth_engine::options::{
    BindMount, Limits, parse_cpus, parse_env, parse_memory, parse_pids_limit,
};
use berth_engine::{Container, Engine, MonitorCommand, RunConfig, Status};

use crate::Global;

/// Container subcommands (top-level verbs).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContainerCommand {
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps {
        /// Show all containers (default: running only).
        #[arg(short, long)]
        all: bool,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a container's output (detached containers).
    Logs {
        /// Keep printing output until the container exits.
        #[arg(short, long)]
        follow: bool,
        /// Container id, id prefix or name.
        container: String,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a pseudo-terminal.
        #[arg(short, long)]
        tty: bool,
        /// Set an environment variable `KEY=VALUE`.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Container id, id prefix or name.
        container: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Stop running containers: the stop signal, a grace period, then SIGKILL.
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Containers (id, id prefix or name).
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill and remove running containers.
        #[arg(short, long)]
        force: bool,
        /// Containers (id, id prefix or name).
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Internal: the monitor process of a detached container.
    #[command(hide = true)]
    ContainerMonitor {
        /// The container id.
        id: String,
    },
}

/// Arguments of `berth run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// A name for the container.
    #[arg(long)]
    name: Option<String>,
    /// Memory limit (`64m`, `1g`, bytes; at least 6m; 0 for no limit).
    #[arg(short, long, allow_negative_numbers = true)]
    memory: Option<String>,
    /// Number of CPUs (`0.5`; 0 for no limit).
    #[arg(long, allow_negative_numbers = true)]
    cpus: Option<String>,
    /// Maximum number of processes (-1 for no limit).
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// Set an environment variable `KEY=VALUE` (or `KEY` from this environment).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Bind mount `SRC:DST[:ro|rw]`.
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Override the image's entrypoint (`""` clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User (`name|uid[:group|gid]`).
    #[arg(short, long)]
    user: Option<String>,
    /// Network: `bridge` (the default network), `none` (loopback only), `host`, or a name from
    /// `berth network create`.
    #[arg(long, default_value = "bridge")]
    network: String,
    /// Publish a port `[HOSTIP:]HOSTPORT:CONTAINERPORT[/udp]`.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// The image.
    image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The engine on `--root`. Containers' init is `berth-runtime` next to this binary when present
/// (it runs `main_if_init`), else this binary.
pub(crate) fn engine(global: &Global) -> anyhow::Result<Engine> {
    let engine =
        Engine::open(&global.root).with_context(|| format!("opening {}", global.root.display()))?;
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("berth-runtime")));
    let init = match sibling {
        Some(path) if path.is_file() => InitBinary::Path(path),
        _ => InitBinary::CurrentExe,
    };
    let runtime = Runtime::new(global.root.join("runtime")).with_init_binary(init);
    Ok(engine.with_runtime(runtime))
}

pub(crate) fn run(global: &Global, cmd: ContainerCommand) -> anyhow::Result<u8> {
    let engine = engine(global)?;
    match cmd {
        ContainerCommand::Run(args) => run_container(global, &engine, *args),
        ContainerCommand::Ps { all, quiet } => ps(&engine, all, quiet),
        ContainerCommand::Logs { follow, container } => logs(&engine, &container, follow),
        ContainerCommand::Exec {
            interactive: _,
            tty,
            env,
            container,
            command,
        } => {
            let env = parse_envs(&env)?;
            let code = engine.exec(&container, &command, &env, tty, None)?;
            Ok(exit_byte(code))
        }
        ContainerCommand::Stop { time, containers } => each(&containers, |c| {
            engine.stop(c, Duration::from_secs(time)).map(drop)
        }),
        ContainerCommand::Rm { force, containers } => {
            each(&containers, |c| engine.remove(c, force))
        }
        ContainerCommand::ContainerMonitor { id } => monitor(&engine, &id),
    }
}

/// Applies `f` to every container named, as Docker does: prints each one done, reports each
/// failure, and fails (exit 1) if any did.
fn each(containers: &[String], f: impl Fn(&str) -> berth_engine::Result<()>) -> anyhow::Result<u8> {
    let mut failed = false;
    for c in containers {
        match f(c) {
            Ok(()) => println!("{c}"),
            Err(e) => {
                failed = true;
                eprintln!("berth: {c}: {:#}", anyhow::Error::from(e));
            }
        }
    }
    Ok(u8::from(failed))
}

fn parse_envs(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in items {
        if let Some(kv) = parse_env(item)? {
            out.push(kv);
        }
    }
    Ok(out)
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

fn run_container(global: &Global, engine: &Engine, args: RunArgs) -> anyhow::Result<u8> {
    let limits = Limits {
        memory: args
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()?
            .flatten(),
        cpu_quota: args.cpus.as_deref().map(parse_cpus).transpose()?.flatten(),
        pids: args.pids_limit.map(parse_pids_limit).transpose()?.flatten(),
    };
    let binds = args
        .volume
        .iter()
        .map(|v| v.parse::<BindMount>())
        .collect::<Result<Vec<_>, _>>()?;
    let entrypoint = args
        .entrypoint
        .map(|e| if e.is_empty() { Vec::new() } else { vec![e] });
    let config = RunConfig {
        image: args.image,
        name: args.name,
        command: args.command,
        entrypoint,
        env: parse_envs(&args.env)?,
        binds,
        limits,
        tty: args.tty,
        interactive: args.interactive,
        auto_remove: args.rm,
        workdir: args.workdir,
        user: args.user,
        network: Some(berth_engine::network::NetworkMode::parse(&args.network)?),
        publish: args
            .publish
            .iter()
            .map(|p| berth_engine::network::PortMapping::parse(p))
            .collect::<Result<_, _>>()?,
    };
    if args.detach {
        if config.tty {
            anyhow::bail!("-t with -d is not supported: there is no one to attach the terminal to");
        }
        let exe = std::env::current_exe().context("finding this executable")?;
        let monitor = MonitorCommand {
            program: exe,
            args: vec![
                "--root".into(),
                global.root.clone().into_os_string(),
                "container-monitor".into(),
            ],
        };
        let container = engine.run_detached(&config, &monitor)?;
        println!("{}", container.id);
        return Ok(0);
    }
    let (_, code) = engine.run(&config, None)?;
    Ok(exit_byte(code))
}

/// The monitor: its own session (a closed terminal does not reach it), reports on stdout, then
/// points stdout at /dev/null so `berth run -d` stops reading.
fn monitor(engine: &Engine, id: &str) -> anyhow::Result<u8> {
    let _ = nix::unistd::setsid();
    let code = engine.monitor(id, |report| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{report}");
        let _ = out.flush();
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(null.as_fd());
        }
    })?;
    Ok(exit_byte(code))
}

fn ps(engine: &Engine, all: bool, quiet: bool) -> anyhow::Result<u8> {
    let listing = engine.ps_all(all)?;
    let containers = listing.containers;
    // A record that can't be read still names a container (which may run): say so, list it.
    for u in &listing.unreadable {
        eprintln!(
            "berth: warning: container {}: unreadable record {} ({}); `berth rm -f {}` removes it",
            u.short_id(),
            u.path.display(),
            u.error,
            u.short_id()
        );
    }
    if quiet {
        for c in &containers {
            println!("{}", c.short_id());
        }
        for u in &listing.unreadable {
            println!("{}", u.short_id());
        }
        return Ok(0);
    }
    println!(
        "{:<14}{:<24}{:<24}{:<16}{:<30}NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    let now = berth_engine::state::now();
    for c in &containers {
        let command = format!("\"{}\"", truncate(&c.command.join(" "), 20));
        println!(
            "{:<14}{:<24}{:<24}{:<16}{:<30}{}",
            c.short_id(),
            truncate(&c.image, 22),
            command,
            format!("{} ago", ago(now.saturating_sub(c.created))),
            status(c, now),
            c.name
        );
    }
    for u in &listing.unreadable {
        println!(
            "{:<14}{:<24}{:<24}{:<16}{:<30}{}",
            u.short_id(),
            "?",
            "?",
            "?",
            "Unknown (unreadable record)",
            u.name.as_deref().unwrap_or("?")
        );
    }
    Ok(0)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn status(c: &Container, now: u64) -> String {
    match c.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", ago(now.saturating_sub(c.started.unwrap_or(now)))),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            c.exit_code.unwrap_or(255),
            ago(now.saturating_sub(c.finished.unwrap_or(now)))
        ),
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} seconds"),
        60..3600 => format!("{} minutes", secs / 60),
        3600..86400 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86400),
    }
}

fn logs(engine: &Engine, key: &str, follow: bool) -> anyhow::Result<u8> {
    let container = engine.inspect(key)?;
    let path = engine.log_path(&container.id);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !container.detached => {
            anyhow::bail!(
                "container {} ran in the foreground: its output was not logged",
                container.short_id()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !follow {
            return Ok(0);
        }
        match engine.inspect(&container.id) {
            Ok(c) if engine.is_running(&c) || c.status == Status::Created => {}
            // Exited (or removed): print what was written last, then stop.
            _ => {
                let pos = file.stream_position()?;
                file.seek(SeekFrom::Start(pos))?;
                std::io::copy(&mut file, &mut out)?;
                return Ok(0);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
