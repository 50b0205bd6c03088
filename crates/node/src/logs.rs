//! Container logs on disk in the kubelet's CRI format: one line per record,
//! `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`, `P` marking a partial line
//! (split at [`MAX_LINE`] bytes or ended without a newline). Files live at
//! `<root>/logs/<namespace>_<pod>_<uid>/<container>/<restart>.log`, as under `/var/log/pods`;
//! a file over its size limit is rotated to `<restart>.log.1`, `.2`, ... (the oldest dropped).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};

/// Lines longer than this are written as several partial records (the kubelet's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// How logs rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// Rotate a file once it is larger than this (the kubelet's `containerLogMaxSize`, 10 MiB).
    pub max_bytes: u64,
    /// Files kept per container attempt, the live one included (`containerLogMaxFiles`, 5).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 10 << 20,
            max_files: 5,
        }
    }
}

/// Appends CRI records to a log file, rotating it by size.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl Writer {
    /// Opens (appending, creating) the log at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Writer> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            path: path.to_owned(),
            file,
            size,
            rotation,
        })
    }

    /// Writes `text` (without its newline) as records of `stream`; `complete` says whether a
    /// newline ended it.
    pub fn write(&mut self, stream: &str, text: &[u8], complete: bool) -> std::io::Result<()> {
        let mut chunks = text.chunks(MAX_LINE).peekable();
        if text.is_empty() {
            return self.record(stream, b"", complete);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.record(stream, chunk, last && complete)?;
        }
        Ok(())
    }

    fn record(&mut self, stream: &str, text: &[u8], full: bool) -> std::io::Result<()> {
        let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(stamp.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(if full { b" F " } else { b" P " });
        line.extend_from_slice(text);
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        if self.size > self.rotation.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.rotation.max_files.max(1) - 1;
        if keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(&self.path, keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Copies `reader` (a container's stdout or stderr) into the log until it ends.
    pub fn copy_from(writer: &std::sync::Mutex<Writer>, stream: &str, reader: impl std::io::Read) {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let complete = buf.last() == Some(&b'\n');
            if complete {
                buf.pop();
            }
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.write(stream, &buf, complete).is_err() {
                return;
            }
        }
    }
}

use std::io::Read as _;

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// One record of a CRI log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it was written (RFC 3339 with nanoseconds).
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Whether the line continues in the next record.
    pub partial: bool,
    /// The text, without its newline.
    pub text: Vec<u8>,
}

/// Parses one CRI log line (without its newline); `None` for a malformed line.
pub fn parse_line(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let stream = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default().to_vec();
    Some(Record {
        timestamp,
        stream,
        partial: tag.first() == Some(&b'P'),
        text,
    })
}

/// Every record of a container attempt's log, rotated files first (oldest first).
pub fn read_all(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut files = Vec::new();
    for n in (1..64).rev() {
        let p = numbered(path, n);
        if p.exists() {
            files.push(p);
        }
    }
    files.push(path.to_owned());
    let mut out = Vec::new();
    for file in files {
        let Ok(f) = File::open(&file) else { continue };
        for line in BufReader::new(f).split(b'\n') {
            if let Some(r) = parse_line(&line?) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_partial_lines_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let rotation = Rotation {
            max_bytes: 200,
            max_files: 3,
        };
        let mut w = Writer::open(&path, rotation).unwrap();
        w.write("stdout", b"hello", true).unwrap();
        w.write("stderr", b"half", false).unwrap();
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].stream, "stdout");
        assert_eq!(records[0].text, b"hello");
        assert!(!records[0].partial);
        assert!(records[1].partial);
        assert!(records[0].timestamp.ends_with('Z'));
        for i in 0..40 {
            w.write("stdout", format!("line {i}").as_bytes(), true)
                .unwrap();
        }
        assert!(numbered(&path, 1).exists());
        assert!(numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists(), "at most max_files files");
        assert!(std::fs::metadata(&path).unwrap().len() <= 200 + 64);
        let records = read_all(&path).unwrap();
        assert_eq!(records.last().unwrap().text, b"line 39");
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = std::sync::Mutex::new(Writer::open(&path, Rotation::default()).unwrap());
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.push(b'\n');
        input.extend_from_slice(b"tail");
        Writer::copy_from(&w, "stdout", &input[..]);
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert!(records[0].partial);
        assert_eq!(records[1].text.len(), 10);
        assert!(!records[1].partial);
        assert!(records[2].partial, "no newline at the end");
    }
}
