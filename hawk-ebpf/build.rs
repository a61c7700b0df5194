//! Rebuild when the `bpf-linker` binary changes (see aya-template): building
//! this crate depends on it, but cargo cannot know that.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
