//! Images deeper than `MAX_LAYERS` (Docker's 125): a generated 10,000-layer image is refused
//! at once by every way in (OCI layout, `docker save` archive, a pulled manifest being named,
//! `commit_image`), with a message that says why, and leaves nothing in the store; an unpack
//! that fails leaves no layer snapshot.

use std::path::Path;
use std::time::Instant;

use berth_api::Digest;
use berth_image::oci_spec::image::ImageConfiguration;
use berth_image::{Compression, Error, ImageStore, MAX_LAYERS, Reference};
use berth_unionfs::{CopySnapshotter, Snapshotter};

const DEEP: usize = 10_000;

fn layer_tar(content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    tar.append_data(&mut header, "f", content).unwrap();
    tar.into_inner().unwrap()
}

/// Config and manifest JSON of an image of `depth` copies of the uncompressed `layer`.
fn deep_image(layer: &[u8], depth: usize) -> (Vec<u8>, Vec<u8>) {
    let diff_id = Digest::sha256(layer).to_string();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": vec![diff_id.clone(); depth]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let layer_descriptor = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": diff_id,
        "size": layer.len(),
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::sha256(&config).to_string(),
            "size": config.len(),
        },
        "layers": vec![layer_descriptor; depth],
    });
    (config, serde_json::to_vec(&manifest).unwrap())
}

fn assert_too_deep(err: &Error) {
    let text = err.to_string();
    assert!(
        text.contains(&format!("{DEEP} layers")) && text.contains("at most 125"),
        "{text}"
    );
}

fn assert_empty(store: &ImageStore) {
    assert!(store.list().unwrap().is_empty(), "no name left");
    assert!(
        store.content().list().unwrap().is_empty(),
        "no blob left: {:?}",
        store.content().list().unwrap()
    );
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256(bytes);
    let path = dir.join("blobs/sha256").join(digest.hex());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    digest
}

#[test]
fn a_deep_oci_layout_is_refused_and_leaves_nothing() {
    assert_eq!(MAX_LAYERS, 125);
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let layout = tmp.path().join("layout");
    let layer = layer_tar(b"x");
    let (config, manifest) = deep_image(&layer, DEEP);
    write_blob(&layout, &layer);
    write_blob(&layout, &config);
    let manifest_digest = write_blob(&layout, &manifest);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "deep"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();

    let started = Instant::now();
    let err = store
        .import_oci(&layout, None, &Reference::parse("deep").unwrap())
        .unwrap_err();
    println!("refused in {:.1?}", started.elapsed());
    assert_too_deep(&err);
    assert_empty(&store);
}

#[test]
fn a_deep_docker_archive_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let layer = layer_tar(b"x");
    let (config, _) = deep_image(&layer, DEEP);
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["deep:latest"],
        "Layers": vec!["layer/layer.tar"; DEEP],
    }]);
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("layer/layer.tar", layer.as_slice()),
        ("config.json", &config),
        ("manifest.json", manifest.to_string().as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, data).unwrap();
    }
    let archive = archive.into_inner().unwrap();
    let started = Instant::now();
    let err = store.import_archive(&archive[..], None).unwrap_err();
    println!("refused in {:.1?}", started.elapsed());
    assert_too_deep(&err);
    assert_empty(&store);
}

#[test]
fn a_deep_pulled_manifest_is_not_named_and_commit_refuses_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    // What a pull leaves before naming the image: its blobs in the content store.
    let layer = layer_tar(b"x");
    let (config, manifest) = deep_image(&layer, DEEP);
    store.content().write_blob(&layer).unwrap();
    store.content().write_blob(&config).unwrap();
    let info = store.content().write_blob(&manifest).unwrap();
    let target = berth_image::manifest::descriptor(
        berth_image::oci_spec::image::MediaType::ImageManifest,
        &info.digest,
        info.size,
    );
    let err = store
        .tag(&Reference::parse("deep").unwrap(), &target)
        .unwrap_err();
    assert_too_deep(&err);
    assert!(store.list().unwrap().is_empty());
    assert_too_deep(&store.load(&target).unwrap_err());

    // commit_image: 125 layers is the most.
    let made = store
        .add_layer(&layer_tar(b"y")[..], Compression::None)
        .unwrap();
    let at_limit = vec![made.clone(); MAX_LAYERS];
    store
        .commit_image(ImageConfiguration::default(), &at_limit)
        .unwrap();
    let over = vec![made; MAX_LAYERS + 1];
    let err = store
        .commit_image(ImageConfiguration::default(), &over)
        .unwrap_err();
    assert!(err.to_string().contains("126 layers"), "{err}");
}

#[test]
fn a_failed_unpack_leaves_no_layer_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let snapshots = CopySnapshotter::new(tmp.path().join("snapshots")).unwrap();
    let mut layers: Vec<_> = (0..3)
        .map(|n| {
            store
                .add_layer(
                    &layer_tar(format!("layer {n}").as_bytes())[..],
                    Compression::None,
                )
                .unwrap()
        })
        .collect();
    // The top layer's diff id does not match its content: its unpack fails.
    layers[2].diff_id = Digest::sha256(b"something else");
    let descriptor = store
        .commit_image(ImageConfiguration::default(), &layers)
        .unwrap();
    let image = store.load(&descriptor).unwrap();
    let err = store.unpack(&image, &snapshots).unwrap_err();
    assert!(
        matches!(err, Error::DiffIdMismatch { .. }),
        "{err}: {:?}",
        {
            let mut chain = Vec::new();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                chain.push(s.to_string());
                source = s.source();
            }
            chain
        }
    );
    assert!(
        snapshots.list().unwrap().is_empty(),
        "{:?}",
        snapshots.list().unwrap()
    );
    let dirs = std::fs::read_dir(tmp.path().join("snapshots/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "no snapshot folder left");
}
