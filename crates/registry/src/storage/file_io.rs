//! Blocking file I/O for [`super::FsStorage`], kept off the async runtime and pipelined with the
//! network: an upload's body is appended (through berth-image's `ResumableWriter`, which hashes
//! it on the way, so a blob is hashed exactly once) in batches on the blocking pool while the next batch arrives, and a blob is read in
//! 256 KiB chunks into pooled buffers that go to the socket as they are, the next two chunks
//! read while the current one is sent. Neither side copies bytes between user-space buffers.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_image::{ResumableWriter, UploadHash};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::ByteStream;
use crate::{Error, Result};

/// Bytes of an upload gathered before they are handed to the blocking pool.
const APPEND_BATCH: usize = 1 << 20;

/// Most body chunks in one batch (tiny chunks would otherwise grow the iovec list unbounded).
const APPEND_MAX_CHUNKS: usize = 256;

/// Size of each read of a blob being served.
const READ_CHUNK: usize = 256 << 10;

/// The lock of an upload session, holding the running hash of its data file.
pub(super) type SessionGuard = tokio::sync::OwnedMutexGuard<Option<UploadHash>>;

/// The data file of an upload session being appended to: berth-image's [`ResumableWriter`]
/// (which hashes what it appends) and the session's lock.
///
/// Holding the lock means: if the request is abandoned while a batch is being written on the
/// blocking pool, the session stays locked until that write is done, so a resuming request
/// never appends while an old write is still landing.
pub(super) struct Appender {
    writer: ResumableWriter,
    session: SessionGuard,
}

impl Appender {
    /// Opens `path` for appending at its current end; returns the appender and that offset.
    /// The session's hash is kept only if it covers the file exactly.
    pub(super) fn open(path: PathBuf, mut session: SessionGuard) -> io::Result<(Self, u64)> {
        let (writer, start) = ResumableWriter::open(path, session.take())?;
        Ok((Appender { writer, session }, start))
    }

    /// Hands the hash back to the session and unlocks it.
    pub(super) fn close(self) {
        let Appender {
            writer,
            mut session,
        } = self;
        *session = writer.into_hash();
    }

    /// Bytes appended so far.
    pub(super) fn written(&self) -> u64 {
        self.writer.written()
    }

    /// The hash of the whole file, if known.
    pub(super) fn hash(&self) -> Option<&UploadHash> {
        self.writer.hash()
    }

    /// Cuts the file back to `len` bytes, restoring the hash it had then.
    pub(super) fn truncate(&mut self, len: u64, hash: Option<UploadHash>) -> Result<()> {
        self.writer
            .truncate(len, hash)
            .map_err(Error::io("truncate", self.writer.path()))
    }

    /// Appends `batch` and hashes it.
    fn append(&mut self, batch: &[Bytes]) -> io::Result<()> {
        self.writer.append(batch)
    }
}

type AppendTask = JoinHandle<(Appender, io::Result<()>)>;

/// Appends `data` to the upload, at most `limit` bytes when given. While one batch is written
/// on the blocking pool the next is received. Returns the appender (holding what was written)
/// and what stopped the body early, if anything: a broken stream, a write error, or a body
/// longer than `limit` ([`Error::BadRequest`]).
pub(super) async fn append(
    appender: Appender,
    limit: Option<u64>,
    mut data: ByteStream,
) -> (Appender, Option<Error>) {
    let path = appender.writer.path().to_path_buf();
    let mut idle = Some(appender);
    let mut running: Option<AppendTask> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut received = 0u64;
    let mut failure = None;
    loop {
        let done = match data.next().await {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if limit.is_some_and(|n| received > n) {
                    failure = Some(Error::BadRequest(
                        "chunk is longer than its Content-Range".into(),
                    ));
                    break;
                }
                if !chunk.is_empty() {
                    batch_len += chunk.len();
                    batch.push(chunk);
                }
                false
            }
            Some(Err(e)) => {
                // Keep what arrived, so the client can resume after it.
                failure = Some(Error::Stream(e));
                true
            }
            None => true,
        };
        let flush = batch_len >= APPEND_BATCH
            || batch.len() >= APPEND_MAX_CHUNKS
            || (done && batch_len > 0);
        if flush {
            let mut appender = match running.take() {
                Some(task) => {
                    let (appender, result) = task.await.expect("append task panicked");
                    if let Err(e) = result {
                        idle = Some(appender);
                        failure = Some(Error::io("write", &path)(e));
                        break;
                    }
                    appender
                }
                None => idle.take().expect("appender is idle"),
            };
            let chunks = std::mem::take(&mut batch);
            batch_len = 0;
            running = Some(tokio::task::spawn_blocking(move || {
                let result = appender.append(&chunks);
                (appender, result)
            }));
        }
        if done {
            break;
        }
    }
    if let Some(task) = running {
        let (appender, result) = task.await.expect("append task panicked");
        if let Err(e) = result {
            failure.get_or_insert(Error::io("write", &path)(e));
        }
        idle = Some(appender);
    }
    (idle.expect("appender returned"), failure)
}

/// Read buffers of [`READ_CHUNK`] bytes, given back when the socket has sent them. Reusing them
/// spares the allocator mapping (and the kernel zeroing) fresh pages for every chunk served.
#[derive(Clone, Default)]
pub(super) struct BufferPool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Idle buffers a pool keeps (8 MiB); more are freed.
const POOL_MAX_IDLE: usize = 32;

/// Reads smaller than this get a buffer of their own.
const POOL_MIN_READ: usize = 64 << 10;

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        self.idle
            .lock()
            .expect("buffer pool poisoned")
            .pop()
            .unwrap_or_else(|| vec![0; READ_CHUNK])
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().expect("buffer pool poisoned");
        if idle.len() < POOL_MAX_IDLE {
            idle.push(buf);
        }
    }

    /// Reads exactly `len` bytes (at most [`READ_CHUNK`]) at `offset`.
    fn read_at(&self, file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
        if len < POOL_MIN_READ {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, offset)?;
            return Ok(Bytes::from(buf));
        }
        let mut buf = PooledBuf {
            buf: self.take(),
            len,
            pool: self.clone(),
        };
        file.read_exact_at(&mut buf.buf[..len], offset)?;
        Ok(Bytes::from_owner(buf))
    }
}

/// A pooled buffer's first `len` bytes, returned to the pool when dropped.
struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    pool: BufferPool,
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

type ReadTask = JoinHandle<io::Result<Bytes>>;

/// Reads in flight per blob being served: while the socket sends one chunk, the next ones are
/// read, so the blocking pool's latency stays off the transfer's path.
const READ_AHEAD: usize = 2;

struct Reader {
    pool: BufferPool,
    file: Arc<File>,
    /// Reads running on the blocking pool, in file order.
    running: VecDeque<ReadTask>,
    /// Offset of the next read to start.
    next: u64,
    /// End of the range being served.
    end: u64,
}

impl Reader {
    /// Starts reads until [`READ_AHEAD`] are running or the range is covered.
    fn fill(&mut self) {
        while self.running.len() < READ_AHEAD && self.next < self.end {
            let n = (self.end - self.next).min(READ_CHUNK as u64) as usize;
            let (pool, file, at) = (self.pool.clone(), self.file.clone(), self.next);
            self.next += n as u64;
            self.running.push_back(tokio::task::spawn_blocking(move || {
                pool.read_at(&file, at, n).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        io::Error::new(e.kind(), "blob is shorter than its recorded size")
                    } else {
                        e
                    }
                })
            }));
        }
    }
}

/// Streams `len` bytes of `file` from `offset` in [`READ_CHUNK`] buffers from `pool`, reading
/// ahead on the blocking pool.
pub(super) fn read_stream(pool: &BufferPool, file: File, offset: u64, len: u64) -> ByteStream {
    let mut reader = Reader {
        pool: pool.clone(),
        file: Arc::new(file),
        running: VecDeque::new(),
        next: offset,
        end: offset + len,
    };
    reader.fill();
    Box::pin(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            let task = reader.running.pop_front()?;
            let chunk = task.await.expect("read task panicked");
            if chunk.is_ok() {
                reader.fill();
            } else {
                // The stream ends once the error is reported.
                reader.running.clear();
                reader.next = reader.end;
            }
            Some((chunk, reader))
        },
    ))
}
