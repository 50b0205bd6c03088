#!/bin/sh
# Layer apply throughput: berth-unionfs vs umoci on the same OCI image layout, in one run.
#
#   sudo benches/scripts/unionfs_apply.sh            # defaults: 8000 small files + 3 x 24 MiB
#   UNIONFS_BENCH_SMALL=20000 UNIONFS_BENCH_LARGE_MIB=64 UNIONFS_BENCH_ROUNDS=5 benches/scripts/unionfs_apply.sh
#
# The benchmark (benches/benches/unionfs_apply.rs) generates one uncompressed layer, writes an
# OCI layout around it, and alternates `umoci unpack`, `umoci raw unpack` and
# berth_unionfs::layer::apply (with SHA-256 verification of the blob), with sync and a page-cache
# drop before each run. It prints the median MB/s of each and how many times faster berth is.
# Needs root and umoci (apt: umoci).
set -eu
cd "$(dirname "$0")/../.."
command -v umoci >/dev/null || { echo "umoci not found (apt install umoci)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (umoci unpack, drop_caches)" >&2; exit 1; }
exec cargo bench -p berth-benches --bench unionfs_apply
