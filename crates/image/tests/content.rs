//! The content store: verification, atomicity, concurrent writers, GC.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;

use berth_api::{Algorithm, Digest};
use berth_image::content::GcOptions;
use berth_image::oci_spec::image::ImageConfiguration;
use berth_image::{
    Compression, ContentStore, Error, ImageStore, Reference, ResumableWriter, UploadHash,
};

fn ingest_is_empty(store: &ContentStore) -> bool {
    std::fs::read_dir(store.ingest_dir())
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn digest_mismatch_is_rejected_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let claimed = Digest::sha256(b"what the sender promised");
    let mut writer = store.begin_write().unwrap();
    writer.write_all(b"what the sender sent").unwrap();
    let err = writer.commit(&claimed).unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { expected, .. } if *expected == claimed),
        "{err}"
    );
    assert!(!store.contains(&claimed));
    assert!(store.list().unwrap().is_empty());
    assert!(ingest_is_empty(&store));
    assert!(store.stat(&claimed).unwrap_err().is_not_found());

    // The same through the one-shot and adopt-a-file paths.
    assert!(store.write_blob_verified(b"x", &claimed).is_err());
    let path = store.ingest_dir().join("refused");
    std::fs::write(&path, b"other bytes").unwrap();
    assert!(matches!(
        store.ingest_file(&path, &claimed),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(path.exists(), "a refused file stays with its owner");
    std::fs::remove_file(&path).unwrap();
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn writes_reads_and_adopts_sha256_and_sha512() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let data = b"hello berth".repeat(10_000);
    let d256 = Digest::sha256(&data);
    let d512 = Digest::compute(Algorithm::Sha512, &data);

    let info = store.write_blob_verified(&data, &d256).unwrap();
    assert_eq!(info.size, data.len() as u64);
    let mut back = Vec::new();
    store
        .open_blob(&d256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);

    // A SHA-256 writer committed against a SHA-512 digest re-hashes and accepts it.
    let mut writer = store.begin_write().unwrap();
    writer.write_all(&data).unwrap();
    writer.commit(&d512).unwrap();
    assert_eq!(store.stat(&d512).unwrap().size, data.len() as u64);

    let path = store.ingest_dir().join("adopted");
    std::fs::write(&path, b"adopted").unwrap();
    let adopted = Digest::sha256(b"adopted");
    store.ingest_file(&path, &adopted).unwrap();
    assert!(!path.exists(), "adopted by rename");
    assert!(store.contains(&adopted));

    let listed: HashSet<Digest> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(listed, HashSet::from([d256.clone(), d512, adopted]));
    assert!(store.delete(&d256).unwrap());
    assert!(!store.delete(&d256).unwrap());
    assert!(ingest_is_empty(&store));
}

#[test]
fn a_resumable_upload_becomes_a_blob_only_once_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let staged = dir.path().join("store/staged");
    std::fs::write(&staged, b"").unwrap();
    let digest = Digest::sha256(b"hashed while it streamed");

    // Two requests: the hash goes back to the session in between.
    let (mut writer, start) = ResumableWriter::open(&staged, None).unwrap();
    assert_eq!(start, 0);
    writer.append(&[&b"hashed "[..], &b"while"[..]]).unwrap();
    let hash = writer.into_hash();
    assert_eq!(hash.as_ref().map(UploadHash::len), Some(12));
    let (mut writer, start) = ResumableWriter::open(&staged, hash).unwrap();
    assert_eq!(start, 12);
    // A rejected chunk is cut off again, with the hash it had.
    let before = writer.hash().cloned();
    writer.append(&[b" garbage"]).unwrap();
    writer.truncate(12, before).unwrap();
    writer.append(&[b" it streamed"]).unwrap();
    let hash = writer.into_hash();

    // A wrong digest stores nothing and leaves the file.
    let wrong = Digest::sha256(b"something else");
    assert!(matches!(
        store.commit_upload(&staged, hash.clone(), &wrong),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(!store.contains(&wrong) && !store.contains(&digest));
    assert!(staged.exists());

    let info = store.commit_upload(&staged, hash, &digest).unwrap();
    assert_eq!(info.size, 24);
    assert!(!staged.exists(), "moved, not copied");
    let mut back = Vec::new();
    store
        .open_blob(&digest)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, b"hashed while it streamed");
    // Already stored: the second copy stays where it is, the blob is untouched. Without a
    // running hash (a restart lost it) the file is read to verify it.
    std::fs::write(&staged, b"hashed while it streamed").unwrap();
    assert_eq!(
        store.commit_upload(&staged, None, &digest).unwrap().size,
        24
    );
    assert!(staged.exists());
    std::fs::write(&staged, b"tampered with after the restart").unwrap();
    let sha512 = Digest::compute(Algorithm::Sha512, b"tampered with after the restart");
    // Hashed under another algorithm than the running hash: read again, and accepted.
    assert_eq!(
        store
            .commit_upload(&staged, Some(UploadHash::new()), &sha512)
            .unwrap()
            .size,
        31
    );
    assert!(store.contains(&sha512));
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let mut writer = store.begin_write().unwrap();
    writer.write_all(b"half a blob").unwrap();
    drop(writer);
    assert!(ingest_is_empty(&store));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn concurrent_writers_of_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ContentStore::open(dir.path()).unwrap());
    let data: Arc<Vec<u8>> = Arc::new((0..2_000_000u32).map(|i| (i % 251) as u8).collect());
    let digest = Digest::sha256(&data);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, data, digest) = (store.clone(), data.clone(), digest.clone());
            std::thread::spawn(move || {
                let mut writer = store.begin_write().unwrap();
                for chunk in data.chunks(65_536) {
                    writer.write_all(chunk).unwrap();
                }
                writer.commit(&digest).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().size, data.len() as u64);
    }
    let mut back = Vec::new();
    store
        .open_blob(&digest)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == *data);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(ingest_is_empty(&store));
}

fn one_layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, content).unwrap();
    tar.into_inner().unwrap()
}

#[test]
fn gc_keeps_referenced_blobs_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let shared = store
        .add_layer(&one_layer_tar("base", b"base")[..], Compression::Gzip)
        .unwrap();
    let only_a = store
        .add_layer(&one_layer_tar("a", b"a")[..], Compression::Zstd)
        .unwrap();
    let only_b = store
        .add_layer(&one_layer_tar("b", b"b")[..], Compression::None)
        .unwrap();
    let a = store
        .commit_image(
            ImageConfiguration::default(),
            &[shared.clone(), only_a.clone()],
        )
        .unwrap();
    let b = store
        .commit_image(
            ImageConfiguration::default(),
            &[shared.clone(), only_b.clone()],
        )
        .unwrap();
    let ra = Reference::parse("a").unwrap();
    let rb = Reference::parse("b:v1").unwrap();
    store.tag(&ra, &a).unwrap();
    store.tag(&rb, &b).unwrap();
    let stray = store.content().write_blob(b"nobody refers to me").unwrap();

    let report = store.gc(&GcOptions::default()).unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(!store.content().contains(&stray.digest));
    let image_b = store.image(&rb).unwrap();
    assert_eq!(image_b.layers().len(), 2);

    store.remove(&rb).unwrap();
    let report = store.gc(&GcOptions::default()).unwrap();
    // b's manifest, config and own layer go; the shared base stays with a.
    assert_eq!(report.removed.len(), 3, "{report:?}");
    let digest =
        |l: &berth_image::Layer| l.descriptor.digest().to_string().parse::<Digest>().unwrap();
    assert!(store.content().contains(&digest(&shared)));
    assert!(store.content().contains(&digest(&only_a)));
    assert!(!store.content().contains(&digest(&only_b)));
    store.image(&ra).unwrap();
    assert!(store.image(&rb).unwrap_err().is_not_found());

    // A grace period protects fresh, not yet named content.
    let fresh = store.content().write_blob(b"being built").unwrap();
    let options = GcOptions {
        grace: std::time::Duration::from_secs(600),
        ..GcOptions::default()
    };
    store.gc(&options).unwrap();
    assert!(store.content().contains(&fresh.digest));
}

#[test]
fn commit_image_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let build = || {
        let layer = store
            .add_layer(&one_layer_tar("f", b"same")[..], Compression::Gzip)
            .unwrap();
        let config: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Labels":{"z":"1","a":"2","m":"3","q":"4"}},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        store.commit_image(config, &[layer]).unwrap()
    };
    assert_eq!(build(), build());
}
