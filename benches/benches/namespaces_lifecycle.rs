//! Container lifecycle through the berth-namespaces library (no CLI process per container):
//! create + start + wait + delete of a busybox `true` bundle (the `runc spec` config).
//! The side-by-side comparison with runc and crun is benches/scripts/namespaces_lifecycle.sh.
//!
//! Run (as root): `cargo bench -p berth-benches --bench namespaces_lifecycle`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::path::Path;

use berth_namespaces::oci_spec::runtime::Spec;
use berth_namespaces::{CreateOptions, Runtime, Stdio};
use criterion::{Criterion, criterion_group};

fn busybox_bundle(dir: &Path) -> Spec {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("mkdir rootfs");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", bin.join("true")).expect("symlink");
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d)).expect("mkdir");
    }
    let mut spec = berth_namespaces::defaults::spec("rootfs", &["true"], "bench");
    // Same namespaces as `runc spec` (no cgroup namespace), so the peers compare fairly.
    let linux = spec.linux_mut().as_mut().expect("linux");
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    linux.set_namespaces(Some(
        namespaces
            .into_iter()
            .filter(|n| n.typ() != berth_namespaces::oci_spec::runtime::LinuxNamespaceType::Cgroup)
            .collect(),
    ));
    spec
}

fn lifecycle(c: &mut Criterion) {
    if !berth_testutil::require_root("namespaces_lifecycle bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = busybox_bundle(dir.path());
    let runtime = Runtime::new(dir.path().join("state")).with_cgroup_parent("berth-bench");
    let mut group = c.benchmark_group("namespaces_lifecycle");
    group.sample_size(50);
    group.bench_function("create_start_wait_delete_true", |b| {
        b.iter(|| {
            let options = CreateOptions {
                stdio: Stdio::Null,
                ..Default::default()
            };
            let mut container = runtime
                .create_from_spec("bench", dir.path(), spec.clone(), options)
                .expect("create");
            container.start().expect("start");
            let status = container.wait().expect("wait");
            assert_eq!(status.code(), 0);
            container.delete(false).expect("delete");
        })
    });
    group.finish();
    use berth_cgroups::CgroupManager;
    if let Ok(parent) =
        berth_cgroups::manager(Path::new("/sys/fs/cgroup"), Path::new("berth-bench"))
    {
        let _ = parent.delete();
    }
}

criterion_group!(benches, lifecycle);

fn main() {
    // The bench binary is also the container init it re-executes.
    berth_namespaces::init::main_if_init();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
