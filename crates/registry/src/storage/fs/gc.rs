//! Online garbage collection of [`FsStorage`](super::FsStorage): the marks from every
//! repository's manifests, links and uploads, then the sweep of blobs no repository reaches
//! (kept for a grace period) and of abandoned upload sessions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_api::{Algorithm, Digest};
use berth_image::ContentStore;

use super::super::{GcOptions, GcReport};
use crate::Result;
use crate::manifest::ParsedManifest;

use super::repositories::list_repositories;
use super::*;

impl FsStorage {
    pub(super) async fn run_gc(&self, options: GcOptions) -> Result<GcReport> {
        let _gc = self.gc_lock.write().await;
        // Uploads being written to right now are busy: never collected.
        let busy: HashSet<String> = self
            .uploads
            .lock()
            .expect("uploads lock poisoned")
            .iter()
            .filter(|(_, s)| s.try_lock().is_err())
            .map(|(id, _)| id.clone())
            .collect();
        let (root, content) = (self.root.clone(), self.content.clone());
        let report = tokio::task::spawn_blocking(move || collect(&root, &content, options, &busy))
            .await
            .expect("gc task panicked")?;
        let live: HashSet<String> = std::fs::read_dir(self.root.join("uploads"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        self.uploads
            .lock()
            .expect("uploads lock poisoned")
            .retain(|id, _| live.contains(id));
        Ok(report)
    }
}

pub(super) fn older_than(meta: &std::fs::Metadata, age: std::time::Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|elapsed| elapsed >= age)
}

/// Every `(alg, hex)` digest file directly under `dir/<alg>/`.
pub(super) fn digests_under(dir: &Path) -> Vec<(Digest, PathBuf)> {
    let mut out = Vec::new();
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let Ok(entries) = std::fs::read_dir(dir.join(alg.as_str())) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::new(alg, hex).ok())
            {
                out.push((d, entry.path()));
            }
        }
    }
    out
}

pub(super) fn collect(
    root: &Path,
    content: &ContentStore,
    options: GcOptions,
    busy: &HashSet<String>,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut repos = Vec::new();
    list_repositories(&root.join("repositories"), String::new(), &mut repos)?;
    // Layer links exist for repositories without manifests too.
    let mut all_repos = Vec::new();
    collect_dirs_with(&root.join("repositories"), "", &mut all_repos);

    // Mark: every manifest revision, and everything it references.
    let mut marked = HashSet::new();
    for repo in &repos {
        let revisions = root
            .join("repositories")
            .join(repo)
            .join("_manifests/revisions");
        for (digest, path) in digests_under(&revisions) {
            let media_type = std::fs::read_to_string(&path).unwrap_or_default();
            if let Ok(bytes) = content.read_limited(&digest, u64::MAX)
                && let Ok(parsed) = ParsedManifest::parse(&bytes, Some(&media_type))
            {
                marked.extend(parsed.blobs().map(|d| d.digest.clone()));
                marked.extend(parsed.children().map(|d| d.digest.clone()));
            }
            marked.insert(digest);
        }
    }

    // Sweep blobs that are unreferenced and older than the grace period, and the content
    // store's abandoned temp files.
    let swept = content
        .retain(
            &marked,
            &berth_image::GcOptions {
                grace: options.blob_grace,
                stale_ingest: options.upload_max_age,
                dry_run: false,
            },
        )
        .map_err(content_error)?;
    report.blobs_removed += swept.removed.len();
    report.bytes_freed += swept.freed;
    // Drop links to blobs that no longer exist.
    for repo in &all_repos {
        let layers = root.join("repositories").join(repo).join("_layers");
        for (digest, link) in digests_under(&layers) {
            if !content.contains(&digest) {
                let _ = std::fs::remove_file(link);
            }
        }
    }
    // Stale uploads.
    if let Ok(entries) = std::fs::read_dir(root.join("uploads")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if busy.contains(&name) {
                continue;
            }
            let data = entry.path().join("data");
            let stale = std::fs::metadata(&data)
                .or_else(|_| entry.metadata())
                .is_ok_and(|m| older_than(&m, options.upload_max_age));
            if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
                report.uploads_removed += 1;
            }
        }
    }
    // Staging leftovers from a crash.
    if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
        for entry in entries.flatten() {
            if entry
                .metadata()
                .is_ok_and(|m| older_than(&m, options.upload_max_age))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(report)
}

/// Relative paths of every directory under `dir` that holds a `_layers` directory.
pub(super) fn collect_dirs_with(dir: &Path, prefix: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.path().join("_layers").is_dir() {
            found.push(full.clone());
        }
        collect_dirs_with(&entry.path(), &full, found);
    }
}
