# Shared by scripts/demo.sh, scripts/test.sh and .ci/run (sourced, not run): the Debian packages
# Berth needs, and a function that installs the missing ones.

# What building Berth needs: a C toolchain for the -sys crates, libseccomp (linked by
# berth-namespaces), protoc (etcd-client's build script), pkg-config.
BERTH_BUILD_PACKAGES=(gcc libc6-dev pkg-config libseccomp-dev protobuf-compiler)
# What the demo runs besides berth: a static busybox as the base image, curl and python3 for its glue.
BERTH_DEMO_PACKAGES=(busybox-static curl python3 util-linux)
# The peers the interoperability tests and benchmarks compare with (see README, "Tests").
# nftables: the proxy tests inspect the kernel rules with `nft list` (berth-proxy itself never runs it).
BERTH_PEER_PACKAGES=(runc crun skopeo umoci docker-registry buildah etcd-server iproute2 hyperfine nftables)

# ensure_packages PKG...: installs the listed packages that are missing (needs root and apt).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "berth: missing packages: ${missing[*]} (run as root on Debian/Ubuntu to install them)" >&2
    return 1
  fi
  echo "berth: installing ${missing[*]} from apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's packages start services on fixed ports (docker-registry :5000, etcd :2379) where an
  # init system runs; the tests start their own instances on free ports.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl stop docker-registry etcd 2>/dev/null || true
  fi
}
