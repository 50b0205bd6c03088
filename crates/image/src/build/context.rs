//! COPY/ADD sources from the build context: resolving paths and globs inside the context
//! (never outside it, never what `.dockerignore` hides), a content digest for the layer cache
//! (paths, types, modes and contents; not timestamps), and the deterministic tar stream that puts
//! the sources at their destination (sorted, fixed mtime, owner from `--chown`; ADD extracts
//! local tar archives, plain, gzip or zstd).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use berth_api::{Algorithm, Digest, Hasher};
use globset::GlobBuilder;
use walkdir::WalkDir;

use super::ignore::Ignore;

/// What one COPY/ADD copies, relative to the "copy root" (a directory source contributes its
/// contents, a file source its base name).
#[derive(Debug)]
pub(crate) struct CopyPlan {
    items: BTreeMap<String, Item>,
    /// Exactly one source, a regular file: it may be copied *to* a non-directory destination.
    pub(crate) single_file: bool,
}

#[derive(Debug)]
struct Item {
    src: PathBuf,
    kind: ItemKind,
    mode: u32,
    size: u64,
}

#[derive(Debug, PartialEq)]
enum ItemKind {
    Dir,
    File,
    Symlink(PathBuf),
    /// ADD of a local archive: extracted at the destination.
    Archive(ArchiveFormat),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArchiveFormat {
    Tar,
    Gzip,
    Zstd,
}

/// Ownership, permissions and timestamp of the entries written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryOptions {
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) chmod: Option<u32>,
    pub(crate) mtime: u64,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a context-relative source lexically; `None` when it leaves the context.
fn clean_relative(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(source).components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(p) => parts.push(p.to_str()?),
        }
    }
    Some(parts.join("/"))
}

impl CopyPlan {
    /// Resolves `sources` (already expanded) in `context`. `add` enables archive extraction.
    pub(crate) fn new(
        context: &Path,
        ignore: &Ignore,
        sources: &[String],
        add: bool,
    ) -> Result<CopyPlan, String> {
        let context_real = fs::canonicalize(context)
            .map_err(|e| format!("build context {}: {e}", context.display()))?;
        let mut plan = CopyPlan {
            items: BTreeMap::new(),
            single_file: false,
        };
        let mut matched_files = 0usize;
        let mut matched_total = 0usize;
        for source in sources {
            if source.contains("://") || source.starts_with("git@") {
                return Err(format!(
                    "{source}: remote sources (URLs, git) are not supported"
                ));
            }
            let rel = clean_relative(source)
                .ok_or_else(|| format!("{source}: forbidden path outside the build context"))?;
            let matches: Vec<String> = if has_glob(&rel) {
                let glob = GlobBuilder::new(&rel)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("{source}: bad pattern: {e}"))?
                    .compile_matcher();
                let mut found = Vec::new();
                walk(context, "", ignore, &mut |r, _| {
                    if glob.is_match(r) {
                        found.push(r.to_owned());
                    }
                })?;
                // A matched directory already brings everything below it.
                let mut kept: Vec<String> = Vec::new();
                for r in found {
                    if !kept.iter().any(|p| r.starts_with(&format!("{p}/"))) {
                        kept.push(r);
                    }
                }
                let found = kept;
                if found.is_empty() {
                    return Err(format!("{source}: no source files match"));
                }
                found
            } else {
                if !rel.is_empty() && ignore.is_excluded(&rel) {
                    return Err(format!(
                        "{source}: not found in the build context (excluded by .dockerignore)"
                    ));
                }
                vec![rel]
            };
            for rel in matches {
                matched_total += 1;
                let path = if rel.is_empty() {
                    context.to_path_buf()
                } else {
                    context.join(&rel)
                };
                let mut meta = fs::symlink_metadata(&path)
                    .map_err(|e| format!("{source}: not found in the build context ({e})"))?;
                let mut real = path.clone();
                if meta.file_type().is_symlink() {
                    // A top-level symlink is followed, but only to somewhere inside the context.
                    real = fs::canonicalize(&path)
                        .map_err(|e| format!("{source}: dangling symlink ({e})"))?;
                    if !real.starts_with(&context_real) {
                        return Err(format!(
                            "{source}: symlink points outside the build context"
                        ));
                    }
                    meta = fs::metadata(&real).map_err(|e| format!("{source}: {e}"))?;
                }
                if meta.is_dir() {
                    let walk_rel = rel.clone();
                    let mut failure = None;
                    walk(&real, &walk_rel, ignore, &mut |item_rel, entry| {
                        if failure.is_none()
                            && let Err(e) = plan.add_entry(item_rel, entry)
                        {
                            failure = Some(e);
                        }
                    })?;
                    if let Some(e) = failure {
                        return Err(e);
                    }
                } else if meta.is_file() {
                    matched_files += 1;
                    let name = Path::new(&rel)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| format!("{source}: has no file name"))?
                        .to_owned();
                    let kind = if add {
                        archive_format(&real).map_or(ItemKind::File, ItemKind::Archive)
                    } else {
                        ItemKind::File
                    };
                    plan.items.insert(
                        name,
                        Item {
                            src: real,
                            kind,
                            mode: meta.mode() & 0o7777,
                            size: meta.len(),
                        },
                    );
                } else {
                    return Err(format!("{source}: not a regular file or directory"));
                }
            }
        }
        plan.single_file = matched_total == 1
            && matched_files == 1
            && !has_glob(sources.first().map_or("", String::as_str))
            && plan.items.values().all(|i| i.kind == ItemKind::File);
        Ok(plan)
    }

    /// Adds one walked entry (`rel` relative to the directory source).
    fn add_entry(&mut self, rel: &str, entry: &walkdir::DirEntry) -> Result<(), String> {
        let meta = entry
            .metadata()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let kind = if meta.is_dir() {
            ItemKind::Dir
        } else if meta.file_type().is_symlink() {
            ItemKind::Symlink(
                fs::read_link(entry.path())
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?,
            )
        } else if meta.is_file() {
            ItemKind::File
        } else {
            return Ok(()); // sockets, fifos and devices in a context are not copied
        };
        self.items.insert(
            rel.to_owned(),
            Item {
                src: entry.path().to_owned(),
                kind,
                mode: meta.mode() & 0o7777,
                size: meta.len(),
            },
        );
        Ok(())
    }

    /// The digest of everything the layer depends on: names, types, modes, sizes, link targets
    /// and file contents (timestamps and owners of the context do not count).
    pub(crate) fn digest(&self) -> io::Result<Digest> {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(if self.single_file {
            b"single\0"
        } else {
            b"multi\0"
        });
        let mut buf = vec![0u8; 64 * 1024];
        for (rel, item) in &self.items {
            let (kind, link) = match &item.kind {
                ItemKind::Dir => ("d", String::new()),
                ItemKind::File => ("f", String::new()),
                ItemKind::Archive(_) => ("a", String::new()),
                ItemKind::Symlink(t) => ("l", t.to_string_lossy().into_owned()),
            };
            hasher.update(
                format!("{rel}\0{kind}\0{:o}\0{}\0{link}\0", item.mode, item.size).as_bytes(),
            );
            if matches!(item.kind, ItemKind::File | ItemKind::Archive(_)) {
                let mut file = File::open(&item.src)?;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            }
        }
        Ok(hasher.finish())
    }

    /// Writes the tar stream placing the sources under `dest` (root-relative, `/`-separated, no
    /// leading `/`; empty for the root). `dirs` are directory entries to create first (missing
    /// ancestors of the destination). With `as_file`, the single file source is written *as*
    /// `dest` instead of into it.
    pub(crate) fn write_tar(
        &self,
        out: impl Write,
        dest: &str,
        as_file: bool,
        dirs: &[String],
        opts: EntryOptions,
    ) -> io::Result<()> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Deterministic);
        for dir in dirs {
            let mut header = header(tar::EntryType::Directory, 0o755, 0, opts);
            header.set_mode(0o755);
            builder.append_data(&mut header, format!("{dir}/"), io::empty())?;
        }
        let join = |rel: &str| {
            if dest.is_empty() {
                rel.to_owned()
            } else {
                format!("{dest}/{rel}")
            }
        };
        for (rel, item) in &self.items {
            let name = if as_file { dest.to_owned() } else { join(rel) };
            let mode = opts.chmod.unwrap_or(item.mode);
            match &item.kind {
                ItemKind::Dir => {
                    let mut h = header(tar::EntryType::Directory, mode, 0, opts);
                    builder.append_data(&mut h, format!("{name}/"), io::empty())?;
                }
                ItemKind::File => {
                    let mut h = header(tar::EntryType::Regular, mode, item.size, opts);
                    let file = File::open(&item.src)?;
                    // A file that changes size while being read would corrupt the stream.
                    builder.append_data(&mut h, &name, file.take(item.size))?;
                }
                ItemKind::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, opts);
                    builder.append_link(&mut h, &name, target)?;
                }
                ItemKind::Archive(format) => {
                    extract_into(&mut builder, &item.src, *format, dest)?;
                }
            }
        }
        builder.into_inner()?.flush()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, opts: EntryOptions) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(opts.uid);
    h.set_gid(opts.gid);
    h.set_mtime(opts.mtime);
    h
}

/// Walks `dir` in sorted order, calling `f` with each entry's path relative to `dir`
/// (`base`-relative paths are what `.dockerignore` sees). Excluded entries are skipped.
fn walk(
    dir: &Path,
    base: &str,
    ignore: &Ignore,
    f: &mut dyn FnMut(&str, &walkdir::DirEntry),
) -> Result<(), String> {
    let context_rel = |rel: &Path| -> String {
        let rel = rel.to_string_lossy();
        if base.is_empty() {
            rel.into_owned()
        } else {
            format!("{base}/{rel}")
        }
    };
    let walker = WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    let walker = walker.filter_entry(|e| {
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        !(e.file_type().is_dir() && ignore.prunes(&context_rel(rel)))
    });
    for entry in walker {
        let entry = entry.map_err(|e| format!("reading the build context: {e}"))?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        if ignore.is_excluded(&context_rel(rel)) {
            continue;
        }
        let Some(rel) = rel.to_str() else {
            return Err(format!(
                "{}: file names must be UTF-8",
                entry.path().display()
            ));
        };
        f(rel, &entry);
    }
    Ok(())
}

/// Sniffs a local file: a tar archive (possibly gzip or zstd compressed) or not.
fn archive_format(path: &Path) -> Option<ArchiveFormat> {
    let mut head = [0u8; 512];
    let mut file = File::open(path).ok()?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        Some(ArchiveFormat::Gzip)
    } else if n >= 4 && head[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Some(ArchiveFormat::Zstd)
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Some(ArchiveFormat::Tar)
    } else {
        None
    }
}

/// Copies the entries of a local archive into `builder`, below `dest`.
fn extract_into<W: Write>(
    builder: &mut tar::Builder<W>,
    src: &Path,
    format: ArchiveFormat,
    dest: &str,
) -> io::Result<()> {
    let file = BufReader::new(File::open(src)?);
    let reader: Box<dyn Read> = match format {
        ArchiveFormat::Tar => Box::new(file),
        ArchiveFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        ArchiveFormat::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
    };
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", src.display()),
        )
    };
    let relocate = |path: &Path| -> io::Result<String> {
        let rel = clean_relative(
            path.to_str()
                .ok_or_else(|| bad("entry names must be UTF-8"))?,
        )
        .ok_or_else(|| bad("an entry leaves the destination (..)"))?;
        Ok(match (dest.is_empty(), rel.is_empty()) {
            (_, true) => dest.to_owned(),
            (true, false) => rel,
            (false, false) => format!("{dest}/{rel}"),
        })
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let name = relocate(&entry.path()?)?;
        if name.is_empty() {
            continue;
        }
        let kind = header.entry_type();
        if kind.is_hard_link() {
            let target = entry
                .link_name()?
                .ok_or_else(|| bad("a hard link without a target"))?;
            let target = relocate(&target)?;
            builder.append_link(&mut header, &name, target)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()?
                .ok_or_else(|| bad("a symlink without a target"))?
                .into_owned();
            builder.append_link(&mut header, &name, target)?;
        } else if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        } else {
            let name = if kind.is_dir() {
                format!("{name}/")
            } else {
                name
            };
            builder.append_data(&mut header, name, &mut entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join("src/sub")).unwrap();
        fs::write(p.join("src/a.txt"), "a").unwrap();
        fs::write(p.join("src/sub/b.txt"), "bb").unwrap();
        fs::write(p.join("src/skip.log"), "x").unwrap();
        fs::write(p.join("top.txt"), "top").unwrap();
        std::os::unix::fs::symlink("a.txt", p.join("src/link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("escape")).unwrap();
        dir
    }

    fn names(plan: &CopyPlan) -> Vec<&str> {
        plan.items.keys().map(String::as_str).collect()
    }

    fn tar_names(plan: &CopyPlan, dest: &str, as_file: bool) -> Vec<String> {
        let mut out = Vec::new();
        let opts = EntryOptions {
            uid: 0,
            gid: 0,
            chmod: None,
            mtime: 0,
        };
        plan.write_tar(&mut out, dest, as_file, &["opt".into()], opts)
            .unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn directories_files_globs_and_ignore() {
        let ctx = context();
        let ignore = Ignore::parse("**/*.log\n").unwrap();
        let plan = CopyPlan::new(ctx.path(), &ignore, &["src".into()], false).unwrap();
        assert_eq!(names(&plan), ["a.txt", "link", "sub", "sub/b.txt"]);
        assert!(!plan.single_file);
        assert_eq!(
            tar_names(&plan, "opt/app", false),
            [
                "opt/",
                "opt/app/a.txt",
                "opt/app/link",
                "opt/app/sub/",
                "opt/app/sub/b.txt"
            ]
        );

        let plan = CopyPlan::new(ctx.path(), &ignore, &["./top.txt".into()], false).unwrap();
        assert!(plan.single_file);
        assert_eq!(tar_names(&plan, "etc/x.conf", true)[1], "etc/x.conf");

        let plan = CopyPlan::new(
            ctx.path(),
            &ignore,
            &["src/*.txt".into(), "*.txt".into()],
            false,
        )
        .unwrap();
        assert_eq!(names(&plan), ["a.txt", "top.txt"]);
        assert!(!plan.single_file);
    }

    #[test]
    fn sources_never_leave_the_context() {
        let ctx = context();
        let ignore = Ignore::parse("src/skip.log\n").unwrap();
        let err = |s: &str| CopyPlan::new(ctx.path(), &ignore, &[s.into()], false).unwrap_err();
        assert!(err("../x").contains("outside the build context"));
        assert!(err("escape").contains("outside the build context"));
        assert!(err("src/skip.log").contains("excluded by .dockerignore"));
        assert!(err("missing").contains("not found"));
        assert!(err("*.nothing").contains("no source files match"));
        assert!(err("http://example.com/x").contains("not supported"));
    }

    #[test]
    fn digest_tracks_content_not_time() {
        let ctx = context();
        let ignore = Ignore::default();
        let d1 = CopyPlan::new(ctx.path(), &ignore, &["src".into()], false)
            .unwrap()
            .digest()
            .unwrap();
        let f = File::options()
            .write(true)
            .open(ctx.path().join("src/a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let d2 = CopyPlan::new(ctx.path(), &ignore, &["src".into()], false)
            .unwrap()
            .digest()
            .unwrap();
        assert_eq!(d1, d2);
        fs::write(ctx.path().join("src/a.txt"), "changed").unwrap();
        let d3 = CopyPlan::new(ctx.path(), &ignore, &["src".into()], false)
            .unwrap()
            .digest()
            .unwrap();
        assert_ne!(d1, d3);
    }

    #[test]
    fn add_extracts_local_archives() {
        let ctx = context();
        let mut archive = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        archive
            .append_data(&mut h, "inner/file", &b"hi"[..])
            .unwrap();
        let bytes = archive.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        fs::write(ctx.path().join("files.tar.gz"), gz.finish().unwrap()).unwrap();
        let plan = CopyPlan::new(
            ctx.path(),
            &Ignore::default(),
            &["files.tar.gz".into()],
            true,
        )
        .unwrap();
        assert!(!plan.single_file);
        assert_eq!(tar_names(&plan, "opt", false), ["opt/", "opt/inner/file"]);
        // COPY does not extract.
        let plan = CopyPlan::new(
            ctx.path(),
            &Ignore::default(),
            &["files.tar.gz".into()],
            false,
        )
        .unwrap();
        assert!(plan.single_file);
    }
}
