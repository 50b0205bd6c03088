//! [`ResumableWriter`]: a blob written over several requests (a registry's chunked, resumable
//! upload). Bytes append to a file the caller keeps for the session, hashed as they arrive (one
//! `writev` per batch); the running hash ([`UploadHash`]) is handed back between requests, and
//! [`ContentStore::commit_upload`](super::ContentStore::commit_upload) makes the file a blob
//! only once its digest is verified: with that hash when it covers the whole file, otherwise
//! (a restart lost it, a write failed half-way) by reading the file once more.

use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use berth_api::{Algorithm, Digest, Hasher};

/// The hash of an upload's first `len` bytes, carried from one request of a session to the next.
#[derive(Clone)]
pub struct UploadHash {
    algorithm: Algorithm,
    hasher: Hasher,
    len: u64,
}

impl std::fmt::Debug for UploadHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadHash")
            .field("algorithm", &self.algorithm)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl UploadHash {
    /// A hash of nothing yet. Uploads hash with SHA-256, the digest nearly every client names;
    /// one finished under another algorithm is read again once.
    pub fn new() -> Self {
        UploadHash {
            algorithm: Algorithm::Sha256,
            hasher: Algorithm::Sha256.hasher(),
            len: 0,
        }
    }

    /// How many bytes it covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when it covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest, when it covers exactly `size` bytes under `algorithm`.
    pub(crate) fn finish_for(self, algorithm: Algorithm, size: u64) -> Option<Digest> {
        (self.algorithm == algorithm && self.len == size).then(|| self.hasher.finish())
    }
}

impl Default for UploadHash {
    fn default() -> Self {
        UploadHash::new()
    }
}

/// Appends to an upload's data file and hashes what it appends (see the module docs).
#[derive(Debug)]
pub struct ResumableWriter {
    file: File,
    path: PathBuf,
    /// Hash of everything in the file, or `None` once that is no longer known.
    hash: Option<UploadHash>,
    /// Bytes appended through this writer.
    written: u64,
}

impl ResumableWriter {
    /// Opens the upload file at `path` for appending at its end; returns the writer and that
    /// offset. `hash` (the session's, from [`ResumableWriter::into_hash`]) is kept only if it
    /// covers the file exactly; an empty file starts a new one.
    pub fn open(path: impl Into<PathBuf>, hash: Option<UploadHash>) -> io::Result<(Self, u64)> {
        let path = path.into();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let start = file.seek(SeekFrom::End(0))?;
        let hash = match hash {
            Some(h) if h.len == start => Some(h),
            _ if start == 0 => Some(UploadHash::new()),
            _ => None,
        };
        Ok((
            ResumableWriter {
                file,
                path,
                hash,
                written: 0,
            },
            start,
        ))
    }

    /// The upload file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes appended through this writer.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The hash of the whole file, if known.
    pub fn hash(&self) -> Option<&UploadHash> {
        self.hash.as_ref()
    }

    /// Ends this writer, giving back the hash for the session to keep.
    pub fn into_hash(self) -> Option<UploadHash> {
        self.hash
    }

    /// Cuts the file back to `len` bytes, restoring the hash it had then (a rejected chunk).
    pub fn truncate(&mut self, len: u64, hash: Option<UploadHash>) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::End(0))?;
        self.hash = hash.filter(|h| h.len == len);
        Ok(())
    }

    /// Appends `batch` (one `writev` per pass) and hashes it. After an error part of the batch
    /// may be in the file: the hash is then no longer known (the commit reads the file again).
    pub fn append<B: AsRef<[u8]>>(&mut self, batch: &[B]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b.as_ref())).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    self.hash = None;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    self.written += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.hash = None;
                    return Err(e);
                }
            }
        }
        if let Some(hash) = &mut self.hash {
            for chunk in batch {
                let chunk = chunk.as_ref();
                hash.hasher.update(chunk);
                hash.len += chunk.len() as u64;
            }
        }
        Ok(())
    }
}
