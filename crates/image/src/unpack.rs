//! Unpacking an image into a chain of committed snapshots, one per layer.
//!
//! Each layer's snapshot is keyed by its *chain id* (the OCI image spec's name for the digest of
//! a layer together with everything beneath it: `chain(L0) = diff_id(L0)`,
//! `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))`), so images that share a base share its
//! snapshots, and unpacking an image a second time costs nothing. A layer is decompressed (gzip,
//! zstd or none, detected from its bytes), hashed while it is applied, and committed only if its
//! uncompressed digest is the diff id the config names; a layer that fails leaves no snapshot,
//! and neither do the layers the failed unpack applied before it. Images deeper than
//! [`MAX_LAYERS`] are refused before any layer is touched.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use berth_api::{Algorithm, Digest, Hasher};
use std::collections::HashSet;

use berth_unionfs::{ApplyOptions, SnapshotKind, Snapshotter};

use crate::error::{Error, Result};
use crate::manifest::{self, Compression, descriptor_digest};
use crate::store::{Image, ImageStore, MAX_LAYERS, too_deep};

/// The chain ids of a stack of layers with these diff ids, base first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Options for [`ImageStore::unpack_with`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// How layer tars are applied (ownership, xattrs, devices).
    pub apply: ApplyOptions,
    /// Decompress and hash on a second thread while the first writes files (default true).
    pub decompress_in_thread: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            apply: ApplyOptions::default(),
            decompress_in_thread: true,
        }
    }
}

/// What one layer's unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// The snapshot key (the layer's chain id).
    pub key: String,
    /// False when the snapshot already existed (shared with another image, or unpacked before).
    pub applied: bool,
}

/// The result of unpacking an image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// One entry per layer, base first.
    pub layers: Vec<UnpackedLayer>,
}

impl Unpacked {
    /// The committed snapshot of the top layer: the parent for a container's writable snapshot.
    /// `None` for an image without layers (prepare on no parent).
    pub fn top(&self) -> Option<&str> {
        self.layers.last().map(|l| l.key.as_str())
    }
}

static UNPACK_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// Unpacks `image` into `snapshotter` (see the module docs) with default options and returns
    /// the snapshot chain.
    pub fn unpack(&self, image: &Image, snapshotter: &dyn Snapshotter) -> Result<Unpacked> {
        self.unpack_with(image, snapshotter, &UnpackOptions::default())
    }

    /// [`ImageStore::unpack`] with options.
    pub fn unpack_with(
        &self,
        image: &Image,
        snapshotter: &dyn Snapshotter,
        options: &UnpackOptions,
    ) -> Result<Unpacked> {
        let _lease = self.lease()?;
        let diff_ids = image.diff_ids()?;
        if diff_ids.len() != image.layers().len() {
            return Err(Error::InvalidImage {
                digest: image.digest()?,
                reason: format!(
                    "config names {} layers but the manifest has {}",
                    diff_ids.len(),
                    image.layers().len()
                ),
            });
        }
        if image.layers().len() > MAX_LAYERS {
            return Err(too_deep(image.digest()?, image.layers().len()));
        }
        let chain = chain_ids(&diff_ids);
        let mut out = Unpacked::default();
        let mut parent: Option<String> = None;
        for ((layer, diff_id), chain_id) in image.layers().iter().zip(&diff_ids).zip(&chain) {
            let key = chain_id.to_string();
            let applied = if snapshotter.stat(&key).is_ok() {
                Ok(false)
            } else {
                manifest::layer_compression(layer.media_type())
                    .and_then(|_| descriptor_digest(layer))
                    .and_then(|blob| {
                        self.unpack_layer(
                            &blob,
                            diff_id,
                            &key,
                            parent.as_deref(),
                            snapshotter,
                            options,
                        )
                    })
            };
            let applied = match applied {
                Ok(applied) => applied,
                Err(e) => {
                    remove_applied(&out, snapshotter);
                    return Err(e);
                }
            };
            out.layers.push(UnpackedLayer {
                key: key.clone(),
                applied,
            });
            parent = Some(key);
        }
        Ok(out)
    }

    /// Applies one layer blob as snapshot `key` on `parent`. Returns false when another unpack
    /// committed `key` first.
    fn unpack_layer(
        &self,
        blob: &Digest,
        diff_id: &Digest,
        key: &str,
        parent: Option<&str>,
        snapshotter: &dyn Snapshotter,
        options: &UnpackOptions,
    ) -> Result<bool> {
        let snap_err = |key: &str| {
            let key = key.to_owned();
            move |source| Error::Snapshot { key, source }
        };
        let path = self.content().blob_path(blob);
        let file = self.content().open_blob(blob)?;
        let temp = format!(
            "unpack-{}-{}-{}",
            std::process::id(),
            UNPACK_COUNTER.fetch_add(1, Ordering::Relaxed),
            diff_id.hex()
        );
        snapshotter
            .prepare(&temp, parent)
            .map_err(snap_err(&temp))?;
        let applied = if options.decompress_in_thread {
            apply_pipelined(file, diff_id.algorithm(), |reader| {
                snapshotter.apply_layer(&temp, reader, &options.apply)
            })
        } else {
            apply_inline(file, diff_id.algorithm(), |reader| {
                snapshotter.apply_layer(&temp, reader, &options.apply)
            })
        };
        let applied = match applied {
            Ok((Ok(_stats), found)) if found == *diff_id => Ok(()),
            Ok((Ok(_stats), found)) => Err(Error::DiffIdMismatch {
                layer: blob.clone(),
                expected: diff_id.clone(),
                found,
            }),
            Ok((Err(source), _)) => Err(Error::Snapshot {
                key: temp.clone(),
                source,
            }),
            Err(e) => Err(Error::io("read layer", &path, e)),
        };
        if let Err(e) = applied {
            let _ = snapshotter.remove(&temp);
            return Err(e);
        }
        match snapshotter.commit(key, &temp) {
            Ok(()) => Ok(true),
            Err(berth_unionfs::Error::AlreadyExists { .. }) => {
                let _ = snapshotter.remove(&temp);
                Ok(false)
            }
            Err(source) => {
                let _ = snapshotter.remove(&temp);
                Err(Error::Snapshot {
                    key: key.to_owned(),
                    source,
                })
            }
        }
    }
}

/// After a failed unpack: removes the layer snapshots this unpack made, top first, so that a
/// failure leaves no snapshot behind. One that another unpack or a container built on meanwhile
/// stays (and so does everything under it).
fn remove_applied(unpacked: &Unpacked, snapshotter: &dyn Snapshotter) {
    for layer in unpacked.layers.iter().rev() {
        if layer.applied && snapshotter.remove(&layer.key).is_err() {
            return;
        }
    }
}

impl ImageStore {
    /// Removes the committed layer snapshots (those named by a chain id) that no named image's
    /// layers need any more, leaves first, and returns their names. A snapshot that is the
    /// parent of another (a container's writable layer, a build step, a layer still needed)
    /// stays, and so does every snapshot not named by a chain id. Takes the GC lock, so it
    /// waits for unpacks and builds in progress and must not be called while holding a
    /// [`Lease`](crate::store::Lease).
    pub fn prune_snapshots(&self, snapshotter: &dyn Snapshotter) -> Result<Vec<String>> {
        let _exclusive = self.exclusive_gc_lock()?;
        let mut needed = HashSet::new();
        for record in self.list()? {
            // A name whose image can't be read (another platform only, content gone) pins
            // nothing: its layers can't be unpacked for this host anyway.
            let Ok(image) = self.load(&record.target) else {
                continue;
            };
            if let Ok(diff_ids) = image.diff_ids() {
                needed.extend(chain_ids(&diff_ids).iter().map(Digest::to_string));
            }
        }
        let snap_err = |key: &str| {
            let key = key.to_owned();
            move |source| Error::Snapshot { key, source }
        };
        let mut removed = Vec::new();
        loop {
            let snapshots = snapshotter.list().map_err(snap_err(""))?;
            let parents: HashSet<&str> = snapshots
                .iter()
                .filter_map(|s| s.parent.as_deref())
                .collect();
            let prunable: Vec<&str> = snapshots
                .iter()
                .filter(|s| {
                    s.kind == SnapshotKind::Committed
                        && s.name.parse::<Digest>().is_ok()
                        && !needed.contains(&s.name)
                        && !parents.contains(s.name.as_str())
                })
                .map(|s| s.name.as_str())
                .collect();
            if prunable.is_empty() {
                return Ok(removed);
            }
            for name in prunable {
                match snapshotter.remove(name) {
                    Ok(()) => removed.push(name.to_owned()),
                    // Another process took it or built on it meanwhile: not ours to remove.
                    Err(berth_unionfs::Error::NotFound { .. })
                    | Err(berth_unionfs::Error::HasChildren { .. }) => {}
                    Err(source) => return Err(snap_err(name)(source)),
                }
            }
        }
    }
}

type Applied<T> = io::Result<(T, Digest)>;

/// Decompresses and hashes `file` on this thread while `apply` reads it; drains what `apply`
/// leaves (tar padding) so the digest covers every byte.
fn apply_inline<T>(
    file: File,
    algorithm: Algorithm,
    apply: impl FnOnce(&mut dyn Read) -> T,
) -> Applied<T> {
    let mut reader = HashingReader::new(
        decompressor(BufReader::with_capacity(256 * 1024, file))?,
        algorithm,
    );
    let out = apply(&mut reader);
    io::copy(&mut reader, &mut io::sink())?;
    Ok((out, reader.finish()))
}

/// Like [`apply_inline`], but decompression and hashing run on a second thread and hand
/// chunks over a bounded channel, so they overlap with the file system work of `apply`.
fn apply_pipelined<T>(
    file: File,
    algorithm: Algorithm,
    apply: impl FnOnce(&mut dyn Read) -> T,
) -> Applied<T> {
    const CHUNK: usize = 256 * 1024;
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(16);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> io::Result<Digest> {
            let mut hasher = algorithm.hasher();
            let mut decoded = match decompressor(BufReader::with_capacity(CHUNK, file)) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    match decoded.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    }
                }
                if filled == 0 {
                    return Ok(hasher.finish());
                }
                buf.truncate(filled);
                hasher.update(&buf);
                if tx.send(Ok(buf)).is_err() {
                    // The consumer gave up; finish hashing for an accurate (unused) result.
                    io::copy(&mut decoded, &mut hasher)?;
                    return Ok(hasher.finish());
                }
            }
        });
        let mut reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let out = apply(&mut reader);
        let drained = io::copy(&mut reader, &mut io::sink());
        drop(reader);
        let digest = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("layer decompression thread panicked")))?;
        drained?;
        Ok((out, digest))
    })
}

/// Reads the chunks a producer thread sends.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A reader that decompresses `inner` according to its magic bytes.
pub fn decompressor<R: io::BufRead + Send + 'static>(
    mut inner: R,
) -> io::Result<Box<dyn Read + Send>> {
    let head = inner.fill_buf()?;
    Ok(match Compression::sniff(head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(inner)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(inner)?),
        Compression::None => Box::new(inner),
    })
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R, algorithm: Algorithm) -> Self {
        HashingReader {
            inner,
            hasher: algorithm.hasher(),
        }
    }

    fn finish(self) -> Digest {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::sha256(format!("{a} {b}").as_bytes()));
    }
}
