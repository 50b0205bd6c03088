//! Build script of the examples package; it only changes how `berth-runtime` is linked.
//!
//! `berth-runtime` is started once per container operation and re-executes itself as the
//! container's init, so its start-up cost is paid twice per container, and its resident set is
//! what `time -f %M` reports. Linked dynamically and as a PIE, the loader maps libc (~1.2 MB
//! resident) and applies ~16,000 relocations, dirtying every page of `.data.rel.ro`. Linked
//! statically and at a fixed address, none of that happens: ~1 MB less resident memory and a
//! faster exec. The trade-off is no ASLR for the binary's own code (libraries a user builds on
//! berth-namespaces choose their own linking).
//!
//! rustc links the `gnu` target dynamically unless `-C target-feature=+crt-static` is given
//! for the whole build, which a workspace must not impose on every binary. Instead this
//! script gives the one binary `-static -no-pie` and a search directory where each library
//! rustc asks for (`-lc`, `-lgcc_s`, `-lseccomp`, …) exists only as its static archive
//! (`libgcc_s` is served by `libgcc_eh.a`). Where an archive is missing (no libc6-dev or
//! libseccomp-dev static libraries), or with `BERTH_RUNTIME_DYNAMIC=1`, the binary is linked
//! dynamically as usual, with a build warning.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Library names rustc passes for std, libc and libseccomp, and the archive that serves each.
const ARCHIVES: &[(&str, &str)] = &[
    ("libc.a", "libc.a"),
    ("libm.a", "libm.a"),
    ("librt.a", "librt.a"),
    ("libpthread.a", "libpthread.a"),
    ("libdl.a", "libdl.a"),
    ("libutil.a", "libutil.a"),
    ("libgcc_s.a", "libgcc_eh.a"),
    ("libseccomp.a", "libseccomp.a"),
];

fn main() {
    println!("cargo::rerun-if-changed=src/bin/berth-runtime/build.rs");
    println!("cargo::rerun-if-env-changed=BERTH_RUNTIME_DYNAMIC");
    println!("cargo::rerun-if-env-changed=CC");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu || std::env::var_os("BERTH_RUNTIME_DYNAMIC").is_some_and(|v| v == "1") {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("berth-runtime-static-libs");
    match link_farm(&dir) {
        Ok(()) => {
            for arg in [
                format!("-L{}", dir.display()),
                "-static".into(),
                "-no-pie".into(),
            ] {
                println!("cargo::rustc-link-arg-bin=berth-runtime={arg}");
            }
        }
        Err(why) => {
            println!("cargo::warning=berth-runtime is linked dynamically: {why}");
        }
    }
}

/// Fills `dir` with one symlink per library name, each to the static archive that serves it.
fn link_farm(dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for (name, archive) in ARCHIVES {
        let output = Command::new(&cc)
            .arg(format!("-print-file-name={archive}"))
            .output()
            .map_err(|e| format!("run {cc}: {e}"))?;
        let found = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        // `cc` prints the bare name back when it does not find the file.
        if !found.is_absolute() || !found.is_file() {
            return Err(format!("{archive} not found by {cc}"));
        }
        std::os::unix::fs::symlink(&found, dir.join(name))
            .map_err(|e| format!("symlink {}: {e}", found.display()))?;
    }
    Ok(())
}
