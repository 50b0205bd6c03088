# Sourced by the side-by-side scripts that run crun (not run on its own). crun 1.8.1 refuses this
# host's hybrid cgroup layout while cgroup2 lists hugetlb (shared/TRAPS.md), so these scripts lend
# hugetlb to a v1 hierarchy for the run and give it back afterwards.

HUGETLB_V1=/sys/fs/cgroup/hugetlb
MOUNTED_HUGETLB=

# Mounts hugetlb as a v1 hierarchy when cgroup2 holds it.
borrow_hugetlb() {
    if ! mountpoint -q "$HUGETLB_V1" 2>/dev/null &&
        grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; then
        mkdir -p "$HUGETLB_V1" && mount -t cgroup -o hugetlb cgroup "$HUGETLB_V1" && MOUNTED_HUGETLB=1
    fi
}

# Unmounts it again. The kernel destroys a v1 hierarchy at unmount only when it has no cgroups
# left, dying ones included; otherwise the hierarchy outlives the mount and keeps hugetlb away
# from cgroup2 until the next boot (and the hugepage tests fail). So remove what the runtimes
# left, wait for the groups to be freed, then unmount.
return_hugetlb() {
    [ "$MOUNTED_HUGETLB" = 1 ] || return 0
    find "$HUGETLB_V1" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null || true
    for _ in $(seq 100); do
        awk '$1 == "hugetlb" && $3 == 1 { free = 1 } END { exit !free }' /proc/cgroups && break
        sleep 0.1
    done
    umount "$HUGETLB_V1" && rmdir "$HUGETLB_V1"
    MOUNTED_HUGETLB=
    # The hierarchy is freed asynchronously after the unmount; hand hugetlb back before returning.
    for _ in $(seq 100); do
        awk '$1 == "hugetlb" && $2 == 0 { back = 1 } END { exit !back }' /proc/cgroups && return 0
        sleep 0.1
    done
    echo "warning: hugetlb is still bound to a v1 hierarchy; cgroup2 gets it back once that is freed" >&2
}
