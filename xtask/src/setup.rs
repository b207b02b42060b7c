//! `cargo xtask setup`: bring a fresh Debian 12 machine (as root, with only package registries
//! reachable) to where leaktrace builds and runs. Each step checks first and acts only when
//! something is missing, so a ready machine costs a few quick queries. Owns the list of what is
//! needed; building and running are other modules' business.

use std::{fs, path::Path, process::Stdio};

use anyhow::Result;

use crate::process::{self, command, failed};

/// Debian packages: Debian's rustc 1.96 with its standard library source (the eBPF crate is
/// built with it, through the `deb-bpf` toolchain), LLVM 22 for bpf-linker, a C compiler for the
/// fixtures and bpftool for inspecting loaded programs.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "clang-22",
    "bpftool",
    "gcc",
    "libc6-dev",
    // tests/nofp.rs traces a program under mimalloc (LD_PRELOAD).
    "libmimalloc2.0",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// A rustup toolchain linked to Debian's rustc in /usr; the leaktrace build script builds the
/// eBPF crate with it.
const BPF_TOOLCHAIN: &str = "deb-bpf";

/// Filesystems the tracer needs: tracefs for uprobes and tracepoints, bpffs for pinning.
const MOUNTS: &[(&str, &str)] = &[("/sys/kernel/tracing", "tracefs"), ("/sys/fs/bpf", "bpf")];

pub fn run() -> Result<()> {
    ensure_root()?;
    // Order matters: bpf-linker is built against llvm-22-dev, and the toolchain links to the
    // rustc that the packages install.
    let mut changed = ensure_packages()?;
    changed |= ensure_bpf_linker()?;
    changed |= ensure_toolchain()?;
    for &(dir, fstype) in MOUNTS {
        changed |= ensure_mounted(dir, fstype)?;
    }
    if changed {
        eprintln!("xtask: setup complete");
    } else {
        eprintln!(
            "xtask: setup: all present (Debian packages, bpf-linker {BPF_LINKER_VERSION}, \
             toolchain {BPF_TOOLCHAIN}, tracefs, bpffs)"
        );
    }
    Ok(())
}

fn ensure_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|err| failed("setup", format!("cannot read /proc/self/status: {err}")))?;
    // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"; the effective one decides.
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid == Some("0") {
        Ok(())
    } else {
        Err(failed(
            "setup",
            "not running as root; it installs packages and mounts filesystems, so run it as root",
        ))
    }
}

fn ensure_packages() -> Result<bool> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(false);
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let apt = |step: &str, args: &[&str]| {
        process::run(
            step,
            command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(args),
        )
    };
    apt("apt-get update", &["update"])?;
    apt(
        "apt-get install",
        &[
            &["install", "-y", "--no-install-recommends"],
            missing.as_slice(),
        ]
        .concat(),
    )?;
    Ok(true)
}

/// Packages whose dpkg status is not "install ok installed" (one query for all of them; dpkg
/// prints nothing for a package it has never heard of, which also counts as missing).
fn missing_packages() -> Result<Vec<&'static str>> {
    let output = command("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(PACKAGES)
        .stderr(Stdio::null())
        .output()
        .map_err(|err| {
            failed(
                "checking Debian packages",
                format!("cannot run dpkg-query: {err}"),
            )
        })?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|package| !is_installed(&listing, package))
        .collect())
}

/// Whether `dpkg-query -f='${Package}\t${Status}\n'` output says `package` is installed (not
/// merely known, or removed with its configuration files left behind).
fn is_installed(listing: &str, package: &str) -> bool {
    listing.lines().any(|line| {
        line.split_once('\t').is_some_and(|(name, status)| {
            // Multi-arch packages may be listed as "name:arch".
            name.split(':').next() == Some(package) && status == "install ok installed"
        })
    })
}

fn ensure_bpf_linker() -> Result<bool> {
    // Found through the same PATH the build uses, with ~/.cargo/bin first.
    let found = command("bpf-linker")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    if found.as_deref().is_some_and(is_wanted_bpf_linker) {
        return Ok(false);
    }
    match found {
        Some(other) => eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (~1 min), replacing {}",
            other.trim()
        ),
        None => eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (~1 min)"),
    }
    // rustup's cargo proxy, named by path: `+stable` means nothing to Debian's /usr/bin/cargo.
    let proxy = process::cargo_bin_dir().join("cargo");
    let cargo = if proxy.exists() {
        proxy.into_os_string()
    } else {
        "cargo".into()
    };
    process::run(
        "installing bpf-linker",
        command(cargo)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            // Outside the repository, so its .cargo/config.toml plays no part.
            .current_dir("/")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--locked", "--no-default-features", "--features", "llvm-22"]),
    )?;
    Ok(true)
}

/// `bpf-linker --version` prints "bpf-linker 0.13.0".
fn is_wanted_bpf_linker(version: &str) -> bool {
    version
        .split_whitespace()
        .any(|word| word == BPF_LINKER_VERSION)
}

fn ensure_toolchain() -> Result<bool> {
    let step = "checking rustup toolchains";
    let output = command("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|err| {
            failed(
                step,
                format!("cannot run rustup ({err}); install rustup with a stable toolchain first"),
            )
        })?;
    if !output.status.success() {
        return Err(failed(
            step,
            format!(
                "`rustup toolchain list` {}",
                process::describe(output.status)
            ),
        ));
    }
    if has_toolchain(&String::from_utf8_lossy(&output.stdout), BPF_TOOLCHAIN) {
        return Ok(false);
    }
    eprintln!("xtask: linking rustup toolchain {BPF_TOOLCHAIN} to /usr (Debian's rustc)");
    process::run(
        "linking the deb-bpf toolchain",
        command("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]),
    )?;
    Ok(true)
}

/// Lines of `rustup toolchain list` look like "stable-x86_64-unknown-linux-gnu (active, default)"
/// or "deb-bpf".
fn has_toolchain(listing: &str, name: &str) -> bool {
    listing
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn ensure_mounted(dir: &str, fstype: &str) -> Result<bool> {
    let step = format!("mounting {fstype} on {dir}");
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|err| failed(&step, format!("cannot read /proc/self/mounts: {err}")))?;
    if is_mount_point(&mounts, dir) {
        return Ok(false);
    }
    if !Path::new(dir).is_dir() {
        return Err(failed(
            &step,
            format!("{dir} does not exist; does this kernel have {fstype}?"),
        ));
    }
    eprintln!("xtask: mounting {fstype} on {dir}");
    process::run(&step, command("mount").args(["-t", fstype, fstype, dir]))?;
    Ok(true)
}

/// Whether /proc/self/mounts lists `dir` as a mount point. Lines are "<source> <mount point>
/// <type> <options> 0 0"; the paths we ask about need none of the octal escapes.
fn is_mount_point(mounts: &str, dir: &str) -> bool {
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_count_only_when_fully_installed() {
        let listing = "gcc\tinstall ok installed\n\
                       libc6-dev:amd64\tinstall ok installed\n\
                       bpftool\tdeinstall ok config-files\n";
        assert!(is_installed(listing, "gcc"));
        assert!(is_installed(listing, "libc6-dev"));
        assert!(!is_installed(listing, "bpftool"));
        assert!(!is_installed(listing, "clang-22"));
        assert!(!is_installed(listing, "gc"));
    }

    #[test]
    fn bpf_linker_version_must_match_exactly() {
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.0\n"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.9.13\n"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.13.01\n"));
    }

    #[test]
    fn toolchain_is_matched_by_whole_name() {
        let listing = "stable-x86_64-unknown-linux-gnu (active, default)\ndeb-bpf\n";
        assert!(has_toolchain(listing, "deb-bpf"));
        assert!(has_toolchain("deb-bpf (active)\n", "deb-bpf"));
        assert!(!has_toolchain("deb-bpf-old\n", "deb-bpf"));
    }

    #[test]
    fn mount_points_come_from_the_second_field() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert!(is_mount_point(mounts, "/sys/kernel/tracing"));
        assert!(!is_mount_point(mounts, "/sys/fs/bpf"));
        assert!(!is_mount_point(
            "bpf /sys/fs/bpf/x bpf rw 0 0\n",
            "/sys/fs/bpf"
        ));
    }
}
