//! The write-ahead log: preallocated segment files of checksummed frames, one frame per group
//! commit, and the recovery scan that replays them.
//!
//! A segment `NNNNNNNNNNNNNNNNNNNN.wal` is created at its full size (fallocate), so appending never
//! changes the file size and an fdatasync flushes only the data. It holds frames back to back,
//! then zeros:
//!
//! ```text
//! frame  = magic u32 | len u32 | crc32(len ‖ payload) u32 | payload (len bytes)
//! payload = record*
//! record = 1 rev u64 lease i64 klen u32 vlen u32 key value   (put)
//!        | 2 rev u64 klen u32 key                            (delete)
//!        | 3 id i64 ttl_secs u64                             (lease grant)
//!        | 4 id i64                                          (lease revoke; its keys' deletes follow)
//!        | 5 rev u64                                         (compaction)
//!        | 6 rev u64 compacted u64 next_lease i64 segment u64 (checkpoint header)
//!        | 7 mod u64 create u64 version u64 lease i64 live u8 klen u32 vlen u32 key value
//!                                                            (a kept version, in a checkpoint)
//! ```
//!
//! A **checkpoint** `NNNNNNNNNNNNNNNNNNNN.ckpt` holds, in the same frame format, the whole state
//! of the segments before segment `N`: a header record (6), then a grant (3) per lease and a
//! version record (7) per kept version of every key. It is written as `.ckpt.tmp`, synced,
//! renamed and its directory synced before any segment it covers is deleted, so at every moment
//! either the old segments or the checkpoint are complete on disk. It is read whole and any bad
//! frame in it is corruption (it was synced before it got its name).
//!
//! Recovery reads the frames in order and stops at the first all-zero header. A frame that fails
//! its checksum is a **torn tail** only if it is in the last segment and nothing valid follows it
//! (no frame with a good checksum in the window a single frame could cover, zeros beyond): a crash
//! during the last, unacknowledged group commit. The torn bytes are zeroed and the log continues
//! from there. Anywhere else a bad frame is corruption, and opening fails with
//! [`Error::Corrupt`] rather than serving partial state.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use berth_api::store::LeaseId;

use crate::error::{Error, Result};

/// Frame magic ("BTHW").
const MAGIC: u32 = 0x4254_4857;
/// Bytes of a frame header.
pub(crate) const HEADER: usize = 12;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const GRANT: u8 = 3;
const REVOKE: u8 = 4;
const COMPACT: u8 = 5;
const CHECKPOINT: u8 = 6;
const VERSION: u8 = 7;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Put {
        revision: u64,
        lease: Option<LeaseId>,
        key: &'a str,
        value: &'a [u8],
    },
    Delete {
        revision: u64,
        key: &'a str,
    },
    Grant {
        id: LeaseId,
        ttl_secs: u64,
    },
    Revoke {
        id: LeaseId,
    },
    Compact {
        revision: u64,
    },
    Checkpoint {
        revision: u64,
        compacted: u64,
        next_lease: LeaseId,
        segment: u64,
    },
    Version {
        key: &'a str,
        mod_revision: u64,
        create_revision: u64,
        version: u64,
        lease: Option<LeaseId>,
        /// `None`: a deletion.
        value: Option<&'a [u8]>,
    },
}

impl Record<'_> {
    /// Bytes the record takes in a payload.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Record::Put { key, value, .. } => 1 + 8 + 8 + 4 + 4 + key.len() + value.len(),
            Record::Delete { key, .. } => 1 + 8 + 4 + key.len(),
            Record::Grant { .. } => 1 + 8 + 8,
            Record::Revoke { .. } | Record::Compact { .. } => 1 + 8,
            Record::Checkpoint { .. } => 1 + 8 * 4,
            Record::Version { key, value, .. } => {
                1 + 8 * 4 + 1 + 4 + 4 + key.len() + value.map_or(0, <[u8]>::len)
            }
        }
    }

    /// Appends the record to `buf`; for a put, returns the offset of the value in `buf`.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) -> Option<usize> {
        match self {
            Record::Put {
                revision,
                lease,
                key,
                value,
            } => {
                buf.push(PUT);
                buf.extend_from_slice(&revision.to_le_bytes());
                buf.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(key.as_bytes());
                let at = buf.len();
                buf.extend_from_slice(value);
                return Some(at);
            }
            Record::Delete { revision, key } => {
                buf.push(DELETE);
                buf.extend_from_slice(&revision.to_le_bytes());
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(key.as_bytes());
            }
            Record::Grant { id, ttl_secs } => {
                buf.push(GRANT);
                buf.extend_from_slice(&id.to_le_bytes());
                buf.extend_from_slice(&ttl_secs.to_le_bytes());
            }
            Record::Revoke { id } => {
                buf.push(REVOKE);
                buf.extend_from_slice(&id.to_le_bytes());
            }
            Record::Compact { revision } => {
                buf.push(COMPACT);
                buf.extend_from_slice(&revision.to_le_bytes());
            }
            Record::Checkpoint {
                revision,
                compacted,
                next_lease,
                segment,
            } => {
                buf.push(CHECKPOINT);
                buf.extend_from_slice(&revision.to_le_bytes());
                buf.extend_from_slice(&compacted.to_le_bytes());
                buf.extend_from_slice(&next_lease.to_le_bytes());
                buf.extend_from_slice(&segment.to_le_bytes());
            }
            Record::Version {
                key,
                mod_revision,
                create_revision,
                version,
                lease,
                value,
            } => {
                buf.push(VERSION);
                buf.extend_from_slice(&mod_revision.to_le_bytes());
                buf.extend_from_slice(&create_revision.to_le_bytes());
                buf.extend_from_slice(&version.to_le_bytes());
                buf.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
                buf.push(u8::from(value.is_some()));
                let value = value.unwrap_or_default();
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(key.as_bytes());
                let at = buf.len();
                buf.extend_from_slice(value);
                return Some(at);
            }
        }
        None
    }
}

/// Reads fixed-size fields from a payload.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// Decodes the records of a payload, calling `f(record, value_offset_in_payload)`.
pub(crate) fn decode(
    payload: &[u8],
    mut f: impl FnMut(Record<'_>, usize) -> Result<()>,
) -> std::result::Result<Result<()>, &'static str> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    while c.pos < payload.len() {
        let tag = c.u8().ok_or("truncated record")?;
        let (record, at) = match tag {
            PUT => {
                let revision = c.u64().ok_or("truncated put")?;
                let lease = c.i64().ok_or("truncated put")?;
                let klen = c.u32().ok_or("truncated put")? as usize;
                let vlen = c.u32().ok_or("truncated put")? as usize;
                let key = c.str(klen).ok_or("bad put key")?;
                let at = c.pos;
                let value = c.take(vlen).ok_or("truncated put value")?;
                let lease = (lease != 0).then_some(lease);
                (
                    Record::Put {
                        revision,
                        lease,
                        key,
                        value,
                    },
                    at,
                )
            }
            DELETE => {
                let revision = c.u64().ok_or("truncated delete")?;
                let klen = c.u32().ok_or("truncated delete")? as usize;
                let key = c.str(klen).ok_or("bad delete key")?;
                (Record::Delete { revision, key }, 0)
            }
            GRANT => {
                let id = c.i64().ok_or("truncated grant")?;
                let ttl_secs = c.u64().ok_or("truncated grant")?;
                (Record::Grant { id, ttl_secs }, 0)
            }
            REVOKE => (
                Record::Revoke {
                    id: c.i64().ok_or("truncated revoke")?,
                },
                0,
            ),
            COMPACT => (
                Record::Compact {
                    revision: c.u64().ok_or("truncated compact")?,
                },
                0,
            ),
            CHECKPOINT => {
                let mut field = || c.u64().ok_or("truncated checkpoint header");
                let (revision, compacted) = (field()?, field()?);
                let (next_lease, segment) = (field()? as i64, field()?);
                (
                    Record::Checkpoint {
                        revision,
                        compacted,
                        next_lease,
                        segment,
                    },
                    0,
                )
            }
            VERSION => {
                let mut field = || c.u64().ok_or("truncated version");
                let (mod_revision, create_revision) = (field()?, field()?);
                let (version, lease) = (field()?, field()? as i64);
                let live = c.u8().ok_or("truncated version")?;
                let klen = c.u32().ok_or("truncated version")? as usize;
                let vlen = c.u32().ok_or("truncated version")? as usize;
                let key = c.str(klen).ok_or("bad version key")?;
                let at = c.pos;
                let value = c.take(vlen).ok_or("truncated version value")?;
                if live > 1 || (live == 0 && vlen != 0) {
                    return Err("bad version record");
                }
                (
                    Record::Version {
                        key,
                        mod_revision,
                        create_revision,
                        version,
                        lease: (lease != 0).then_some(lease),
                        value: (live == 1).then_some(value),
                    },
                    at,
                )
            }
            _ => return Err("unknown record type"),
        };
        if let Err(e) = f(record, at) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// Writes the frame header for `frame[HEADER..]` into `frame[..HEADER]`.
pub(crate) fn seal(frame: &mut [u8]) {
    let len = (frame.len() - HEADER) as u32;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&frame[HEADER..]);
    frame[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    frame[8..12].copy_from_slice(&hasher.finalize().to_le_bytes());
}

/// Validates a frame at `data[off..]`: its payload range when the header and checksum are good.
fn frame_at(data: &[u8], off: usize, max_frame: usize) -> Option<std::ops::Range<usize>> {
    let header = data.get(off..off + HEADER)?;
    let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if magic != MAGIC || len == 0 || len > max_frame {
        return None;
    }
    let payload = data.get(off + HEADER..off + HEADER + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(len as u32).to_le_bytes());
    hasher.update(payload);
    (hasher.finalize() == crc).then_some(off + HEADER..off + HEADER + len)
}

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The path of the checkpoint that covers the segments before `seq`.
pub(crate) fn checkpoint_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.ckpt"))
}

/// What a store directory holds.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segment numbers, sorted.
    pub(crate) segments: Vec<u64>,
    /// Checkpoints (by the segment they end before), sorted.
    pub(crate) checkpoints: Vec<u64>,
    /// Checkpoints never completed (`.ckpt.tmp`): a crash while writing one.
    pub(crate) temps: Vec<PathBuf>,
}

/// Lists the log files in `dir`.
pub(crate) fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".ckpt.tmp") {
            listing.temps.push(entry.path());
        } else if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse().ok()) {
            listing.segments.push(seq);
        } else if let Some(seq) = name.strip_suffix(".ckpt").and_then(|s| s.parse().ok()) {
            listing.checkpoints.push(seq);
        }
    }
    listing.segments.sort_unstable();
    listing.checkpoints.sort_unstable();
    Ok(listing)
}

/// Checks that `seqs` run without a gap from `first`.
pub(crate) fn check_contiguous(dir: &Path, seqs: &[u64], first: u64) -> Result<()> {
    for (i, &seq) in seqs.iter().enumerate() {
        let expected = first + i as u64;
        if seq != expected {
            return Err(Error::Corrupt {
                path: dir.to_owned(),
                offset: 0,
                reason: format!("log segment {expected} is missing"),
            });
        }
    }
    Ok(())
}

/// Reads checkpoint `path` whole: `apply(payload_file_offset, payload)` per frame. Every frame
/// must be valid up to the end of the file.
pub(crate) fn read_checkpoint(
    path: &Path,
    mut apply: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut off = 0;
    while off < data.len() {
        let Some(payload) = frame_at(&data, off, MAX_CHECKPOINT_FRAME) else {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: off as u64,
                reason: "bad checkpoint frame".into(),
            });
        };
        apply(payload.start as u64, &data[payload.clone()])?;
        off = payload.end;
    }
    Ok(data.len() as u64)
}

/// The largest frame in a checkpoint (a frame holds at least one whole record; values are
/// smaller than 4 MiB).
pub(crate) const MAX_CHECKPOINT_FRAME: usize = 16 << 20;

/// Creates segment `seq` at its full size, durably (file and directory entry).
pub(crate) fn create_segment(dir: &Path, seq: u64, size: u64) -> Result<File> {
    let path = segment_path(dir, seq);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, size as i64)
        .map_err(|e| Error::io(&path, io::Error::from(e)))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a directory's entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Where the log ends after recovery: the last segment and the offset of its first free byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    /// Bytes of a torn last frame that recovery zeroed.
    pub(crate) torn_bytes: u64,
}

/// The largest frame a segment of `segment_size` bytes holds.
pub(crate) fn max_frame(segment_size: u64) -> usize {
    ((segment_size / 2) as usize).min(8 << 20)
}

/// Replays every frame of the segments `seqs` in `dir`: `apply(seq, payload_file_offset,
/// payload)` per frame. Repairs a torn tail (see the module documentation) and fails on
/// corruption. Each segment's frame limit follows from its size, so segments written with other
/// options replay too.
pub(crate) fn recover(
    dir: &Path,
    seqs: &[u64],
    mut apply: impl FnMut(u64, u64, &[u8]) -> Result<()>,
) -> Result<Tail> {
    let mut tail = Tail {
        seq: 0,
        offset: 0,
        torn_bytes: 0,
    };
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let max_frame = max_frame(data.len() as u64);
        let corrupt = |offset: usize, reason: &str| Error::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: reason.to_owned(),
        };
        let mut off = 0;
        let end = loop {
            if off + HEADER > data.len() || data[off..off + HEADER].iter().all(|b| *b == 0) {
                break off;
            }
            let Some(payload) = frame_at(&data, off, max_frame) else {
                break off;
            };
            let file_off = payload.start as u64;
            let next = payload.end;
            match decode(&data[payload], |_, _| Ok(())) {
                Ok(_) => {}
                Err(reason) => return Err(corrupt(off, reason)),
            }
            apply(seq, file_off, &data[off + HEADER..next])?;
            off = next;
        };
        let rest = &data[end..];
        if rest.iter().all(|b| *b == 0) {
            tail = Tail {
                seq,
                offset: end as u64,
                torn_bytes: 0,
            };
            continue;
        }
        // Something non-zero after the last good frame: a torn last write, or corruption.
        if !last {
            return Err(corrupt(end, "checksum mismatch before the end of the log"));
        }
        let window = (HEADER + max_frame).min(rest.len());
        if (1..window).any(|d| frame_at(&data, end + d, max_frame).is_some()) {
            return Err(corrupt(end, "checksum mismatch followed by valid frames"));
        }
        if rest[window..].iter().any(|b| *b != 0) {
            return Err(corrupt(end, "checksum mismatch followed by more data"));
        }
        // Torn: zero it, durably, so the next append starts from clean space.
        let torn = rest[..window]
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |p| p + 1);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all_at(&vec![0; torn], end as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        tracing::warn!(path = %path.display(), offset = end, bytes = torn, "truncated a torn log tail");
        tail = Tail {
            seq,
            offset: end as u64,
            torn_bytes: torn as u64,
        };
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Put {
                revision: 7,
                lease: Some(3),
                key: "/a",
                value: b"hello",
            },
            Record::Put {
                revision: 8,
                lease: None,
                key: "/b",
                value: b"",
            },
            Record::Delete {
                revision: 9,
                key: "/a",
            },
            Record::Grant {
                id: 3,
                ttl_secs: 10,
            },
            Record::Revoke { id: 3 },
            Record::Compact { revision: 5 },
            Record::Checkpoint {
                revision: 9,
                compacted: 5,
                next_lease: 4,
                segment: 2,
            },
            Record::Version {
                key: "/a",
                mod_revision: 7,
                create_revision: 6,
                version: 2,
                lease: Some(3),
                value: Some(b"hello"),
            },
            Record::Version {
                key: "/a",
                mod_revision: 9,
                create_revision: 0,
                version: 0,
                lease: None,
                value: None,
            },
        ];
        let mut buf = Vec::new();
        let mut value_at = None;
        for r in &records {
            let before = buf.len();
            let at = r.encode(&mut buf);
            value_at = value_at.or(at);
            assert_eq!(buf.len() - before, r.encoded_len());
        }
        assert_eq!(&buf[value_at.unwrap()..value_at.unwrap() + 5], b"hello");
        let mut decoded = Vec::new();
        decode(&buf, |r, _| {
            decoded.push(format!("{r:?}"));
            Ok(())
        })
        .unwrap()
        .unwrap();
        let expected: Vec<_> = records.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(decoded, expected);
        assert!(decode(&buf[..buf.len() - 1], |_, _| Ok(())).is_err());
    }
}
