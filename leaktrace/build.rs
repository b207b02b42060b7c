//! Builds the eBPF crate with the `deb-bpf` toolchain (Debian's rustc with rust-src, linked by
//! `cargo xtask setup`) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../leaktrace-ebpf");
    let root = root.to_str().context("non-UTF-8 path to leaktrace-ebpf")?;
    // SAFETY: build scripts are single-threaded; the eBPF build needs -Z build-std on a stable
    // toolchain, and bpf-linker lives in ~/.cargo/bin.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        if let (Some(home), Some(path)) = (std::env::var_os("HOME"), std::env::var_os("PATH")) {
            let mut paths = vec![std::path::PathBuf::from(home).join(".cargo/bin")];
            paths.extend(std::env::split_paths(&path));
            std::env::set_var("PATH", std::env::join_paths(paths)?);
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "leaktrace-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom("deb-bpf"),
    )
}
