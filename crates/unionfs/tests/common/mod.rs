//! Helpers shared by the integration tests: a tar writer that puts any bytes in a name (so
//! hostile archives can be built), and a tree snapshot for comparing directories.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::{EntryType, Header};

/// Builds layer tars entry by entry, writing names verbatim (no sanitising).
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(path: &str, entry_type: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        {
            let name = &mut h.as_old_mut().name;
            assert!(path.len() <= name.len(), "test paths fit the header");
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        h.set_entry_type(entry_type);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn link_header(path: &str, entry_type: EntryType, target: &str) -> Header {
        let mut h = Self::header(path, entry_type, 0o777, 0);
        let link = &mut h.as_old_mut().linkname;
        link.fill(0);
        link[..target.len()].copy_from_slice(target.as_bytes());
        h
    }

    fn push(mut self, mut h: Header, data: &[u8]) -> Self {
        h.set_cksum();
        self.builder.append(&h, data).expect("append");
        self
    }

    pub fn file(self, path: &str, content: &[u8]) -> Self {
        self.file_mode(path, content, 0o644)
    }

    pub fn file_mode(self, path: &str, content: &[u8], mode: u32) -> Self {
        let h = Self::header(path, EntryType::Regular, mode, content.len() as u64);
        self.push(h, content)
    }

    pub fn dir(self, path: &str) -> Self {
        let h = Self::header(path, EntryType::Directory, 0o755, 0);
        self.push(h, &[])
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        let h = Self::link_header(path, EntryType::Symlink, target);
        self.push(h, &[])
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        let h = Self::link_header(path, EntryType::Link, target);
        self.push(h, &[])
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(path, EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, &[])
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish")
    }
}

/// What a tree looks like: path → description (type, mode, owner, content or link target, and
/// which hard-link group it is in).
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let md = entry.path().symlink_metadata().expect("lstat");
        let ft = md.file_type();
        let desc = if ft.is_dir() {
            format!("dir {:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid())
        } else if ft.is_symlink() {
            format!(
                "symlink -> {}",
                std::fs::read_link(entry.path()).unwrap().display()
            )
        } else if ft.is_file() {
            let content = std::fs::read(entry.path()).unwrap();
            let group = if md.nlink() > 1 {
                inodes
                    .entry(md.ino())
                    .or_insert_with(|| rel.clone())
                    .clone()
            } else {
                String::new()
            };
            format!(
                "file {:o} {}:{} mtime={} {:?} link-group={group}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                String::from_utf8_lossy(&content)
            )
        } else {
            format!("special {:o} rdev={}", md.mode(), md.rdev())
        };
        out.insert(rel, desc);
    }
    out
}

/// The entries of a tar: (path, type, link target, content).
pub fn entries(tar_bytes: &[u8]) -> Vec<(String, char, String, Vec<u8>)> {
    use std::io::Read;
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let kind = entry.header().entry_type().as_byte() as char;
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((path, kind, link, data));
    }
    out
}
