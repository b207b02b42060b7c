//! Rebuild the eBPF object when the linker changes (it is found through PATH, not Cargo).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
