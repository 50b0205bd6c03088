//! Berth's container runtime (its "libcontainer"): namespaces, `pivot_root`, mounts, devices,
//! capabilities, seccomp and the OCI runtime-spec lifecycle, with state kept under a root
//! directory so any process can find a container by id.
//!
//! # Where to start
//!
//! - [`Runtime`] creates containers from an OCI bundle ([`Runtime::create`]) or from a
//!   [`Spec`](oci_spec::runtime::Spec) ([`Runtime::create_from_spec`]) and finds them again
//!   ([`Runtime::load`], [`Runtime::list`]).
//! - [`Container`] is one container: [`start`](Container::start), [`wait`](Container::wait),
//!   [`kill`](Container::kill), [`stop`](Container::stop) (SIGTERM, grace, SIGKILL of the
//!   cgroup), [`exec`](Container::exec), [`pause`](Container::pause)/[`resume`](Container::resume),
//!   [`pids`](Container::pids), [`state`](Container::state) (runc's JSON) and
//!   [`delete`](Container::delete).
//! - [`Stdio`] says where the process's stdio goes: inherited, /dev/null, given fds (log files:
//!   [`Stdio::log_file`]), pipes, or a pty console.
//! - [`ContainerRuntime`], [`ContainerHandle`] and [`ProcessHandle`] are the same operations as
//!   traits, for code that should run against [`FakeRuntime`] in its tests (in-memory
//!   containers whose processes exit when the test says so).
//! - [`defaults::spec`] builds a spec with what Docker gives by default (capabilities, masked
//!   and read-only paths, no_new_privs, a default seccomp allowlist). The OCI path applies
//!   exactly what config.json says.
//!
//! # The init process
//!
//! Spawning is safe from a multi-threaded (tokio) caller: the runtime never runs setup code
//! in a forked copy of itself. It re-executes an init binary (by default the current
//! executable, through a private read-only mount so a container cannot overwrite it,
//! CVE-2019-5736), which joins or creates the namespaces and forks the container process with
//! `CLONE_PARENT`, so the caller is its parent and reaps it through a pidfd. The runtime moves
//! that process into its cgroup while it builds its root filesystem (on cgroup v1 the move
//! waits for an RCU grace period), and it waits for the move before running hooks or the
//! user's program. Every fd of the runtime is close-on-exec, and the signal mask and every
//! signal disposition are reset to the defaults, before the user's program runs. **Any binary that creates
//! containers must call [`init::main_if_init`] first thing in `main`.**
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use berth_namespaces::{CreateOptions, Runtime, Stdio};
//!
//! fn main() -> Result<(), berth_namespaces::Error> {
//!     berth_namespaces::init::main_if_init();
//!     let runtime = Runtime::new("/run/berth");
//!     // A bundle: config.json (e.g. from `runc spec`) and its rootfs.
//!     let options = CreateOptions { stdio: Stdio::Inherit, ..Default::default() };
//!     let mut container = runtime.create("web-1", Path::new("/srv/bundles/web"), options)?;
//!     container.start()?;
//!     let status = container.wait()?;
//!     println!("exited with {}", status.code());
//!     container.delete(false)?;
//!
//!     // From a spec with Docker's defaults, stopped gracefully.
//!     let spec = berth_namespaces::defaults::spec("/srv/rootfs", &["sleep", "60"], "box");
//!     let mut c = runtime.create_from_spec("box-1", Path::new("/srv"), spec, CreateOptions::default())?;
//!     c.start()?;
//!     c.stop(Duration::from_secs(10))?;
//!     c.delete(false)?;
//!     Ok(())
//! }
//! ```

mod bpf;
mod channel;
mod container;
pub mod defaults;
mod error;
mod fake;
mod hooks;
pub mod init;
mod rootfs;
mod security;
mod state;
mod sys;
mod traits;

pub use container::{
    Container, ContainerPipes, CreateOptions, ExecProcess, ExitStatus, InitBinary, Runtime, Stdio,
    load_config,
};
pub use error::{Error, Result};
pub use fake::{FakeContainer, FakeProcess, FakeRuntime};
pub use state::{State, Status, validate_id};
pub use traits::{ContainerHandle, ContainerRuntime, ProcessHandle};

pub use nix::sys::signal::Signal;
pub use oci_spec;
