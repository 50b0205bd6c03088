//! OCI layout import/export: interoperability with skopeo and umoci, and hostile layouts.

use std::path::Path;
use std::process::Command;

use berth_api::Digest;
use berth_image::oci_spec::image::ImageConfiguration;
use berth_image::{BaseImage, Compression, ContentStore, Error, ImageStore, Reference};
use berth_testutil::{require_command, require_path, require_root};
use berth_unionfs::{MountGuard, Snapshotter};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tar_of(entries: &[(&str, &[u8])], whiteouts: &[&str]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, name, *content).unwrap();
    }
    for name in whiteouts {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, name, &[][..]).unwrap();
    }
    tar.into_inner().unwrap()
}

/// A busybox base plus a layer that adds a file and deletes one.
fn two_layer_image(
    store: &ImageStore,
    compression: Compression,
) -> berth_image::oci_spec::image::Descriptor {
    let base = BaseImage::busybox(Path::new("/bin/busybox"))
        .unwrap()
        .commit(store, None)
        .unwrap();
    let base = store.load(&base).unwrap();
    let base_layer = berth_image::Layer {
        descriptor: base.layers()[0].clone(),
        diff_id: base.diff_ids().unwrap()[0].clone(),
    };
    let top = store
        .add_layer(
            &tar_of(&[("etc/hello", b"hello from berth\n")], &["bin/.wh.vi"])[..],
            compression,
        )
        .unwrap();
    store
        .commit_image(base.config.clone(), &[base_layer, top])
        .unwrap()
}

fn store_is_empty(store: &ImageStore) -> bool {
    store.list().unwrap().is_empty()
        && store.content().list().unwrap().is_empty()
        && std::fs::read_dir(store.content().ingest_dir())
            .unwrap()
            .next()
            .is_none()
}

#[test]
fn export_is_read_by_skopeo_and_umoci() {
    if !require_path("export interop", "/bin/busybox")
        || !require_command("export interop", "skopeo")
        || !require_command("export interop", "umoci")
        || !require_root("umoci unpack of an exported image")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("image")).unwrap();
    // umoci 0.4 reads gzip layers only.
    let manifest = two_layer_image(&store, Compression::Gzip);
    let layout = dir.path().join("layout");
    store.export_oci(&manifest, &layout, Some("v1")).unwrap();

    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v1", layout.display())));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2, "{inspect}");
    assert_eq!(inspect["Digest"], manifest.digest().to_string());

    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/hello")).unwrap(),
        "hello from berth\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(!rootfs.join("bin/vi").exists(), "whiteout honoured");

    // Exporting a second image into the same layout keeps the first.
    let other = store
        .commit_image(ImageConfiguration::default(), &[])
        .unwrap();
    store.export_oci(&other, &layout, Some("empty")).unwrap();
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v1", layout.display())));
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:empty", layout.display())));
}

/// Removes every snapshot, children first.
fn remove_all(snapshotter: &dyn Snapshotter) {
    for _ in 0..16 {
        let left = snapshotter.list().unwrap();
        if left.is_empty() {
            return;
        }
        for info in left {
            let _ = snapshotter.remove(&info.name);
        }
    }
    panic!("snapshots left: {:?}", snapshotter.list().unwrap());
}

/// Mounts a read-only view of `parent` and runs `check` on it.
fn with_view(snapshotter: &dyn Snapshotter, parent: &str, check: impl FnOnce(&Path)) {
    let key = berth_testutil::unique_name("view");
    let mounts = snapshotter.view(&key, Some(parent)).unwrap();
    let target = tempfile::tempdir().unwrap();
    {
        let guard = MountGuard::mount(&mounts, target.path()).unwrap();
        check(target.path());
        guard.unmount().unwrap();
    }
    snapshotter.remove(&key).unwrap();
}

#[test]
fn umoci_and_skopeo_layouts_import_and_unpack() {
    if !require_command("umoci import", "skopeo")
        || !require_command("umoci import", "umoci")
        || !require_root("umoci repack and snapshot mounts")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("umoci");
    let layout_s = layout.display().to_string();
    run(Command::new("umoci").args(["init", "--layout", &layout_s]));
    run(Command::new("umoci").args(["new", "--image", &format!("{layout_s}:t")]));
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{layout_s}:t")])
        .arg(&bundle));
    std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
    std::fs::write(bundle.join("rootfs/etc/made-by"), "umoci\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &format!("{layout_s}:t")])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{layout_s}:t"),
        "--config.cmd",
        "/bin/true",
    ]));
    // skopeo rewrites it into a second layout.
    let copied = dir.path().join("skopeo");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{layout_s}:t"),
        &format!("oci:{}:copied", copied.display()),
    ]));

    let store = ImageStore::open(dir.path().join("image")).unwrap();
    let snapshotter = berth_unionfs::open(dir.path().join("snapshots")).unwrap();
    for (source, reference) in [(&layout, "t"), (&copied, "copied")] {
        let name = Reference::parse(&format!("imported/{reference}")).unwrap();
        store.import_oci(source, Some(reference), &name).unwrap();
        let image = store.image(&name).unwrap();
        let cmd = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.cmd().clone())
            .unwrap_or_default();
        assert!(cmd.iter().any(|c| c == "/bin/true"), "{cmd:?}");
        let unpacked = store.unpack(&image, snapshotter.as_ref()).unwrap();
        let top = unpacked.top().unwrap().to_owned();
        with_view(snapshotter.as_ref(), &top, |root| {
            assert_eq!(
                std::fs::read_to_string(root.join("etc/made-by")).unwrap(),
                "umoci\n"
            );
        });
    }
    // Both layouts hold the same layers: the second unpack reused the first's snapshots.
    let second = store
        .unpack(
            &store
                .image(&Reference::parse("imported/copied").unwrap())
                .unwrap(),
            snapshotter.as_ref(),
        )
        .unwrap();
    assert!(second.layers.iter().all(|l| !l.applied));
    remove_all(snapshotter.as_ref());
}

#[test]
fn unpack_builds_a_shared_snapshot_chain() {
    if !require_path("unpack", "/bin/busybox") || !require_root("snapshot mounts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("image")).unwrap();
    let snapshotter = berth_unionfs::open(dir.path().join("snapshots")).unwrap();
    let manifest = two_layer_image(&store, Compression::Zstd);
    let image = store.load(&manifest).unwrap();
    let unpacked = store.unpack(&image, snapshotter.as_ref()).unwrap();
    assert_eq!(unpacked.layers.len(), 2);
    assert!(unpacked.layers.iter().all(|l| l.applied));
    let chain = berth_image::chain_ids(&image.diff_ids().unwrap());
    assert_eq!(unpacked.top(), Some(chain[1].to_string().as_str()));
    with_view(snapshotter.as_ref(), unpacked.top().unwrap(), |root| {
        assert!(root.join("etc/hello").is_file());
        assert!(root.join("bin/busybox").is_file());
        assert!(!root.join("bin/vi").exists());
        assert!(
            std::fs::symlink_metadata(root.join("bin/sh"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    });
    let again = store.unpack(&image, snapshotter.as_ref()).unwrap();
    assert!(again.layers.iter().all(|l| !l.applied));
    assert_eq!(snapshotter.list().unwrap().len(), 2);

    // A layer whose content does not match the config's diff id leaves no snapshot.
    let mut bad = image.clone();
    let mut rootfs = bad.config.rootfs().clone();
    let mut ids = rootfs.diff_ids().clone();
    ids[1] = Digest::sha256(b"not the layer").to_string();
    rootfs.set_diff_ids(ids);
    bad.config.set_rootfs(rootfs);
    let err = store.unpack(&bad, snapshotter.as_ref()).unwrap_err();
    assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    assert_eq!(
        snapshotter.list().unwrap().len(),
        2,
        "no partial snapshot left"
    );
    remove_all(snapshotter.as_ref());
}

/// A hand-made layout with one image whose parts the caller can spoil.
struct HandLayout {
    dir: tempfile::TempDir,
}

impl HandLayout {
    fn blob(&self, data: &[u8]) -> (Digest, usize) {
        let d = Digest::sha256(data);
        let dir = self.dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(d.hex()), data).unwrap();
        (d, data.len())
    }

    fn new(layer_media_type: &str, diff_ids: usize, manifest_override: Option<&[u8]>) -> Self {
        let layout = HandLayout {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            layout.dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let layer = tar_of(&[("f", b"x")], &[]);
        let (ld, ls) = layout.blob(&layer);
        let diff = Digest::sha256(&layer);
        let ids: Vec<String> = (0..diff_ids).map(|_| format!("\"{diff}\"")).collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            ids.join(",")
        );
        let (cd, cs) = layout.blob(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"{layer_media_type}","digest":"{ld}","size":{ls}}}]}}"#
        );
        let manifest = manifest_override
            .map(<[u8]>::to_vec)
            .unwrap_or(manifest.into_bytes());
        let (md, ms) = layout.blob(&manifest);
        layout.index(&format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#
        ));
        layout
    }

    fn index(&self, json: &str) {
        std::fs::write(self.dir.path().join("index.json"), json).unwrap();
    }

    fn import(&self) -> (tempfile::TempDir, ImageStore, Result<(), Error>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let result = store
            .import_oci(self.dir.path(), Some("t"), &Reference::parse("x").unwrap())
            .map(|_| ());
        (dir, store, result)
    }
}

const GZ: &str = "application/vnd.oci.image.layer.v1.tar";

#[test]
fn a_well_formed_hand_layout_imports() {
    let (_d, store, result) = HandLayout::new(GZ, 1, None).import();
    result.unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn hostile_layouts_give_clear_errors_and_leave_nothing() {
    type Case = (&'static str, HandLayout, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (
            "bad manifest JSON",
            HandLayout::new(GZ, 1, Some(b"{\"schemaVersion\":2,")),
            |e| matches!(e, Error::MalformedJson { .. }),
        ),
        (
            "unknown layer media type",
            HandLayout::new("application/x-not-a-layer", 1, None),
            |e| matches!(e, Error::UnsupportedMediaType { .. }),
        ),
        (
            "config naming a non-existent layer",
            HandLayout::new(GZ, 2, None),
            |e| matches!(e, Error::InvalidImage { .. }),
        ),
        ("missing blob", HandLayout::new(GZ, 1, None), |e| {
            matches!(e, Error::BlobNotFound { .. })
        }),
        ("../ in index path", HandLayout::new(GZ, 1, None), |e| {
            matches!(e, Error::MalformedJson { .. } | Error::InvalidDigest { .. })
        }),
        ("tampered blob", HandLayout::new(GZ, 1, None), |e| {
            matches!(e, Error::DigestMismatch { .. })
        }),
    ];
    for (what, layout, expected) in cases {
        match what {
            "missing blob" => {
                // Remove the layer (the only blob that is not JSON).
                let blobs = layout.dir.path().join("blobs/sha256");
                for entry in std::fs::read_dir(&blobs).unwrap() {
                    let path = entry.unwrap().path();
                    if std::fs::read(&path).unwrap().first() != Some(&b'{') {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            }
            "../ in index path" => layout.index(
                r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../etc/passwd","size":10,"annotations":{"org.opencontainers.image.ref.name":"t"}}]}"#,
            ),
            "tampered blob" => {
                let blobs = layout.dir.path().join("blobs/sha256");
                for entry in std::fs::read_dir(&blobs).unwrap() {
                    let path = entry.unwrap().path();
                    let mut data = std::fs::read(&path).unwrap();
                    if data.first() != Some(&b'{') {
                        data[0] ^= 1;
                        std::fs::write(path, data).unwrap();
                    }
                }
            }
            _ => {}
        }
        let (_d, store, result) = layout.import();
        let err = result.expect_err(what);
        assert!(expected(&err), "{what}: unexpected error {err}");
        assert!(!err.to_string().is_empty());
        assert!(store_is_empty(&store), "{what}: partial state left behind");
    }
}

#[test]
fn missing_layout_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("s")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(store.import_layout(&empty, None).is_err());
    std::fs::write(
        empty.join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        empty.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    assert!(matches!(
        store.import_layout(&empty, None),
        Err(Error::InvalidLayout { .. })
    ));
    let _ = ContentStore::open(dir.path().join("c")).unwrap();
}
