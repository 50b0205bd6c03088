//! COPY/ADD sources from the build context: resolving paths and globs inside the context
//! (never outside it, never what `.dockerignore` hides), a content digest for the layer cache
//! (paths, types, modes and contents; not timestamps), and the deterministic tar stream that puts
//! the sources at their destination (sorted, fixed mtime, owner from `--chown`; ADD extracts
//! local tar archives, plain, gzip or zstd).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use berth_api::{Algorithm, Digest, Hasher};
use berth_unionfs::fsroot::{RootDir, kind, list_sorted, lstat_at, open_subdir};
use globset::GlobBuilder;
use nix::errno::Errno;
use nix::fcntl::{OFlag, readlinkat};
use nix::sys::stat::{SFlag, fstat};

use crate::ignore::Ignore;

/// What one COPY/ADD copies, relative to the "copy root" (a directory source contributes its
/// contents, a file source its base name).
#[derive(Debug)]
pub(crate) struct CopyPlan {
    /// The directory sources are resolved in (the build context).
    root: RootDir,
    items: BTreeMap<String, Item>,
    /// Exactly one source, a regular file: it may be copied *to* a non-directory destination.
    pub(crate) single_file: bool,
}

#[derive(Debug)]
struct Item {
    /// The resolved source path, relative to the plan's root (no symlinks in it).
    src: String,
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

/// Why a source could not be resolved.
enum Unresolved {
    /// Missing, dangling, or hidden by `.dockerignore` (Docker says "not found" for all three).
    NotFound(&'static str),
    /// Any other failure (a symlink loop, an I/O error).
    Other(String),
}

/// The most symlinks followed while resolving one source (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

const EXCLUDED: &str = " (excluded by .dockerignore)";

/// Resolves the context-relative `rel` inside `root` as the kernel would with `root` as `/`,
/// one component at a time so that every path it passes through is checked against `ignore`:
/// an excluded symlink or directory on the way, or an excluded final path, is "not found" (Docker
/// never sends excluded files to the builder, so a link cannot reach them either). A symlink as
/// the last component is followed too. Returns the resolved path (no symlinks, `/`-separated,
/// empty for the root) and an `O_PATH` fd on it.
fn resolve(root: &RootDir, rel: &str, ignore: &Ignore) -> Result<(String, OwnedFd), Unresolved> {
    let open = |path: &str| {
        root.open_at(Path::new(path), OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|e| match e {
                Errno::ENOENT | Errno::ENOTDIR => Unresolved::NotFound(""),
                e => Unresolved::Other(e.desc().to_owned()),
            })
    };
    let components = |path: &str| -> Vec<String> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_owned)
            .collect()
    };
    let mut todo = components(rel);
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(component) = todo.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => done.push(component),
        }
        let path = done.join("/");
        let fd = open(&path)?;
        let st = fstat(&fd).map_err(|e| Unresolved::Other(e.desc().to_owned()))?;
        let last = todo.is_empty();
        match kind(&st) {
            SFlag::S_IFLNK => {
                if ignore.is_excluded(&path) {
                    return Err(Unresolved::NotFound(EXCLUDED));
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Unresolved::Other(
                        "too many levels of symbolic links".into(),
                    ));
                }
                let target =
                    readlinkat(&fd, "").map_err(|e| Unresolved::Other(e.desc().to_owned()))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| Unresolved::Other("symlink targets must be UTF-8".into()))?;
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(components(target));
            }
            SFlag::S_IFDIR if !last && ignore.prunes(&path) => {
                return Err(Unresolved::NotFound(EXCLUDED));
            }
            _ if last && ignore.is_excluded(&path) => {
                return Err(Unresolved::NotFound(EXCLUDED));
            }
            SFlag::S_IFDIR => {}
            _ if !last => return Err(Unresolved::NotFound("")),
            _ => {}
        }
    }
    let path = done.join("/");
    let fd = open(&path)?;
    Ok((path, fd))
}

/// Resolves `rel` inside `root` as a COPY source is resolved (links followed inside the root,
/// `.dockerignore` applied to what it resolves to); returns the resolved relative path.
pub(crate) fn resolve_path(root: &Path, rel: &str, ignore: &Ignore) -> Result<String, String> {
    let dir = RootDir::open(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let rel = clean_relative(rel).ok_or("a path outside the root")?;
    resolve(&dir, &rel, ignore)
        .map(|(path, _)| path)
        .map_err(|e| match e {
            Unresolved::NotFound(why) => format!("not found{why}"),
            Unresolved::Other(e) => e,
        })
}

impl CopyPlan {
    /// Resolves `sources` (already expanded) in `context`. `add` enables archive extraction.
    /// Every path is resolved inside the context (see [`resolve`]) and every file is later
    /// opened through the context's directory fd, so nothing outside it can be read.
    pub(crate) fn new(
        context: &Path,
        ignore: &Ignore,
        sources: &[String],
        add: bool,
    ) -> Result<CopyPlan, String> {
        let root = RootDir::open(context)
            .map_err(|e| format!("build context {}: {e}", context.display()))?;
        let mut plan = CopyPlan {
            root,
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
                walk(&plan.root, "", ignore, &mut |r, _| {
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
                if kept.is_empty() {
                    return Err(format!("{source}: no source files match"));
                }
                kept
            } else {
                if !rel.is_empty() && ignore.is_excluded(&rel) {
                    return Err(format!(
                        "{source}: not found in the build context{EXCLUDED}"
                    ));
                }
                vec![rel]
            };
            for rel in matches {
                matched_total += 1;
                let (real, fd) = resolve(&plan.root, &rel, ignore).map_err(|e| match e {
                    Unresolved::NotFound(why) => {
                        format!("{source}: not found in the build context{why}")
                    }
                    Unresolved::Other(e) => format!("{source}: {e}"),
                })?;
                let st = fstat(&fd).map_err(|e| format!("{source}: {e}"))?;
                match kind(&st) {
                    SFlag::S_IFDIR => {
                        let mut failure = None;
                        let items = &mut plan.items;
                        walk(&plan.root, &real, ignore, &mut |item_rel, entry| {
                            if failure.is_none()
                                && let Err(e) = add_entry(items, &real, item_rel, entry)
                            {
                                failure = Some(e);
                            }
                        })?;
                        if let Some(e) = failure {
                            return Err(e);
                        }
                    }
                    SFlag::S_IFREG => {
                        matched_files += 1;
                        let name = Path::new(&rel)
                            .file_name()
                            .and_then(|n| n.to_str())
                            .ok_or_else(|| format!("{source}: has no file name"))?
                            .to_owned();
                        let kind = if add {
                            archive_format(&plan.root, &real)
                                .map_or(ItemKind::File, ItemKind::Archive)
                        } else {
                            ItemKind::File
                        };
                        plan.items.insert(
                            name,
                            Item {
                                src: real,
                                kind,
                                mode: st.st_mode & 0o7777,
                                size: st.st_size as u64,
                            },
                        );
                    }
                    _ => return Err(format!("{source}: not a regular file or directory")),
                }
            }
        }
        plan.single_file = matched_total == 1
            && matched_files == 1
            && !has_glob(sources.first().map_or("", String::as_str))
            && plan.items.values().all(|i| i.kind == ItemKind::File);
        Ok(plan)
    }

    /// Opens the resolved source file `rel` (a symlink in its place is refused).
    fn open(&self, rel: &str) -> io::Result<File> {
        self.root
            .open_at(Path::new(rel), OFlag::O_RDONLY | OFlag::O_NOFOLLOW)
            .map(File::from)
            .map_err(|e| io::Error::other(format!("{rel}: {e}")))
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
                let mut file = self.open(&item.src)?;
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
                    let file = self.open(&item.src)?;
                    // A file that changes size while being read would corrupt the stream.
                    builder.append_data(&mut h, &name, file.take(item.size))?;
                }
                ItemKind::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, opts);
                    builder.append_link(&mut h, &name, target)?;
                }
                ItemKind::Archive(format) => {
                    let file = self.open(&item.src)?;
                    extract_into(&mut builder, file, &item.src, *format, dest)?;
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

/// One entry met by [`walk`]: `kind` is `None` for what is never copied (sockets, fifos,
/// devices).
struct Entry {
    kind: Option<ItemKind>,
    mode: u32,
    size: u64,
}

/// Adds one walked entry (`rel` relative to the directory source at `base`).
fn add_entry(
    items: &mut BTreeMap<String, Item>,
    base: &str,
    rel: &str,
    entry: &Entry,
) -> Result<(), String> {
    let Some(kind) = &entry.kind else {
        return Ok(());
    };
    let kind = match kind {
        ItemKind::Dir => ItemKind::Dir,
        ItemKind::Symlink(target) => ItemKind::Symlink(target.clone()),
        _ => ItemKind::File,
    };
    let src = if base.is_empty() {
        rel.to_owned()
    } else {
        format!("{base}/{rel}")
    };
    items.insert(
        rel.to_owned(),
        Item {
            src,
            kind,
            mode: entry.mode,
            size: entry.size,
        },
    );
    Ok(())
}

/// Walks the resolved directory `base` of `root` in sorted order, calling `f` with each entry's
/// path relative to `base` (`base`-joined paths are what `.dockerignore` sees). Excluded entries
/// are skipped. Symlinks are reported as symlinks, never followed; every directory is opened
/// from its parent's fd without following links, so the walk cannot leave the root.
fn walk(
    root: &RootDir,
    base: &str,
    ignore: &Ignore,
    f: &mut dyn FnMut(&str, &Entry),
) -> Result<(), String> {
    let dir = root
        .open_at(
            Path::new(base),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        )
        .map_err(|e| format!("reading the build context at {base:?}: {e}"))?;
    walk_dir(dir.as_fd(), base, "", ignore, f)
}

fn walk_dir(
    dir: BorrowedFd<'_>,
    base: &str,
    prefix: &str,
    ignore: &Ignore,
    f: &mut dyn FnMut(&str, &Entry),
) -> Result<(), String> {
    let context_err = |e: Errno| format!("reading the build context: {prefix}: {e}");
    for name in list_sorted(dir).map_err(context_err)? {
        let Some(name) = name.to_str() else {
            return Err(format!(
                "{prefix}/{}: file names must be UTF-8",
                name.to_string_lossy()
            ));
        };
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let context_rel = if base.is_empty() {
            rel.clone()
        } else {
            format!("{base}/{rel}")
        };
        let Some(st) = lstat_at(dir, name.as_ref()).map_err(context_err)? else {
            continue; // removed while walking
        };
        let file_kind = kind(&st);
        let is_dir = file_kind == SFlag::S_IFDIR;
        if is_dir && ignore.prunes(&context_rel) {
            continue;
        }
        if !ignore.is_excluded(&context_rel) {
            let kind = match file_kind {
                SFlag::S_IFDIR => Some(ItemKind::Dir),
                SFlag::S_IFREG => Some(ItemKind::File),
                SFlag::S_IFLNK => Some(ItemKind::Symlink(PathBuf::from(
                    readlinkat(dir, name).map_err(context_err)?,
                ))),
                _ => None,
            };
            let size = if file_kind == SFlag::S_IFREG {
                st.st_size as u64
            } else {
                0
            };
            f(
                &rel,
                &Entry {
                    kind,
                    mode: st.st_mode & 0o7777,
                    size,
                },
            );
        }
        if is_dir {
            let sub = open_subdir(dir, name.as_ref()).map_err(context_err)?;
            walk_dir(sub.as_fd(), base, &rel, ignore, f)?;
        }
    }
    Ok(())
}

/// Sniffs a local file: a tar archive (possibly gzip or zstd compressed) or not.
fn archive_format(root: &RootDir, rel: &str) -> Option<ArchiveFormat> {
    let mut head = [0u8; 512];
    let fd = root
        .open_at(Path::new(rel), OFlag::O_RDONLY | OFlag::O_NOFOLLOW)
        .ok()?;
    let mut file = File::from(fd);
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
    file: File,
    src: &str,
    format: ArchiveFormat,
    dest: &str,
) -> io::Result<()> {
    let file = BufReader::new(file);
    let reader: Box<dyn Read> = match format {
        ArchiveFormat::Tar => Box::new(file),
        ArchiveFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        ArchiveFormat::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{src}: {what}"));
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
    use std::fs;

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
        // A link to a host path resolves inside the context, where it does not exist.
        assert!(err("escape").contains("not found"), "{}", err("escape"));
        assert!(err("src/skip.log").contains("excluded by .dockerignore"));
        assert!(err("missing").contains("not found"));
        assert!(err("*.nothing").contains("no source files match"));
        assert!(err("http://example.com/x").contains("not supported"));
    }

    /// Issue 18 item 1: a symlink anywhere in a source path resolves inside the context, and
    /// `.dockerignore` applies to what it resolves to.
    #[test]
    fn symlinks_in_source_paths_stay_in_the_context() {
        let ctx = context();
        let p = ctx.path();
        std::os::unix::fs::symlink("/etc", p.join("subdirlink")).unwrap();
        std::os::unix::fs::symlink(".", p.join("self")).unwrap();
        std::os::unix::fs::symlink("../../..", p.join("src/up")).unwrap();
        std::os::unix::fs::symlink("secret", p.join("secretlink")).unwrap();
        std::os::unix::fs::symlink("/", p.join("rootlink")).unwrap();
        fs::write(p.join("secret"), "s3cret").unwrap();
        fs::create_dir(p.join("withlinks")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("withlinks/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc", p.join("withlinks/etc")).unwrap();
        fs::write(p.join("withlinks/plain"), "x").unwrap();
        let ignore = Ignore::parse(
            "secret
",
        )
        .unwrap();
        let err = |s: &str| {
            CopyPlan::new(p, &ignore, &[s.into()], false)
                .map(|plan| names(&plan).join(","))
                .unwrap_err()
        };
        for source in [
            "subdirlink/shadow",
            "subdirlink/passwd",
            "subdirlink/ssh",
            "subdirlink",
            "self/secret",
            "self/self/secret",
            "src/up/etc/passwd",
            "src/up/secret",
            "secretlink",
            "rootlink/etc/passwd",
        ] {
            let e = err(source);
            assert!(e.contains("not found"), "{source}: {e}");
        }
        assert!(err("self/secret").contains("excluded by .dockerignore"));
        assert!(err("secretlink").contains("excluded by .dockerignore"));
        // Wildcards: links are matched as links and resolved in the context too.
        assert!(err("subdirlink/*").contains("no source files match"));
        assert!(err("self/secre?").contains("no source files match"));
        assert!(err("subdirlin?/passwd").contains("no source files match"));
        // A link to a directory inside the context still works, and so does the context
        // itself through a link to `.`, with the ignored file left out.
        let plan = CopyPlan::new(p, &ignore, &["self/src/a.txt".into()], false).unwrap();
        assert!(plan.single_file);
        let plan = CopyPlan::new(p, &ignore, &["self".into()], false).unwrap();
        let all = names(&plan);
        assert!(
            all.contains(&"top.txt") && !all.contains(&"secret"),
            "{all:?}"
        );
        // Links inside a copied directory are copied as links, never followed.
        let plan = CopyPlan::new(p, &ignore, &["withlinks".into()], false).unwrap();
        assert_eq!(names(&plan), ["etc", "passwd", "plain"]);
        assert!(matches!(plan.items["etc"].kind, ItemKind::Symlink(_)));
        assert!(matches!(plan.items["passwd"].kind, ItemKind::Symlink(_)));
        let mut out = Vec::new();
        let opts = EntryOptions {
            uid: 0,
            gid: 0,
            chmod: None,
            mtime: 0,
        };
        plan.write_tar(&mut out, "x", false, &[], opts).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path != "x/plain" {
                assert!(entry.header().entry_type().is_symlink(), "{path}");
            }
        }
        // A wildcard over the context finds the links as links (kept as links).
        let plan = CopyPlan::new(p, &ignore, &["withlinks/*".into()], false);
        let e = plan.map(|p| names(&p).join(",")).unwrap_err();
        assert!(e.contains("not found"), "{e}");
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
