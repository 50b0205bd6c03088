//! A minimal container init binary: what [`berth_namespaces::InitBinary::Path`] can point at
//! when the calling program cannot run the init from its own `main` (tests, plugins).

fn main() {
    berth_namespaces::init::main_if_init();
    eprintln!("berth-container-init: run by berth-namespaces as a container init only");
    std::process::exit(2);
}
