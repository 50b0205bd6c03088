//! Berth's single-host container engine: an image becomes a union snapshot becomes a running
//! container, with state, logs and stop; what `berth run` and the node agent use.
//!
//! Start with [`Engine::open`] on a state root, then [`Engine::run`] (foreground) or
//! [`Engine::run_detached`] (a monitor process reaps it), [`Engine::ps`] ([`Engine::ps_all`] also
//! reports containers whose record is unreadable), [`Engine::exec`],
//! [`Engine::stop`] and [`Engine::remove`]; [`Engine::remove_image`] and [`Engine::prune_images`]
//! are `docker image rm`. [`RunConfig`] holds `docker run`'s options;
//! [`options`] parses Docker's option syntax (`64m`, `--cpus 0.5`, `-v SRC:DST:ro`).
//!
//! ```no_run
//! use berth_engine::{Engine, RunConfig};
//!
//! fn main() -> Result<(), berth_engine::Error> {
//!     // Containers are started by re-executing this binary as their init.
//!     berth_engine::namespaces::init::main_if_init();
//!     let engine = Engine::open("/var/lib/berth")?;
//!     let config = RunConfig {
//!         image: "busybox".into(),
//!         command: vec!["echo".into(), "hello".into()],
//!         auto_remove: true,
//!         ..Default::default()
//!     };
//!     let (_container, code) = engine.run(&config, None)?;
//!     std::process::exit(code);
//! }
//! ```

mod engine;
mod error;
mod images;
pub mod options;
mod spec;
pub mod state;

pub use engine::{Attached, Engine, MonitorCommand, RunConfig, parse_signal};
pub use error::{Error, Result};
pub use images::PruneReport;
pub use state::{Container, Status};

pub use berth_namespaces as namespaces;
