//! `berth`: the reference binary wiring every Berth crate together.

fn main() {}
