//! Root tests of the Dockerfile builder against the real kernel (overlay snapshots, RUN steps in
//! containers): COPY sources that try to leave the build context.
//!
//! A custom harness (`harness = false`): RUN steps start their container by re-executing this
//! binary as its init, so `main` calls `main_if_init` first. `cargo test -p berth-builder --test
//! build [FILTER]` runs them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use berth_builder::{BuildOptions, BuildOutput, Builder, Error as BuildError, Workspace};
use berth_image::{BaseImage, ImageStore, Reference};
use berth_namespaces::Runtime;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Test = berth_testutil::HarnessTest;

fn main() {
    berth_namespaces::init::main_if_init();
    let tests: &[Test] = &[
        (
            "copy_through_symlinks_never_leaves_the_context",
            copy_through_symlinks_never_leaves_the_context,
        ),
        (
            "oversized_inputs_are_refused_early_and_leave_no_blob",
            oversized_inputs_are_refused_early_and_leave_no_blob,
        ),
        (
            "failed_builds_leave_no_unreferenced_blobs",
            failed_builds_leave_no_unreferenced_blobs,
        ),
        (
            "too_many_layers_fail_with_the_reason",
            too_many_layers_fail_with_the_reason,
        ),
        (
            "multi_stage_copy_from_target_and_cache",
            multi_stage_copy_from_target_and_cache,
        ),
        ("run_mounts_and_heredocs", run_mounts_and_heredocs),
    ];
    berth_testutil::run_harness(tests, |name| {
        berth_testutil::require_root(name) && berth_testutil::require_filesystem(name, "overlay")
    });
}

/// A builder root in a tempdir (image store, snapshots, runtime state, build work and cache);
/// mounts below it are detached on drop.
struct Root {
    dir: tempfile::TempDir,
    builder: Builder,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("berth-build-test")
            .tempdir()
            .expect("tempdir");
        let builder = builder_at(dir.path());
        Root { dir, builder }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> &ImageStore {
        self.builder.store()
    }

    fn busybox(&self) -> Reference {
        let reference = Reference::parse("busybox:test").unwrap();
        BaseImage::busybox(Path::new("/bin/busybox"))
            .expect("busybox image")
            .commit(self.store(), Some(&reference))
            .expect("commit busybox");
        reference
    }

    fn build(&self, ctx: &Path, progress: &mut Vec<u8>) -> Result<BuildOutput, BuildError> {
        self.build_target(ctx, None, progress)
    }

    fn build_target(
        &self,
        ctx: &Path,
        target: Option<&str>,
        progress: &mut Vec<u8>,
    ) -> Result<BuildOutput, BuildError> {
        self.builder.build(
            &BuildOptions {
                context: ctx.to_owned(),
                target: target.map(str::to_owned),
                ..Default::default()
            },
            progress,
        )
    }

    fn mounts_below(&self) -> Vec<String> {
        mounts_below(self.path())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounts_below().into_iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn builder_at(root: &Path) -> Builder {
    let store = ImageStore::open(root.join("image")).expect("image store");
    let snapshots = berth_unionfs::open(root.join("snapshots")).expect("snapshots");
    let runtime = Runtime::new(root.join("runtime"))
        .with_cgroup_parent(berth_testutil::unique_name("berth-build-test"));
    let workspace = Workspace::new(Arc::from(snapshots), runtime, root.join("build/work"));
    Builder::new(store, workspace, &root.join("build/cache")).expect("builder")
}

fn mounts_below(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&root))
        .collect()
}

fn ensure(cond: bool, what: impl Into<String>) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// A context directory with `files` (name, contents); `busybox` is always there.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

/// Every entry of the image's layers, by path.
fn image_paths(store: &ImageStore, output: &BuildOutput) -> Vec<String> {
    let image = store.load(&output.manifest).unwrap();
    let mut paths = Vec::new();
    for layer in image.layers() {
        let digest = berth_image::manifest::descriptor_digest(layer).unwrap();
        let mut blob = Vec::new();
        store
            .content()
            .open_blob(&digest)
            .unwrap()
            .read_to_end(&mut blob)
            .unwrap();
        let mut archive = tar::Archive::new(&blob[..]);
        for entry in archive.entries().unwrap() {
            paths.push(
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    paths
}

/// Issue 18 item 1: `ln -s /etc subdirlink` + `COPY subdirlink/shadow /x` (and `.../ssh`, and a
/// link to `.` reaching an ignored file) must fail with "not found", as Docker does, and a
/// directory with links in it is copied with its links as links.
fn copy_through_symlinks_never_leaves_the_context() -> TestResult {
    let root = Root::new();
    let ctx = context(&[(".dockerignore", "secret\n"), ("secret", "s3cret\n")]);
    let p = ctx.path();
    std::os::unix::fs::symlink("/etc", p.join("subdirlink"))?;
    std::os::unix::fs::symlink(".", p.join("self"))?;
    fs::create_dir(p.join("dir"))?;
    std::os::unix::fs::symlink("/etc/shadow", p.join("dir/shadow"))?;
    std::os::unix::fs::symlink("../../../../etc", p.join("dir/etc"))?;
    for source in [
        "subdirlink/shadow",
        "subdirlink/ssh",
        "self/secret",
        "dir/etc/passwd",
    ] {
        fs::write(
            p.join("Dockerfile"),
            format!("FROM scratch\nCOPY {source} /x\n"),
        )?;
        let err = root.build(p, &mut Vec::new()).unwrap_err();
        let text = err.to_string();
        ensure(
            matches!(err, BuildError::Source { line: 2, .. }) && text.contains("not found"),
            format!("COPY {source}: {text}"),
        )?;
    }
    fs::write(
        p.join("Dockerfile"),
        "FROM scratch\nCOPY dir /d/\nCOPY self/busybox /bin/\n",
    )?;
    let output = root.build(p, &mut Vec::new())?;
    let paths = image_paths(root.store(), &output);
    ensure(
        paths.iter().any(|p| p == "d/shadow") && paths.iter().any(|p| p == "bin/busybox"),
        format!("{paths:?}"),
    )?;
    ensure(root.mounts_below().is_empty(), "no mounts left")?;
    let _ = root.busybox();
    Ok(())
}

/// Every blob in the content store.
fn blobs(root: &Root) -> BTreeSet<String> {
    root.store()
        .content()
        .list()
        .unwrap()
        .into_iter()
        .map(|b| b.digest.to_string())
        .collect()
}

/// Blobs that neither an image nor a layer-cache entry refers to.
fn unreferenced(root: &Root) -> BTreeSet<String> {
    let mut kept: BTreeSet<String> = root
        .store()
        .referenced()
        .unwrap()
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    for entry in fs::read_dir(root.path().join("build/cache")).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        kept.insert(value["blob"].as_str().unwrap().to_owned());
    }
    blobs(root).difference(&kept).cloned().collect()
}

/// Issue 18 item 7: a 100 MB ENV line, a 2 MB instruction and a config doubled past the limit
/// are refused with a clear error before anything is written.
fn oversized_inputs_are_refused_early_and_leave_no_blob() -> TestResult {
    let root = Root::new();
    let ctx = context(&[]);
    let dockerfile = ctx.path().join("Dockerfile");
    // 100 MB: refused before it is read.
    fs::write(&dockerfile, "FROM scratch\nENV X=")?;
    fs::File::options()
        .append(true)
        .open(&dockerfile)?
        .set_len(100 << 20)?;
    let err = root.build(ctx.path(), &mut Vec::new()).unwrap_err();
    ensure(
        matches!(err, BuildError::TooLarge { .. }) && err.to_string().contains("Dockerfile"),
        format!("100 MB Dockerfile: {err}"),
    )?;
    // One 2 MB instruction in a small enough file.
    fs::write(
        &dockerfile,
        format!("FROM scratch\nENV X={}\n", "x".repeat(2 << 20)),
    )?;
    let err = root.build(ctx.path(), &mut Vec::new()).unwrap_err();
    ensure(
        matches!(err, BuildError::Parse { line: 2, .. })
            && err.to_string().contains("over the limit"),
        format!("2 MB instruction: {err}"),
    )?;
    // Each line is small; the config they make is not.
    let before = blobs(&root);
    fs::write(
        &dockerfile,
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nENV A={}\nENV B=$A$A$A$A$A$A$A$A$A$A\nENV C=$B$B$B$B$B$B$B$B$B$B$B$B\nCMD [\"x\"]\n",
            "a".repeat(500 << 10)
        ),
    )?;
    let err = root.build(ctx.path(), &mut Vec::new()).unwrap_err();
    ensure(
        matches!(err, BuildError::TooLarge { .. })
            && err
                .to_string()
                .contains("step 4 (line 4): the image config"),
        format!("large config: {err}"),
    )?;
    let after = blobs(&root);
    ensure(
        unreferenced(&root).is_empty(),
        format!("no orphan blobs: before {before:?}, after {after:?}"),
    )?;
    Ok(())
}

/// Issue 18 item 7: whatever step fails, the content store holds no blob that no image and no
/// cache entry refers to; the layers of the steps that worked stay as cache.
fn failed_builds_leave_no_unreferenced_blobs() -> TestResult {
    let root = Root::new();
    let ctx = context(&[("a.txt", "a\n")]);
    let dockerfile = ctx.path().join("Dockerfile");
    for text in [
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY a.txt /a\nRUN [\"/bin/busybox\", \"false\"]\n",
        "FROM scratch\nCOPY a.txt /a\nCOPY missing /b\n",
    ] {
        fs::write(&dockerfile, text)?;
        let err = root.build(ctx.path(), &mut Vec::new());
        ensure(err.is_err(), format!("{} must fail", &text[..40]))?;
        let orphans = unreferenced(&root);
        ensure(
            orphans.is_empty(),
            format!("{}: orphan blobs {orphans:?}", &text[..40]),
        )?;
    }
    ensure(root.mounts_below().is_empty(), "no mounts left")?;
    Ok(())
}

/// Issue 18 item 8: a step that would stack more layers than overlayfs can fails at that step
/// and says why (not a raw overlay mount error), before unpacking anything.
fn too_many_layers_fail_with_the_reason() -> TestResult {
    let root = Root::new();
    let store = root.store();
    let mut layers = Vec::new();
    for i in 0..berth_image::MAX_LAYERS {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        let data = format!("{i}\n");
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("f{i}"), data.as_bytes())?;
        layers.push(store.add_layer(&tar.into_inner()?[..], berth_image::Compression::None)?);
    }
    let manifest = store.commit_image(Default::default(), &layers)?;
    store.tag(&Reference::parse("deep:test")?, &manifest)?;
    let ctx = context(&[(
        "Dockerfile",
        "FROM deep:test\nENV A=b\nCOPY busybox /bin/busybox\n",
    )]);
    let err = root.build(ctx.path(), &mut Vec::new()).unwrap_err();
    let text = err.to_string();
    ensure(
        matches!(
            err,
            BuildError::Step {
                step: 3,
                line: 3,
                ..
            }
        ) && text.contains("too many layers")
            && text.contains("at most 125"),
        text,
    )?;
    let snapshots = berth_unionfs::open(root.path().join("snapshots"))?.list()?;
    ensure(
        snapshots.is_empty(),
        format!("refused before unpacking: {} snapshots", snapshots.len()),
    )?;
    ensure(root.mounts_below().is_empty(), "no mounts left")?;
    Ok(())
}

/// The files of the built image, with contents (later layers win; whiteouts are not expected).
fn image_files(store: &ImageStore, output: &BuildOutput) -> BTreeMap<String, Vec<u8>> {
    let image = store.load(&output.manifest).unwrap();
    let mut files = BTreeMap::new();
    for layer in image.layers() {
        let digest = berth_image::manifest::descriptor_digest(layer).unwrap();
        let mut blob = Vec::new();
        store
            .content()
            .open_blob(&digest)
            .unwrap()
            .read_to_end(&mut blob)
            .unwrap();
        let reader: Box<dyn Read> = if blob.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(&blob[..]))
        } else {
            Box::new(&blob[..])
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(path, data);
        }
    }
    files
}

const MULTI_STAGE: &str = r#"ARG BASE=scratch
ARG GREETING=hello
FROM $BASE AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM tools AS left
ARG GREETING
RUN echo "$GREETING from left" > /left.txt && sleep 1

FROM tools AS right
RUN echo right > /right.txt && sleep 1

FROM tools AS unused
RUN echo unused > /unused.txt

FROM scratch
COPY --from=left /left.txt /out/
COPY --from=right /right.txt /out/
COPY --from=0 /bin/busybox /bin/busybox
COPY --from=busybox:test /bin/busybox /bin/busybox2
CMD ["/bin/busybox", "cat", "/out/left.txt"]
"#;

/// Issue 18 item 13: FROM … AS, COPY --from a stage (by name and index) and an image,
/// ARG before FROM, independent stages built concurrently, stages the target does not need
/// skipped, --target, and reproducible, fully cached rebuilds.
fn multi_stage_copy_from_target_and_cache() -> TestResult {
    let root = Root::new();
    root.busybox();
    let ctx = context(&[("Dockerfile", MULTI_STAGE)]);
    let mut progress = Vec::new();
    let first = root.build(ctx.path(), &mut progress)?;
    let text = String::from_utf8_lossy(&progress).into_owned();
    ensure(
        text.contains("Skipping stage unused") && !text.contains("echo unused"),
        format!("the unused stage is skipped: {text}"),
    )?;
    let files = image_files(root.store(), &first);
    ensure(
        files.get("out/left.txt").map(Vec::as_slice) == Some(b"hello from left\n".as_slice())
            && files.get("out/right.txt").map(Vec::as_slice) == Some(b"right\n".as_slice())
            && files.contains_key("bin/busybox")
            && files.contains_key("bin/busybox2")
            && !files
                .keys()
                .any(|f| f.starts_with("bin/sh") || f == "unused.txt"),
        format!("final stage files: {:?}", files.keys().collect::<Vec<_>>()),
    )?;
    // A rebuild: the same digest, every layer from the cache.
    let second = root.build(ctx.path(), &mut Vec::new())?;
    ensure(
        second.digest == first.digest && second.new_layers == 0,
        format!(
            "rebuild: {} vs {}, {} new layers",
            second.digest, first.digest, second.new_layers
        ),
    )?;
    // --target builds only what that stage needs.
    let mut progress = Vec::new();
    let right = root.build_target(ctx.path(), Some("right"), &mut progress)?;
    let text = String::from_utf8_lossy(&progress).into_owned();
    ensure(
        text.contains("Skipping stage left") && text.contains("Skipping stage unused"),
        text.clone(),
    )?;
    let files = image_files(root.store(), &right);
    ensure(
        files.contains_key("right.txt") && !files.contains_key("left.txt"),
        format!("{:?}", files.keys().collect::<Vec<_>>()),
    )?;
    let err = root
        .build_target(ctx.path(), Some("nosuch"), &mut Vec::new())
        .unwrap_err();
    ensure(matches!(err, BuildError::Target(_)), err.to_string())?;
    // COPY --from a stage that does not have the file.
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch AS a\nCOPY busybox /b\nFROM scratch\nCOPY --from=a /nothere /x\n",
    )?;
    let err = root.build(ctx.path(), &mut Vec::new()).unwrap_err();
    ensure(
        matches!(err, BuildError::Source { line: 4, .. }) && err.to_string().contains("not found"),
        err.to_string(),
    )?;
    ensure(root.mounts_below().is_empty(), "no mounts left")?;
    Ok(())
}

/// Issue 18 item 13: RUN --mount=type=cache (kept between builds, not in the layer),
/// type=bind (read-only, from the context or a stage), type=tmpfs, and here-documents.
fn run_mounts_and_heredocs() -> TestResult {
    let root = Root::new();
    root.busybox();
    let ctx = context(&[
        ("src/input.txt", "input\n"),
        ("secret", "no\n"),
        (".dockerignore", "secret\n"),
    ]);
    let dockerfile = |count_line: &str| {
        format!(
            "FROM busybox:test AS base
RUN echo staged > /staged.txt
FROM busybox:test
RUN --mount=type=cache,target=/cache,id=counter {count_line}
RUN --mount=type=bind,source=src,target=/src cp /src/input.txt /copied.txt && ! touch /src/x
RUN --mount=type=bind,from=base,source=/staged.txt,target=/staged.txt cp /staged.txt /from-stage.txt
RUN --mount=type=tmpfs,target=/scratch touch /scratch/a && echo tmp > /tmpfs-ok
RUN <<EOT
echo one > /heredoc.txt
echo two >> /heredoc.txt
EOT
RUN cat <<END > /heredoc2.txt
hello
END
"
        )
    };
    fs::write(
        ctx.path().join("Dockerfile"),
        dockerfile("echo x >> /cache/count && wc -l < /cache/count > /count.txt"),
    )?;
    let first = root.build(ctx.path(), &mut Vec::new())?;
    // A change to that step's text re-runs it; the cache directory still has the first line.
    fs::write(
        ctx.path().join("Dockerfile"),
        dockerfile("echo y >> /cache/count && wc -l < /cache/count > /count.txt"),
    )?;
    let second = root.build(ctx.path(), &mut Vec::new())?;
    let files = image_files(root.store(), &second);
    let text = |f: &str| {
        String::from_utf8_lossy(files.get(f).map_or(&[][..], Vec::as_slice))
            .trim()
            .to_owned()
    };
    ensure(
        text("count.txt") == "2",
        format!("cache mount kept: {:?}", text("count.txt")),
    )?;
    ensure(
        !files
            .keys()
            .any(|f| f.starts_with("cache/") || f.starts_with("src/") || f.starts_with("scratch/")),
        format!(
            "mounts stay out of layers: {:?}",
            files.keys().collect::<Vec<_>>()
        ),
    )?;
    ensure(text("copied.txt") == "input", "bind from the context")?;
    ensure(text("from-stage.txt") == "staged", "bind from a stage")?;
    ensure(text("tmpfs-ok") == "tmp", "tmpfs")?;
    ensure(
        text("heredoc.txt") == "one\ntwo",
        format!("heredoc: {:?}", text("heredoc.txt")),
    )?;
    ensure(
        text("heredoc2.txt") == "hello",
        format!("heredoc to a command: {:?}", text("heredoc2.txt")),
    )?;
    ensure(
        first.digest != second.digest,
        "the changed step changed the image",
    )?;
    // A bind of an ignored file is not found, as with COPY.
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:test\nRUN --mount=type=bind,source=secret,target=/s cat /s\n",
    )?;
    let err = root.build(ctx.path(), &mut Vec::new()).unwrap_err();
    ensure(err.to_string().contains("not found"), err.to_string())?;
    ensure(root.mounts_below().is_empty(), "no mounts left")?;
    Ok(())
}
