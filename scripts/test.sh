#!/usr/bin/env bash
# Berth's test command (README, "Getting started"; CI runs it too): installs what the tests need,
# runs `cargo test --workspace` (extra arguments are passed on), and ends with a summary that
# counts a test which could not run (no root, a missing kernel feature or peer) as skipped, never
# as passed. Run it as root: namespaces, mounts and cgroups are tested for real.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh

if [[ $EUID -ne 0 ]]; then
  echo "test: not root: tests that need root will be reported as skipped (run it as root to run them)" >&2
fi
ensure_packages "${BERTH_BUILD_PACKAGES[@]}" "${BERTH_DEMO_PACKAGES[@]}" "${BERTH_PEER_PACKAGES[@]}" ||
  echo "test: going on without them: the tests that need them will be reported as skipped" >&2

# Every berth_testutil::skip appends "<test>\t<why>" here (see crates/testutil).
skip_log=$(mktemp /tmp/berth-skips.XXXXXX)
output=$(mktemp /tmp/berth-test-output.XXXXXX)
trap 'rm -f "$skip_log" "$output"' EXIT
export BERTH_SKIP_LOG="$skip_log"

status=0
cargo test --workspace "$@" 2>&1 | tee "$output" || status=$?

# cargo prints one "test result:" line per test binary; a skipped test is among its "passed".
read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) g += $(i-1)
    }
  } END { print p + 0, f + 0, g + 0 }' "$output")
skipped=$(sort -u "$skip_log" | grep -c . || true)
echo
if ((skipped)); then
  echo "Not run ($skipped): these tests returned early because a precondition was missing:"
  sort -u "$skip_log" | sed 's/^/  /'
fi
((ignored)) && echo "($ignored tests are #[ignore]d by their authors)"
echo "summary: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
