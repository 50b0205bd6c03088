//! A pod's volumes on the host, under `<pod dir>/volumes/<name>`: `emptyDir` (a directory,
//! or a tmpfs of `sizeLimit` for `medium: Memory`), `hostPath` (the host path itself), and
//! `configMap`, `secret` and `projected` written the way the kubelet's AtomicWriter does: the
//! files live in a timestamped directory `..<time>`, the symlink `..data` points at it, and
//! each key is a symlink through `..data`; an update writes a new directory and swaps `..data`
//! with one rename, so a reader sees the old set or the new one, never a mix.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use berth_api::quantity::Bytes;
use k8s_openapi::api::core::v1::{Pod, Volume};

use crate::spec::Bind;

/// The files of a configMap/secret/projected volume: relative path -> (bytes, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Where volume `name` of a pod lives.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

/// Makes an emptyDir or hostPath volume; configMap-like volumes are written by
/// [`write_atomic`]. Returns the host path to bind.
pub fn prepare(pod_dir: &Path, volume: &Volume) -> Result<PathBuf, String> {
    let dir = volume_dir(pod_dir, &volume.name);
    if let Some(empty) = &volume.empty_dir {
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| e.to_string())?;
        }
        if empty.medium.as_deref() == Some("Memory") && !is_mount_point(&dir) {
            let mut data = String::from("mode=0777");
            if let Some(limit) = &empty.size_limit {
                let bytes: Bytes = limit
                    .0
                    .parse()
                    .map_err(|e: berth_api::quantity::QuantityError| e.to_string())?;
                data.push_str(&format!(",size={}", bytes.0));
            }
            nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(data.as_str()),
            )
            .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))?;
        }
        return Ok(dir);
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if !path.is_absolute() {
            return Err(format!("hostPath {:?} is not absolute", host.path));
        }
        match host.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&path)
                .map_err(|e| format!("create {}: {e}", path.display()))?,
            "Directory" if !path.is_dir() => {
                return Err(format!("hostPath {} is not a directory", path.display()));
            }
            "File" if !path.is_file() => {
                return Err(format!("hostPath {} is not a file", path.display()));
            }
            "FileOrCreate" if !path.exists() => {
                std::fs::write(&path, b"").map_err(|e| format!("create {}: {e}", path.display()))?
            }
            _ => {}
        }
        if !path.exists() {
            return Err(format!("hostPath {} does not exist", path.display()));
        }
        return Ok(path);
    }
    if volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.projected.is_some()
        || volume.downward_api.is_some()
    {
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        return Ok(dir);
    }
    Err(format!("volume {:?}: unsupported volume type", volume.name))
}

/// Checks a key's path: relative, no `..`, not starting with `..` (the AtomicWriter's rules).
pub fn valid_key_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with("..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Writes `files` into `dir` atomically (see the module docs). Returns true when anything
/// changed.
pub fn write_atomic(dir: &Path, files: &Files) -> Result<bool, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let data = dir.join("..data");
    // Unchanged?
    if let Ok(current) = std::fs::read_link(&data) {
        let current = dir.join(current);
        if read_tree(&current) == *files {
            return Ok(false);
        }
    }
    for key in files.keys() {
        if !valid_key_path(key) {
            return Err(format!("invalid path {key:?} in volume"));
        }
    }
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let new = dir.join(&stamp);
    std::fs::create_dir_all(&new).map_err(|e| io("create", &new, e))?;
    for (key, (bytes, mode)) in files {
        let path = new.join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io("write", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| io("chmod", &path, e))?;
    }
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| io("symlink", &tmp, e))?;
    std::fs::rename(&tmp, &data).map_err(|e| io("rename", &data, e))?;
    // The user-visible names: top-level entries as symlinks through ..data.
    let mut top: Vec<String> = files
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k).to_owned())
        .collect();
    top.dedup();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(|e| io("symlink", &link, e))?;
        }
    }
    // Names that went away.
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io("read", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn read_tree(dir: &Path) -> Files {
    let mut out = Files::new();
    fn walk(base: &Path, dir: &Path, out: &mut Files) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let (Ok(bytes), Ok(meta)) = (std::fs::read(&p), std::fs::metadata(&p)) {
                let rel = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, (bytes, meta.permissions().mode() & 0o7777));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// The bind mounts of container `c` of `pod`: its volumeMounts onto the prepared volumes.
pub fn binds(
    pod: &Pod,
    c: &k8s_openapi::api::core::v1::Container,
    pod_dir: &Path,
) -> Result<Vec<Bind>, String> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", m.name))?;
        let mut source = match &v.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => volume_dir(pod_dir, &v.name),
        };
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if !valid_key_path(sub) {
                return Err(format!(
                    "subPath {sub:?} must be a relative path without '..'"
                ));
            }
            source = source.join(sub);
        }
        let configish = v.config_map.is_some()
            || v.secret.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some();
        out.push(Bind {
            source,
            destination: m.mount_path.clone(),
            readonly: m.read_only.unwrap_or(false) || configish,
        });
    }
    Ok(out)
}

/// Unmounts every tmpfs under `volumes` (before the pod directory is removed).
pub fn unmount_all(volumes: &Path) {
    for e in std::fs::read_dir(volumes).into_iter().flatten().flatten() {
        let p = e.path();
        if is_mount_point(&p) {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        assert!(write_atomic(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"2");
        assert!(!write_atomic(dir.path(), &files).unwrap(), "unchanged");
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        files.insert("a".into(), (b"changed".to_vec(), 0o644));
        files.remove("sub/b");
        assert!(write_atomic(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"changed");
        assert!(!dir.path().join("sub").exists());
        assert!(!dir.path().join(first).exists(), "old data removed");
        let mut bad = Files::new();
        bad.insert("../escape".into(), (vec![], 0o644));
        assert!(write_atomic(dir.path(), &bad).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
