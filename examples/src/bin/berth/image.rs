//! `berth image …`: the image store's verbs (`ls`, `inspect`, `rm`, `tag`, `import`, `export`),
//! plus `build`, `push` and `pull`, which live with the build and registry work.
//!
//! The image store lives under `<root>/image/`, snapshots under `<root>/snapshots/`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_image::{BaseImage, ImageStore, Reference};

use crate::Global;

/// Image subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ImageCommand {
    /// Build an image from a Dockerfile.
    Build(crate::build::BuildArgs),
    /// Push an image to a registry.
    Push(crate::registry::PushArgs),
    /// Pull an image from a registry.
    Pull(crate::registry::PullArgs),
    /// List images.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show an image's manifest and config as JSON.
    Inspect(InspectArgs),
    /// Remove image names, then the content no name uses any more.
    #[command(alias = "rmi")]
    Rm(RmArgs),
    /// Give an image another name.
    Tag(TagArgs),
    /// Import an image from an OCI layout, a `docker save` archive, or host files.
    Import(ImportArgs),
    /// Export an image as an OCI layout or a `docker save` archive.
    Export(ExportArgs),
}

/// Arguments of `berth image ls`.
#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// Only print image ids.
    #[arg(short, long)]
    quiet: bool,
    /// Show manifest digests.
    #[arg(long)]
    digests: bool,
}

/// Arguments of `berth image inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// Images: NAME[:TAG], NAME@DIGEST or an image id (prefix).
    #[arg(required = true)]
    images: Vec<String>,
}

/// Arguments of `berth image rm`.
#[derive(Debug, clap::Args)]
pub(crate) struct RmArgs {
    /// Images: NAME[:TAG], NAME@DIGEST or an image id (prefix; removes all its names).
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove the last name of an image even when a container uses it.
    #[arg(short, long)]
    force: bool,
}

/// Arguments of `berth image tag`.
#[derive(Debug, clap::Args)]
pub(crate) struct TagArgs {
    /// The existing image.
    source: String,
    /// The new name.
    target: String,
}

/// Arguments of `berth image import`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["oci", "archive", "busybox"])))]
pub(crate) struct ImportArgs {
    /// An OCI image layout, as DIR or DIR:REF (REF is the `org.opencontainers.image.ref.name`).
    #[arg(long, value_name = "DIR[:REF]")]
    oci: Option<String>,
    /// A `docker save` archive (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    archive: Option<PathBuf>,
    /// Make a base image from a static busybox binary and its applet links.
    #[arg(long, value_name = "PATH")]
    busybox: Option<PathBuf>,
    /// The name to give the image (for archives: optional, defaults to the archive's RepoTags).
    name: Option<String>,
}

/// Arguments of `berth image export`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["oci", "archive"])))]
pub(crate) struct ExportArgs {
    /// The image.
    image: String,
    /// Write (or add to) an OCI image layout, as DIR or DIR:REF (REF defaults to the tag).
    #[arg(long, value_name = "DIR[:REF]")]
    oci: Option<String>,
    /// Write a `docker save` archive (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    archive: Option<PathBuf>,
}

/// Opens the image store under `--root`.
pub(crate) fn open_store(global: &Global) -> anyhow::Result<ImageStore> {
    let dir = global.root.join("image");
    ImageStore::open(&dir).with_context(|| format!("open image store {}", dir.display()))
}

pub(crate) fn run(global: &Global, cmd: ImageCommand) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Build(args) => crate::build::run(global, args),
        ImageCommand::Push(args) => crate::registry::push(global, args),
        ImageCommand::Pull(args) => crate::registry::pull(global, args),
        ImageCommand::Ls(args) => ls(global, args),
        ImageCommand::Inspect(args) => inspect(global, args),
        ImageCommand::Rm(args) => rm(global, args),
        ImageCommand::Tag(args) => {
            let store = open_store(global)?;
            let target = Reference::parse(&args.target)?;
            let descriptor = store.resolve_str(&args.source)?;
            store.tag(&target, &descriptor)?;
            Ok(0)
        }
        ImageCommand::Import(args) => import(global, args),
        ImageCommand::Export(args) => export(global, args),
    }
}

fn short_id(digest: &berth_api::Digest) -> String {
    digest.hex()[..12].to_owned()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let number = format!("{value:.1}");
    format!(
        "{}{}",
        number.strip_suffix(".0").unwrap_or(&number),
        UNITS[unit]
    )
}

fn ls(global: &Global, args: LsArgs) -> anyhow::Result<u8> {
    let store = open_store(global)?;
    let mut out = std::io::stdout().lock();
    if !args.quiet {
        if args.digests {
            writeln!(
                out,
                "{:<40} {:<16} {:<72} {:<13} {:<21} SIZE",
                "REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED"
            )?;
        } else {
            writeln!(
                out,
                "{:<40} {:<16} {:<13} {:<21} SIZE",
                "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
            )?;
        }
    }
    for record in store.list()? {
        let reference = record.reference()?;
        let image = match store.load(&record.target) {
            Ok(image) => image,
            Err(e) => {
                eprintln!("berth: {}: {e}", reference.familiar());
                continue;
            }
        };
        let id = short_id(&image.id()?);
        if args.quiet {
            writeln!(out, "{id}")?;
            continue;
        }
        let repository = reference.familiar_name();
        let tag = reference.tag().unwrap_or("<none>");
        let created = image
            .config
            .created()
            .clone()
            .unwrap_or_else(|| "N/A".to_owned());
        let created: String = created
            .chars()
            .take(19)
            .collect::<String>()
            .replace('T', " ");
        let size = human_size(image.size());
        if args.digests {
            writeln!(
                out,
                "{repository:<40} {tag:<16} {:<72} {id:<13} {created:<21} {size}",
                record.digest()?.to_string()
            )?;
        } else {
            writeln!(
                out,
                "{repository:<40} {tag:<16} {id:<13} {created:<21} {size}"
            )?;
        }
    }
    Ok(0)
}

fn inspect(global: &Global, args: InspectArgs) -> anyhow::Result<u8> {
    let store = open_store(global)?;
    let records = store.list()?;
    let mut out = Vec::new();
    let mut status = 0;
    for name in &args.images {
        let image = match store.resolve_str(name).and_then(|d| store.load(&d)) {
            Ok(image) => image,
            Err(e) => {
                eprintln!("berth: {name}: {e}");
                status = 1;
                continue;
            }
        };
        let target = image.target.digest().to_string();
        let names: Vec<String> = records
            .iter()
            .filter(|r| r.target.digest().to_string() == target)
            .filter_map(|r| r.reference().ok())
            .map(|r| r.familiar())
            .collect();
        out.push(serde_json::json!({
            "Id": image.id()?.to_string(),
            "RepoTags": names,
            "Digest": target,
            "ManifestDigest": image.digest()?.to_string(),
            "MediaType": image.target.media_type().to_string(),
            "Created": image.config.created(),
            "Architecture": image.config.architecture().to_string(),
            "Os": image.config.os().to_string(),
            "Config": image.config.config(),
            "RootFS": image.config.rootfs(),
            "Layers": image.layers(),
            "Size": image.size(),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(status)
}

fn rm(global: &Global, args: RmArgs) -> anyhow::Result<u8> {
    let engine = crate::container::engine(global)?;
    let mut status = 0;
    for name in &args.images {
        match engine.remove_image(name, args.force) {
            Ok(records) => {
                for r in records {
                    let familiar = r.reference().map(|r| r.familiar()).unwrap_or(r.name);
                    println!("Untagged: {familiar}");
                }
            }
            Err(e) => {
                eprintln!("berth: {name}: {:#}", anyhow::Error::from(e));
                status = 1;
            }
        }
    }
    let report = engine.prune_images()?;
    for blob in &report.blobs.removed {
        println!("Deleted: {}", blob.digest);
    }
    Ok(status)
}

/// Splits `DIR[:REF]` (a `:` followed by a path-free suffix is a ref).
fn split_layout_arg(arg: &str) -> (PathBuf, Option<String>) {
    match arg.rsplit_once(':') {
        Some((dir, r)) if !dir.is_empty() && !r.is_empty() && !r.contains('/') => {
            (PathBuf::from(dir), Some(r.to_owned()))
        }
        _ => (PathBuf::from(arg), None),
    }
}

fn import(global: &Global, args: ImportArgs) -> anyhow::Result<u8> {
    let store = open_store(global)?;
    let name = args.name.as_deref().map(Reference::parse).transpose()?;
    if let Some(layout) = &args.oci {
        let Some(name) = name else {
            bail!("name the imported image: berth image import --oci DIR[:REF] NAME[:TAG]");
        };
        let (dir, reference) = split_layout_arg(layout);
        let descriptor = store.import_oci(&dir, reference.as_deref(), &name)?;
        println!("{} {}", name.familiar(), descriptor.digest());
    } else if let Some(archive) = &args.archive {
        let images = if archive == Path::new("-") {
            store.import_archive(std::io::stdin().lock(), name.as_ref())?
        } else {
            let file =
                File::open(archive).with_context(|| format!("open {}", archive.display()))?;
            store.import_archive(BufReader::new(file), name.as_ref())?
        };
        for image in images {
            let names: Vec<String> = image.names.iter().map(Reference::familiar).collect();
            println!(
                "Loaded image: {} {}",
                names.join(", "),
                image.descriptor.digest()
            );
        }
    } else if let Some(busybox) = &args.busybox {
        let Some(name) = name else {
            bail!("name the base image: berth image import --busybox PATH NAME[:TAG]");
        };
        let descriptor = BaseImage::busybox(busybox)?.commit(&store, Some(&name))?;
        println!("{} {}", name.familiar(), descriptor.digest());
    }
    Ok(0)
}

fn export(global: &Global, args: ExportArgs) -> anyhow::Result<u8> {
    let store = open_store(global)?;
    let descriptor = store.resolve_str(&args.image)?;
    let reference = Reference::parse(&args.image).ok();
    if let Some(layout) = &args.oci {
        let (dir, ref_name) = split_layout_arg(layout);
        let ref_name =
            ref_name.or_else(|| reference.as_ref().and_then(|r| r.tag().map(str::to_owned)));
        store.export_oci(&descriptor, &dir, ref_name.as_deref())?;
    } else if let Some(path) = &args.archive {
        let image = store.load(&descriptor)?;
        let names: Vec<Reference> = reference
            .into_iter()
            .filter(|r| r.tag().is_some())
            .collect();
        let images = [(image, names)];
        if path == Path::new("-") {
            store.export_archive(&images, BufWriter::new(std::io::stdout().lock()))?;
        } else {
            let tmp = path.with_extension("partial");
            let file = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            let result = store.export_archive(&images, BufWriter::new(file));
            if let Err(e) = result {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(0)
}
