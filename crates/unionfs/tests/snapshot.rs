//! Snapshotter behaviour for both backends: lifecycle and errors, metadata surviving a reopen,
//! layer unpacking and diffing, and (as root) real overlay and bind mounts: whiteouts hide lower
//! content, two containers of one image are independent, long layer chains mount.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use berth_unionfs::{
    ApplyOptions, Backend, CopySnapshotter, DiffOptions, Error, MountGuard, OverlaySnapshotter,
    SnapshotKind, Snapshotter,
};
use common::{Layer, entries};

fn open(backend: Backend, root: &Path) -> Box<dyn Snapshotter> {
    match backend {
        Backend::Overlay => Box::new(OverlaySnapshotter::new(root).unwrap()),
        _ => Box::new(CopySnapshotter::new(root).unwrap()),
    }
}

/// Backends whose whole API can run here: copy always, overlay when root (whiteout devices).
fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Copy];
    if nix::unistd::geteuid().is_root() {
        b.push(Backend::Overlay);
    }
    b
}

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc/")
        .file("etc/hostname", b"base")
        .file("etc/motd", b"hello")
        .dir("app/")
        .file("app/old", b"old")
        .dir("app/sub/")
        .file("app/sub/deep", b"deep")
        .finish()
}

fn top_layer() -> Vec<u8> {
    Layer::new()
        .file("etc/.wh.motd", b"")
        .dir("app/")
        .file("app/.wh..wh..opq", b"")
        .file("app/new", b"new")
        .finish()
}

/// The layer's own directory (fs) of a committed snapshot, found through the metadata log
/// (`<checksum> <json>` lines: a header, then lists of `put`/`del` operations).
fn layer_dir(root: &Path, key: &str) -> PathBuf {
    let log = fs::read_to_string(root.join("metadata.log")).unwrap();
    let mut id = None;
    for line in log.lines().skip(1) {
        let ops: Vec<serde_json::Value> = serde_json::from_str(&line[17..]).unwrap();
        for op in ops {
            if op["put"]["key"] == key {
                id = op["put"]["record"]["id"].as_u64();
            } else if op["del"]["key"] == key {
                id = None;
            }
        }
    }
    root.join("snapshots")
        .join(id.unwrap().to_string())
        .join("fs")
}

#[test]
fn lifecycle_and_errors() {
    for backend in [Backend::Copy, Backend::Overlay] {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(backend, tmp.path());
        assert_eq!(s.backend(), backend);
        s.prepare("l1-active", None).unwrap();
        assert!(matches!(
            s.prepare("l1-active", None),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(
            matches!(
                s.prepare("x", Some("l1-active")),
                Err(Error::WrongKind { .. })
            ),
            "parent must be committed"
        );
        assert!(matches!(
            s.prepare("x", Some("nope")),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(s.prepare("", None), Err(Error::InvalidKey { .. })));
        s.commit("l1", "l1-active").unwrap();
        assert!(matches!(s.stat("l1-active"), Err(Error::NotFound { .. })));
        assert!(matches!(s.mounts("l1"), Err(Error::WrongKind { .. })));
        s.prepare("c1", Some("l1")).unwrap();
        s.view("v1", Some("l1")).unwrap();
        assert!(matches!(s.commit("v2", "v1"), Err(Error::WrongKind { .. })));
        assert!(matches!(s.remove("l1"), Err(Error::HasChildren { .. })));
        let info = s.stat("c1").unwrap();
        assert_eq!(
            (info.kind, info.parent.as_deref()),
            (SnapshotKind::Active, Some("l1"))
        );
        let names: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, vec!["c1", "l1", "v1"]);
        drop(s);

        // Metadata survives a restart; the other backend refuses the root.
        let s = open(backend, tmp.path());
        assert_eq!(s.stat("l1").unwrap().kind, SnapshotKind::Committed);
        assert_eq!(Backend::detect(tmp.path()), backend);
        let other = match backend {
            Backend::Copy => OverlaySnapshotter::new(tmp.path()).err(),
            _ => CopySnapshotter::new(tmp.path()).err(),
        };
        assert!(matches!(other, Some(Error::InvalidRoot { .. })));
        s.remove("c1").unwrap();
        s.remove("v1").unwrap();
        s.remove("l1").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(tmp.path().join("snapshots")).unwrap().count(),
            0,
            "directories removed"
        );
    }
}

#[test]
fn orphaned_directories_are_collected_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    drop(CopySnapshotter::new(tmp.path()).unwrap());
    fs::create_dir_all(tmp.path().join("snapshots/999/fs/junk")).unwrap();
    let s = CopySnapshotter::new(tmp.path()).unwrap();
    assert!(!tmp.path().join("snapshots/999").exists());
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn unpack_diff_and_usage() {
    for backend in backends() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(backend, tmp.path());
        let opts = ApplyOptions::default();
        s.unpack_layer("base", None, &mut &base_layer()[..], &opts)
            .unwrap();
        s.unpack_layer("top", Some("base"), &mut &top_layer()[..], &opts)
            .unwrap();
        assert!(matches!(
            s.unpack_layer("top", Some("base"), &mut &top_layer()[..], &opts),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(s.usage("base").unwrap().inodes >= 6);

        // The committed top layer diffs back to the same changeset.
        let mut out = Vec::new();
        s.diff("top", &mut out, &DiffOptions::new()).unwrap();
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        match backend {
            // The overlay upper holds exactly the layer.
            Backend::Overlay => assert_eq!(
                names,
                vec!["app/", "app/.wh..wh..opq", "app/new", "etc/", ".wh.motd"]
                    .into_iter()
                    .map(|n| if n == ".wh.motd" {
                        "etc/.wh.motd".to_string()
                    } else {
                        n.to_string()
                    })
                    .collect::<Vec<_>>()
            ),
            // Tree comparison lists per-file deletions instead of an opaque marker.
            _ => {
                for expected in ["app/new", "app/.wh.old", "app/.wh.sub", "etc/.wh.motd"] {
                    assert!(
                        names.contains(&expected.to_string()),
                        "{expected} missing from {names:?}"
                    );
                }
            }
        }
        // Only the temporary keys' snapshots were committed; nothing else is left.
        let names: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, vec!["base", "top"]);
    }
}

#[test]
fn failed_apply_leaves_no_snapshot() {
    for backend in backends() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(backend, tmp.path());
        let hostile = Layer::new()
            .file("ok", b"fine")
            .hardlink("shadow", "/etc/shadow")
            .finish();
        let err = s
            .unpack_layer("bad", None, &mut &hostile[..], &ApplyOptions::default())
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
        assert!(s.list().unwrap().is_empty(), "half-applied layer removed");
        assert_eq!(
            fs::read_dir(tmp.path().join("snapshots")).unwrap().count(),
            0
        );

        s.prepare("active", None).unwrap();
        let mut truncated = base_layer();
        truncated.truncate(1500);
        assert!(
            s.apply_layer("active", &mut &truncated[..], &ApplyOptions::default())
                .is_err()
        );
        assert!(matches!(s.stat("active"), Err(Error::NotFound { .. })));
    }
}

/// A mount point that is unmounted even when the test fails.
struct MountPoint {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl MountPoint {
    fn new() -> MountPoint {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("rootfs");
        fs::create_dir(&path).unwrap();
        MountPoint { _tmp: tmp, path }
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        let _ = berth_unionfs::unmount(&self.path);
    }
}

#[test]
fn mounted_view_hides_whited_out_content_and_containers_are_independent() {
    if !berth_testutil::require_root("mounts overlay and bind snapshots")
        || !berth_testutil::require_filesystem("mounts overlay snapshots", "overlay")
    {
        return;
    }
    for backend in [Backend::Overlay, Backend::Copy] {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(backend, tmp.path());
        let opts = ApplyOptions::default();
        s.unpack_layer("base", None, &mut &base_layer()[..], &opts)
            .unwrap();
        s.unpack_layer("top", Some("base"), &mut &top_layer()[..], &opts)
            .unwrap();
        let base_before = common::tree(&layer_dir(tmp.path(), "base"));
        let top_before = common::tree(&layer_dir(tmp.path(), "top"));

        let (m1, m2) = (MountPoint::new(), MountPoint::new());
        let g1 = MountGuard::mount(&s.prepare("c1", Some("top")).unwrap(), &m1.path).unwrap();
        let g2 = MountGuard::mount(&s.prepare("c2", Some("top")).unwrap(), &m2.path).unwrap();
        for m in [&m1, &m2] {
            assert_eq!(fs::read(m.path.join("etc/hostname")).unwrap(), b"base");
            assert!(
                !m.path.join("etc/motd").exists(),
                "{backend}: whiteout hides motd"
            );
            let app: Vec<String> = fs::read_dir(m.path.join("app"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(
                app,
                vec!["new"],
                "{backend}: opaque dir hides lower entries"
            );
        }
        fs::write(m1.path.join("etc/hostname"), b"changed by c1").unwrap();
        fs::remove_file(m1.path.join("app/new")).unwrap();
        fs::write(m1.path.join("created"), b"c1").unwrap();
        assert_eq!(
            fs::read(m2.path.join("etc/hostname")).unwrap(),
            b"base",
            "{backend}: c2 unaffected"
        );
        assert!(m2.path.join("app/new").exists());
        assert!(!m2.path.join("created").exists());

        // A read-only view of the image.
        let m3 = MountPoint::new();
        let g3 = MountGuard::mount(&s.view("v", Some("top")).unwrap(), &m3.path).unwrap();
        assert!(
            fs::write(m3.path.join("x"), b"").is_err(),
            "{backend}: view is read-only"
        );
        g3.unmount().unwrap();

        g1.unmount().unwrap();
        drop(g2);
        // The container's changes as a layer.
        let mut out = Vec::new();
        s.diff("c1", &mut out, &DiffOptions::new()).unwrap();
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        for expected in ["created", "etc/hostname", "app/.wh.new"] {
            assert!(
                names.contains(&expected.to_string()),
                "{backend}: {expected} not in {names:?}"
            );
        }
        // The image layers did not change.
        assert_eq!(common::tree(&layer_dir(tmp.path(), "base")), base_before);
        assert_eq!(common::tree(&layer_dir(tmp.path(), "top")), top_before);
        for key in ["c1", "c2", "v", "top", "base"] {
            s.remove(key).unwrap();
        }
    }
}

#[test]
fn long_layer_chains_mount() {
    if !berth_testutil::require_root("mounts a 40-layer overlay past the page limit")
        || !berth_testutil::require_filesystem(
            "mounts a 40-layer overlay past the page limit",
            "overlay",
        )
    {
        return;
    }
    // A long root path makes the lowerdir string far longer than a page.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(
        "a-long-directory-name-so-that-the-lowerdir-option-string-runs-far-past-one-page-"
            .repeat(3),
    );
    let s = OverlaySnapshotter::new(&root).unwrap();
    let mut parent: Option<String> = None;
    const LAYERS: usize = 40;
    for i in 0..LAYERS {
        let name = format!("layer-{i}");
        let tar = Layer::new()
            .file(&format!("f{i}"), format!("{i}").as_bytes())
            .finish();
        s.unpack_layer(
            &name,
            parent.as_deref(),
            &mut &tar[..],
            &ApplyOptions::default(),
        )
        .unwrap();
        parent = Some(name);
    }
    let mounts = s.prepare("c", parent.as_deref()).unwrap();
    let options_len: usize = mounts[0].options.iter().map(|o| o.len() + 1).sum();
    assert!(
        options_len > 4096,
        "the test must exercise the long-chain path ({options_len} bytes)"
    );
    let m = MountPoint::new();
    let guard = MountGuard::mount(&mounts, &m.path).unwrap();
    for i in [0, LAYERS / 2, LAYERS - 1] {
        assert_eq!(
            fs::read(m.path.join(format!("f{i}"))).unwrap(),
            format!("{i}").as_bytes()
        );
    }
    assert_eq!(fs::read_dir(&m.path).unwrap().count(), LAYERS);
    guard.unmount().unwrap();
    s.remove("c").unwrap();
}

#[test]
fn detect_prefers_overlay_as_root() {
    let tmp = tempfile::tempdir().unwrap();
    let detected = Backend::detect(tmp.path());
    if nix::unistd::geteuid().is_root()
        && fs::read_to_string("/proc/filesystems")
            .unwrap()
            .contains("overlay")
    {
        assert_eq!(detected, Backend::Overlay);
    } else {
        assert_eq!(detected, Backend::Copy);
    }
    let s = berth_unionfs::open(tmp.path()).unwrap();
    assert_eq!(s.backend(), detected);
    assert_eq!(
        fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".probe"))
            .count(),
        0
    );
}
