//! Resolving an image's `USER` (`name`, `uid`, `name:group`, `uid:gid`) to numeric ids with the
//! image's own `/etc/passwd` and `/etc/group`, read inside the root with `openat2`
//! `RESOLVE_IN_ROOT`, so a symlinked `/etc/passwd` cannot make the host's files be read.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// A user resolved against an image's root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups the user is listed in (by name) in `/etc/group`.
    pub additional_gids: Vec<u32>,
}

/// Resolves `user` (a Dockerfile/image-config `USER` value; empty means root) in `rootfs`.
/// Numeric ids need no passwd entry; names must exist in the image.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd");
    let groups = read_in_root(rootfs, "etc/group");
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    // name:x:uid:gid:...
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 4
                && (f[0] == user_part || (user_part.parse::<u32>().is_ok() && f[2] == user_part))
        });
    let (uid, mut gid, name) = match (user_part.parse::<u32>(), &entry) {
        (Ok(uid), e) => (
            uid,
            e.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
            e.as_ref().map(|f| f[0].to_owned()),
        ),
        (Err(_), Some(f)) => (
            f[2].parse()
                .map_err(|_| format!("user {user_part:?} has a bad uid in /etc/passwd"))?,
            f[3].parse()
                .map_err(|_| format!("user {user_part:?} has a bad gid in /etc/passwd"))?,
            Some(f[0].to_owned()),
        ),
        // `root` needs no passwd file (scratch images have none).
        (Err(_), None) if user_part == "root" => (0, 0, None),
        (Err(_), None) => {
            return Err(format!(
                "unable to find user {user_part}: no matching entries in passwd file"
            ));
        }
    };
    let group_lines: Vec<Vec<&str>> = groups
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    if let Some(group) = group_part {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => group_lines
                .iter()
                .find(|f| f[0] == group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {group}: no matching entries in group file")
                })?,
        };
    }
    let mut additional_gids = Vec::new();
    if group_part.is_none()
        && let Some(name) = name
    {
        for f in &group_lines {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && g != gid
                && !additional_gids.contains(&g)
            {
                additional_gids.push(g);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads a small file inside `root` (at most 1 MiB); empty when missing.
fn read_in_root(root: &Path, rel: &str) -> String {
    let open = || -> Option<OwnedFd> {
        let dir = nix::fcntl::open(
            root,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&dir, rel, how).ok()
    };
    let mut text = String::new();
    if let Some(fd) = open() {
        let _ = File::from(fd).take(1 << 20).read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_groups() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:app,other\napp:x:1001:\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(root.path(), u);
        assert_eq!(
            r("").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("app").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![50]
            }
        );
        assert_eq!(r("1000").unwrap().gid, 1001);
        assert_eq!(
            r("app:staff").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 50,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("4242:7").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 7,
                additional_gids: vec![]
            }
        );
        assert!(
            r("nobody")
                .unwrap_err()
                .contains("unable to find user nobody")
        );
        assert!(
            r("app:nogroup")
                .unwrap_err()
                .contains("unable to find group")
        );
    }

    #[test]
    fn passwd_symlink_cannot_escape_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // Resolved inside the root, an absolute link to /etc/passwd points at the image's own file.
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        assert!(
            resolve_user(root.path(), "daemon").is_err(),
            "the host's passwd must not be read"
        );
    }
}
