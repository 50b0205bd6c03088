//! Shared helpers for Berth's benchmarks (fixtures, peer discovery).
//!
//! Each file under `benches/benches/` is one subsystem's criterion benchmark; side-by-side
//! comparisons with peers (runc, crun, umoci, buildah, docker-registry) are scripts under
//! `benches/scripts/`. BENCHMARKS.md at the root records the figures.

/// Deterministic pseudo-random bytes for fixtures (xorshift; same seed, same bytes).
pub fn fixture_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
