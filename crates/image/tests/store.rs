//! The image store's names: tag, resolve (by name, digest, id prefix), remove; platform selection.

use berth_api::Digest;
use berth_image::oci_spec::image::{ImageConfiguration, ImageIndex};
use berth_image::{Compression, Error, ImageStore, Platform, Reference};

fn layer_tar(content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "f", content).unwrap();
    tar.into_inner().unwrap()
}

#[test]
fn names_resolve_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let layer = store
        .add_layer(&layer_tar(b"one")[..], Compression::Gzip)
        .unwrap();
    let manifest = store
        .commit_image(ImageConfiguration::default(), &[layer])
        .unwrap();
    let busybox = Reference::parse("busybox").unwrap();
    store.tag(&busybox, &manifest).unwrap();
    store
        .tag_image(
            &busybox,
            &Reference::parse("localhost:5000/me/bb:v2").unwrap(),
        )
        .unwrap();

    let names: Vec<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/busybox:latest",
            "localhost:5000/me/bb:v2"
        ]
    );
    let image = store.image(&busybox).unwrap();
    let id = image.id().unwrap();
    let digest: Digest = manifest.digest().to_string().parse().unwrap();
    for spelled in [
        "busybox".to_owned(),
        "docker.io/library/busybox:latest".to_owned(),
        format!("busybox@{digest}"),
        id.hex()[..8].to_owned(),
        id.to_string(),
        digest.hex()[..12].to_owned(),
    ] {
        let found = store.resolve_str(&spelled).unwrap();
        assert_eq!(found.digest(), manifest.digest(), "{spelled}");
    }
    assert!(store.resolve_str("nosuch").unwrap_err().is_not_found());
    assert!(matches!(
        store.tag(&Reference::parse("x").unwrap(), &{
            let mut d = manifest.clone();
            d.set_size(1);
            d
        }),
        Err(Error::SizeMismatch { .. })
    ));

    store.remove(&busybox).unwrap();
    assert!(store.image(&busybox).unwrap_err().is_not_found());
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.remove_digest(&digest).unwrap().len(), 1);
    assert!(store.list().unwrap().is_empty());
    assert!(store.remove(&busybox).unwrap_err().is_not_found());
}

#[test]
fn index_selects_the_platform() {
    let d = |s: &str| Digest::sha256(s.as_bytes());
    let index: ImageIndex = serde_json::from_str(&format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v6"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"windows"}}}}
        ]}}"#,
        d("armv6"),
        d("arm64"),
        d("amd64"),
        d("windows")
    ))
    .unwrap();
    let pick = |p: &str| {
        Platform::parse(p)
            .unwrap()
            .select(&index)
            .map(|m| m.digest().to_string())
    };
    assert_eq!(pick("linux/amd64"), Some(d("amd64").to_string()));
    assert_eq!(pick("linux/arm64"), Some(d("arm64").to_string()));
    assert_eq!(pick("linux/arm/v7"), Some(d("armv6").to_string()));
    assert_eq!(pick("windows/amd64"), Some(d("windows").to_string()));
    assert_eq!(pick("linux/s390x"), None);
    assert!(Platform::host().select(&index).is_some());
}
