//! `berth-runtime`: a runc-compatible command line over berth-namespaces. (Being built.)

fn main() {
    eprintln!("berth-runtime: not available yet");
    std::process::exit(1);
}
