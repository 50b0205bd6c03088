//! `docker save`-style archives: round trips, skopeo interoperability, hostile archives.

use std::path::Path;
use std::process::Command;

use berth_image::{BaseImage, Error, ImageStore, Reference};
use berth_testutil::{require_command, require_path};

fn busybox_store(dir: &Path) -> (ImageStore, Reference) {
    let store = ImageStore::open(dir.join("image")).unwrap();
    let name = Reference::parse("busybox:1").unwrap();
    BaseImage::busybox(Path::new("/bin/busybox"))
        .unwrap()
        .commit(&store, Some(&name))
        .unwrap();
    (store, name)
}

fn empty(store: &ImageStore) -> bool {
    store.list().unwrap().is_empty()
        && store.content().list().unwrap().is_empty()
        && std::fs::read_dir(store.content().ingest_dir())
            .unwrap()
            .next()
            .is_none()
}

#[test]
fn archive_round_trip_and_skopeo() {
    if !require_path("archive round trip", "/bin/busybox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, name) = busybox_store(dir.path());
    let image = store.image(&name).unwrap();
    let archive = dir.path().join("busybox.tar");
    store
        .export_archive(
            &[(image.clone(), vec![name.clone()])],
            std::fs::File::create(&archive).unwrap(),
        )
        .unwrap();

    let other = ImageStore::open(dir.path().join("other")).unwrap();
    let loaded = other
        .import_archive(std::fs::File::open(&archive).unwrap(), None)
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names, vec![name.clone()]);
    let back = other.image(&name).unwrap();
    assert_eq!(
        back.id().unwrap(),
        image.id().unwrap(),
        "same config, same image id"
    );
    assert_eq!(back.diff_ids().unwrap(), image.diff_ids().unwrap());
    // Only the config, the layer and the new manifest are kept.
    assert_eq!(other.content().list().unwrap().len(), 3);

    if !require_command("archive interop", "skopeo") {
        return;
    }
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What skopeo writes imports too.
    let layout = dir.path().join("layout");
    store.export_oci(&image.target, &layout, Some("1")).unwrap();
    let skopeo_archive = dir.path().join("skopeo.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!(
            "docker-archive:{}:demo/bb:2",
            skopeo_archive.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third = ImageStore::open(dir.path().join("third")).unwrap();
    let loaded = third
        .import_archive(std::fs::File::open(&skopeo_archive).unwrap(), None)
        .unwrap();
    assert_eq!(
        loaded[0].names,
        vec![Reference::parse("demo/bb:2").unwrap()]
    );
    assert_eq!(
        third
            .image(&loaded[0].names[0])
            .unwrap()
            .diff_ids()
            .unwrap(),
        image.diff_ids().unwrap()
    );
}

fn archive_of(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        // Written raw: the tar crate (rightly) refuses to write `..` itself.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        tar.append(&header, *data).unwrap();
    }
    for (name, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, name, target).unwrap();
    }
    tar.into_inner().unwrap()
}

#[test]
fn hostile_archives_give_clear_errors_and_leave_nothing() {
    let layer = archive_of(&[("f", b"x")], &[]);
    let diff = berth_api::Digest::sha256(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#
    );
    let two_ids = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff}","{diff}"]}}}}"#
    );
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "no manifest.json",
            archive_of(
                &[("c.json", config.as_bytes()), ("l/layer.tar", &layer)],
                &[],
            ),
        ),
        (
            "bad manifest JSON",
            archive_of(&[("manifest.json", b"[{"), ("l/layer.tar", &layer)], &[]),
        ),
        (
            "missing layer",
            archive_of(
                &[("manifest.json", manifest), ("c.json", config.as_bytes())],
                &[],
            ),
        ),
        (
            "config naming a non-existent layer",
            archive_of(
                &[
                    ("manifest.json", manifest),
                    ("c.json", two_ids.as_bytes()),
                    ("l/layer.tar", &layer),
                ],
                &[],
            ),
        ),
        (
            "layer not matching its diff id",
            archive_of(
                &[
                    ("manifest.json", manifest),
                    ("c.json", config.as_bytes()),
                    ("l/layer.tar", b"not the layer, at all"),
                ],
                &[],
            ),
        ),
        (
            "link out of the archive",
            archive_of(
                &[("manifest.json", manifest), ("c.json", config.as_bytes())],
                &[("l/layer.tar", "../../../etc/passwd")],
            ),
        ),
        ("entry with ..", archive_of(&[("../evil.json", b"{}")], &[])),
    ];
    for (what, data) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let err = store.import_archive(&data[..], None).expect_err(what);
        assert!(
            matches!(
                err,
                Error::InvalidArchive { .. }
                    | Error::MalformedJson { .. }
                    | Error::DiffIdMismatch { .. }
            ),
            "{what}: {err}"
        );
        assert!(empty(&store), "{what}: partial state left");
    }
}
