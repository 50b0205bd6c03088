//! Layer apply/diff semantics: whiteouts, opaque directories, replacements, hard links,
//! reproducible output, and the apply → diff round trip over generated trees (proptest).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use berth_unionfs::layer::{self, ApplyOptions, DiffOptions, DiffSource, WhiteoutMode};
use common::{Layer, entries, tree};
use proptest::prelude::*;

fn apply(tar: &[u8], root: &Path) -> berth_unionfs::ApplyStats {
    layer::apply(tar, root, &ApplyOptions::default()).expect("apply")
}

fn diff(source: DiffSource<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    layer::diff(source, &mut out, &DiffOptions::new()).expect("diff");
    out
}

#[test]
fn whiteouts_and_opaque_dirs_remove_lower_content() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = Layer::new()
        .dir("etc/")
        .file("etc/passwd", b"root")
        .file("etc/group", b"root")
        .dir("var/")
        .dir("var/cache/")
        .file("var/cache/a", b"a")
        .dir("var/cache/sub/")
        .file("var/cache/sub/b", b"b")
        .finish();
    apply(&base, root);
    let top = Layer::new()
        .file("etc/.wh.group", b"")
        .dir("var/cache/")
        .file("var/cache/new", b"new")
        .file("var/cache/.wh..wh..opq", b"")
        .file("etc/.wh.missing", b"")
        .finish();
    let stats = apply(&top, root);
    assert_eq!(stats.whiteouts, 3);
    assert!(root.join("etc/passwd").exists());
    assert!(!root.join("etc/group").exists());
    assert!(!root.join(".wh.group").exists() && !root.join("etc/.wh.group").exists());
    let cache: Vec<_> = fs::read_dir(root.join("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        cache,
        vec!["new"],
        "opaque dir keeps only this layer's entries"
    );
}

#[test]
fn whiteout_does_not_hide_an_entry_of_the_same_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new().file("x", b"mine").file(".wh.x", b"").finish();
    apply(&layer, tmp.path());
    assert_eq!(fs::read(tmp.path().join("x")).unwrap(), b"mine");
}

#[test]
fn replacing_breaks_hard_links_and_swaps_types() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = Layer::new()
        .file("a", b"shared")
        .hardlink("b", "a")
        .dir("d/")
        .file("d/x", b"x")
        .file("f", b"file")
        .finish();
    apply(&base, root);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(root.join("a")).unwrap().ino(),
        fs::metadata(root.join("b")).unwrap().ino()
    );
    let top = Layer::new()
        .file("b", b"replaced")
        .file("d", b"was a dir")
        .dir("f/")
        .file("f/inside", b"in")
        .finish();
    apply(&top, root);
    assert_eq!(
        fs::read(root.join("a")).unwrap(),
        b"shared",
        "writing b must not change a"
    );
    assert_eq!(fs::read(root.join("b")).unwrap(), b"replaced");
    assert_eq!(fs::read(root.join("d")).unwrap(), b"was a dir");
    assert_eq!(fs::read(root.join("f/inside")).unwrap(), b"in");
}

#[test]
fn metadata_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layer = Layer::new()
        .dir("bin/")
        .file_mode("bin/tool", b"#!/bin/sh\n", 0o4755)
        .symlink("bin/sh", "/bin/busybox")
        .finish();
    apply(&layer, root);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
}

#[test]
fn devices_are_skipped_when_not_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .char_device("null", 1, 3)
        .file("ok", b"")
        .finish();
    let opts = ApplyOptions::default().with_devices(false);
    let stats = layer::apply(&layer[..], tmp.path(), &opts).unwrap();
    assert_eq!(stats.skipped, 1);
    assert!(!tmp.path().join("null").exists());
    assert!(tmp.path().join("ok").exists());
}

#[test]
fn devices_are_created_as_root() {
    if !berth_testutil::require_root("creates device nodes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new().char_device("null", 1, 3).finish();
    apply(&layer, tmp.path());
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = fs::symlink_metadata(tmp.path().join("null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), nix::sys::stat::makedev(1, 3));
}

#[test]
fn diff_is_reproducible_and_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .file("z", b"z")
        .dir("a/")
        .file("a/b", b"b")
        .hardlink("a/c", "a/b")
        .symlink("m", "a/b")
        .finish();
    apply(&layer, tmp.path());
    let one = diff(DiffSource::Trees {
        lower: None,
        upper: tmp.path(),
    });
    let two = diff(DiffSource::Trees {
        lower: None,
        upper: tmp.path(),
    });
    assert_eq!(one, two);
    let listed: Vec<(String, char, String)> = entries(&one)
        .into_iter()
        .map(|(p, k, l, _)| (p, k, l))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a/".to_string(), '5', String::new()),
            ("a/b".to_string(), '0', String::new()),
            ("a/c".to_string(), '1', "a/b".to_string()),
            ("m".to_string(), '2', "a/b".to_string()),
            ("z".to_string(), '0', String::new()),
        ]
    );
}

#[test]
fn diff_of_trees_writes_whiteouts_for_deletions() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    let base = Layer::new()
        .file("keep", b"k")
        .file("gone", b"g")
        .dir("d/")
        .file("d/x", b"x")
        .finish();
    apply(&base, lower.path());
    apply(&base, upper.path());
    fs::remove_file(upper.path().join("gone")).unwrap();
    fs::remove_dir_all(upper.path().join("d")).unwrap();
    fs::write(upper.path().join("new"), b"n").unwrap();
    let out = diff(DiffSource::Trees {
        lower: Some(lower.path()),
        upper: upper.path(),
    });
    let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
    assert_eq!(names, vec![".wh.d", ".wh.gone", "new"]);
}

#[test]
fn overlay_upper_round_trip() {
    if !berth_testutil::require_root("writes overlay whiteouts (0/0 char devices, trusted xattrs)")
    {
        return;
    }
    let upper = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .file(".wh.gone", b"")
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .finish();
    let opts = ApplyOptions::default().with_whiteouts(WhiteoutMode::Overlay);
    layer::apply(&layer[..], upper.path(), &opts).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = fs::symlink_metadata(upper.path().join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(upper.path().join("d"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    let out = diff(DiffSource::OverlayUpper(upper.path()));
    let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
    // Whiteouts take the place of the name they delete in the sorted order.
    assert_eq!(names, vec!["d/", "d/.wh..wh..opq", "d/new", ".wh.gone"]);
}

// ---- property: apply → diff → apply gives back the same tree and the same bytes ----

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Symlink(String),
    /// Index into the list of files generated before it.
    Hardlink(usize),
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "dd", "e.txt", "long-name-with-dashes"])
        .prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(name(), 1..4)
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => (prop::collection::vec(any::<u8>(), 0..64), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o400])).prop_map(|(c, m)| Node::File(c, m)),
        1 => prop::sample::select(vec!["a", "/b/c", "../x", "dd/e.txt"]).prop_map(|t| Node::Symlink(t.to_owned())),
        1 => (0usize..8).prop_map(Node::Hardlink),
    ]
}

/// A consistent tree: leaves never sit below another leaf.
fn model() -> impl Strategy<Value = BTreeMap<String, Node>> {
    prop::collection::vec((path(), node()), 1..20).prop_map(|items| {
        let mut leaves: BTreeMap<String, Node> = BTreeMap::new();
        let mut dirs = std::collections::BTreeSet::new();
        let mut files: Vec<String> = Vec::new();
        for (parts, node) in items {
            let p = parts.join("/");
            let prefixes: Vec<String> = (1..parts.len()).map(|i| parts[..i].join("/")).collect();
            if leaves.contains_key(&p)
                || dirs.contains(&p)
                || prefixes.iter().any(|d| leaves.contains_key(d))
            {
                continue;
            }
            let node = match node {
                Node::Hardlink(i) if files.is_empty() => Node::File(vec![i as u8], 0o644),
                Node::Hardlink(i) => Node::Hardlink(i % files.len()),
                other => other,
            };
            if matches!(node, Node::File(..)) {
                files.push(p.clone());
            }
            dirs.extend(prefixes);
            let node = match node {
                Node::Hardlink(i) => {
                    let target = &files[i];
                    if target == &p {
                        continue;
                    }
                    leaves.insert(p, Node::Symlink(format!("HARDLINK:{target}")));
                    continue;
                }
                other => other,
            };
            leaves.insert(p, node);
        }
        leaves
    })
}

fn tar_of(model: &BTreeMap<String, Node>) -> Vec<u8> {
    let mut layer = Layer::new();
    // Hard links after the files they name.
    let (links, others): (Vec<_>, Vec<_>) = model
        .iter()
        .partition(|(_, n)| matches!(n, Node::Symlink(t) if t.starts_with("HARDLINK:")));
    for (p, node) in others.into_iter().chain(links) {
        layer = match node {
            Node::File(content, mode) => layer.file_mode(p, content, *mode),
            Node::Symlink(t) => match t.strip_prefix("HARDLINK:") {
                Some(target) => layer.hardlink(p, target),
                None => layer.symlink(p, t),
            },
            Node::Hardlink(_) => unreachable!("resolved in model()"),
        };
    }
    layer.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn apply_then_diff_round_trips(model in model()) {
        let tar = tar_of(&model);
        let a = tempfile::tempdir().unwrap();
        apply(&tar, a.path());
        let first = diff(DiffSource::Trees { lower: None, upper: a.path() });
        let b = tempfile::tempdir().unwrap();
        apply(&first, b.path());
        let second = diff(DiffSource::Trees { lower: None, upper: b.path() });
        prop_assert_eq!(&first, &second, "diff bytes differ after a round trip");
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        prop_assert_eq!(ta, tb);
        // Every generated file, symlink and hard link is in the changeset.
        let listed: std::collections::BTreeSet<String> = entries(&first).into_iter().map(|e| e.0).collect();
        for p in model.keys() {
            prop_assert!(listed.contains(p), "{} missing from the diff", p);
        }
    }

    #[test]
    fn diff_of_changes_reproduces_them(base in model(), top in model(), deletions in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
        // lower = base; upper = base + top + some deletions; diff(lower, upper) applied on base
        // must give upper.
        let base_tar = tar_of(&base);
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        apply(&base_tar, lower.path());
        apply(&base_tar, upper.path());
        let mut layer = Layer::new();
        let base_paths: Vec<&String> = base.keys().collect();
        for idx in &deletions {
            let victim = idx.get(&base_paths);
            let (parent, file) = match victim.rsplit_once('/') {
                Some((d, f)) => (format!("{d}/"), f.to_owned()),
                None => (String::new(), victim.to_string()),
            };
            layer = layer.file(&format!("{parent}.wh.{file}"), b"");
        }
        let top_tar = {
            let mut bytes = layer.finish();
            bytes.truncate(bytes.len() - 1024);
            bytes.extend(tar_of(&top));
            bytes
        };
        // A top entry may need a parent that base has as a file: that's a valid replacement,
        // but hard links into replaced paths may fail. Such a case is rejected (not passed):
        // proptest fails the test if too many are, so a broken `apply` cannot pass it.
        let applied = layer::apply(&top_tar[..], upper.path(), &ApplyOptions::default());
        prop_assume!(applied.is_ok(), "apply of the top layer failed: {:?}", applied.err());
        let changes = diff(DiffSource::Trees { lower: Some(lower.path()), upper: upper.path() });
        let check = tempfile::tempdir().unwrap();
        apply(&base_tar, check.path());
        apply(&changes, check.path());
        prop_assert_eq!(tree(check.path()), tree(upper.path()));
    }
}
