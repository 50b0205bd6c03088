//! A hostile layer corpus: every archive here tries to write, link or delete outside the root.
//! The root is a tempdir whose sibling holds a canary file; after each archive the canary must
//! be untouched and nothing new may appear next to the root.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use berth_unionfs::layer::{self, ApplyOptions, WhiteoutMode};
use common::Layer;

const CANARY: &[u8] = b"canary: untouched";

struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let root = base.join("root");
        fs::create_dir(&root).unwrap();
        fs::write(base.join("canary"), CANARY).unwrap();
        Sandbox {
            _tmp: tmp,
            base,
            root,
        }
    }

    fn apply(
        &self,
        tar: &[u8],
        mode: WhiteoutMode,
    ) -> berth_unionfs::Result<berth_unionfs::ApplyStats> {
        layer::apply(
            tar,
            &self.root,
            &ApplyOptions::default().with_whiteouts(mode),
        )
    }

    fn assert_host_untouched(&self) {
        assert_eq!(
            fs::read(self.base.join("canary")).unwrap(),
            CANARY,
            "canary changed"
        );
        let mut siblings: Vec<String> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        siblings.sort();
        assert_eq!(
            siblings,
            vec!["canary", "root"],
            "something was created outside the root"
        );
    }
}

/// Each hostile archive, with a name.
fn corpus(base: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let abs_canary = base.join("canary").to_string_lossy().into_owned();
    let abs_base = base.to_string_lossy().into_owned();
    vec![
        (
            "dotdot path",
            Layer::new().file("../canary", b"pwned").finish(),
        ),
        (
            "deep dotdot path",
            Layer::new()
                .file("a/../../../../../canary", b"pwned")
                .finish(),
        ),
        (
            "absolute path",
            Layer::new().file(&abs_canary, b"pwned").finish(),
        ),
        (
            "absolute symlink then write through it",
            Layer::new()
                .symlink("evil", &abs_base)
                .file("evil/canary", b"pwned")
                .finish(),
        ),
        (
            "root symlink then write through it",
            Layer::new()
                .symlink("evil", "/")
                .file("evil/../canary", b"pwned")
                .finish(),
        ),
        (
            "relative symlink escaping then write through it",
            Layer::new()
                .symlink("up", "../../..")
                .file("up/canary", b"pwned")
                .file("up/new", b"x")
                .finish(),
        ),
        (
            "symlink to the canary then overwrite the symlink",
            Layer::new()
                .symlink("c", &abs_canary)
                .file("c", b"pwned")
                .symlink("d", "../canary")
                .file("d", b"pwned")
                .finish(),
        ),
        (
            "symlink chain to a directory outside, then mkdir below",
            Layer::new()
                .symlink("s1", "s2")
                .symlink("s2", "../")
                .dir("s1/made/")
                .file("s1/made/f", b"x")
                .finish(),
        ),
        (
            "symlink named dot",
            Layer::new()
                .symlink(".", &abs_base)
                .file("canary", b"inside")
                .finish(),
        ),
        (
            "symlink named slash",
            Layer::new()
                .symlink("/", &abs_base)
                .file("canary", b"inside")
                .finish(),
        ),
        (
            "hard link to /etc/shadow",
            Layer::new().hardlink("shadow", "/etc/shadow").finish(),
        ),
        (
            "hard link escaping with dotdot",
            Layer::new().hardlink("c", "../canary").finish(),
        ),
        (
            "hard link through an absolute symlink",
            Layer::new()
                .symlink("out", &abs_base)
                .hardlink("c", "out/canary")
                .finish(),
        ),
        (
            "hard link to a symlink pointing outside, then write",
            Layer::new()
                .symlink("s", &abs_canary)
                .hardlink("h", "s")
                .file("h", b"pwned")
                .finish(),
        ),
        (
            "file replaced by a dir and back",
            Layer::new()
                .file("x", b"1")
                .dir("x/")
                .file("x/y", b"2")
                .file("x", b"3")
                .symlink("x", "..")
                .file("x/canary", b"pwned")
                .finish(),
        ),
        (
            "whiteout escaping with dotdot",
            Layer::new().file("../.wh.canary", b"").finish(),
        ),
        (
            "whiteout through a symlink",
            Layer::new()
                .symlink("out", &abs_base)
                .file("out/.wh.canary", b"")
                .finish(),
        ),
        (
            "opaque marker through a symlink",
            Layer::new()
                .symlink("out", "/..")
                .file("out/.wh..wh..opq", b"")
                .finish(),
        ),
        (
            "whiteout of dotdot",
            Layer::new().file("a/.wh..", b"").finish(),
        ),
        ("root entry", Layer::new().dir("./").dir("/").finish()),
    ]
}

#[test]
fn hostile_layers_stay_inside_the_root() {
    let mut modes = vec![WhiteoutMode::Remove];
    if nix::unistd::geteuid().is_root() {
        modes.push(WhiteoutMode::Overlay);
    }
    for mode in modes {
        let names: Vec<&str> = corpus(Path::new("/x"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for name in names {
            let sandbox = Sandbox::new();
            let (_, tar) = corpus(&sandbox.base)
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap();
            let result = sandbox.apply(&tar, mode);
            sandbox.assert_host_untouched();
            eprintln!(
                "{name} ({mode:?}): {}",
                match &result {
                    Ok(_) => "applied inside the root".to_string(),
                    Err(e) => format!("refused: {e}"),
                }
            );
        }
    }
}

#[test]
fn hostile_hard_links_are_refused() {
    for (tar, why) in [
        (
            Layer::new().hardlink("shadow", "/etc/shadow").finish(),
            "link to a host file",
        ),
        (
            Layer::new().hardlink("c", "../canary").finish(),
            "link escaping with ..",
        ),
        (
            Layer::new().dir("d/").hardlink("l", "d").finish(),
            "link to a directory",
        ),
    ] {
        let sandbox = Sandbox::new();
        let err = sandbox.apply(&tar, WhiteoutMode::Remove).expect_err(why);
        assert!(
            matches!(err, berth_unionfs::Error::UnsafeEntry { .. }),
            "{why}: {err}"
        );
        sandbox.assert_host_untouched();
    }
}

#[test]
fn writes_through_symlinks_land_inside_the_root() {
    let sandbox = Sandbox::new();
    let abs_base = sandbox.base.to_string_lossy().into_owned();
    let tar = Layer::new()
        .symlink("evil", &abs_base)
        .file("evil/canary", b"inside")
        .symlink("up", "../../..")
        .file("up/other", b"inside too")
        .finish();
    sandbox.apply(&tar, WhiteoutMode::Remove).unwrap();
    sandbox.assert_host_untouched();
    // The absolute symlink resolved relative to the root: <root><base>/canary.
    let inside = sandbox
        .root
        .join(abs_base.trim_start_matches('/'))
        .join("canary");
    assert_eq!(fs::read(inside).unwrap(), b"inside");
    assert_eq!(fs::read(sandbox.root.join("other")).unwrap(), b"inside too");
}

#[test]
fn truncated_archive_is_an_error() {
    let sandbox = Sandbox::new();
    let mut tar = Layer::new().file("big", &[7u8; 5000]).finish();
    tar.truncate(2048);
    let err = sandbox
        .apply(&tar, WhiteoutMode::Remove)
        .expect_err("truncated");
    assert!(matches!(err, berth_unionfs::Error::Archive { .. }), "{err}");
    sandbox.assert_host_untouched();
}

#[test]
fn copying_a_directory_resolves_symlinks_inside_the_root() {
    let sandbox = Sandbox::new();
    let root = &sandbox.root;
    fs::create_dir_all(root.join("real/sub")).unwrap();
    fs::write(root.join("real/sub/f"), "inside").unwrap();
    // An absolute and a climbing symlink to the root's own `/real`, and one to the host's `/`.
    std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../real", root.join("climb")).unwrap();
    std::os::unix::fs::symlink("..", root.join("up")).unwrap();
    for (rel, copy) in [("/abs", "a"), ("climb", "b")] {
        let dst = sandbox.base.join(copy);
        assert!(berth_unionfs::copy_dir_in_root(root, Path::new(rel), &dst).unwrap());
        assert_eq!(fs::read_to_string(dst.join("sub/f")).unwrap(), "inside");
    }
    // `/up` is the root itself: its copy holds the root's entries, never the canary beside it.
    let dst = sandbox.base.join("c");
    assert!(berth_unionfs::copy_dir_in_root(root, Path::new("/up"), &dst).unwrap());
    assert!(dst.join("real/sub/f").exists() && !dst.join("canary").exists());
    // A missing path gives an empty directory.
    let dst = sandbox.base.join("d");
    assert!(!berth_unionfs::copy_dir_in_root(root, Path::new("/nope/x"), &dst).unwrap());
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
}
