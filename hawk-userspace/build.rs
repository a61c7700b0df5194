//! Builds the BPF object (`hawk-ebpf`, bin `hawk`) with aya-build, as
//! aya-template does, into `$OUT_DIR/hawk`.
//!
//! With `AYA_BUILD_SKIP=1`, or where no `bpf-linker` is installed, an empty
//! placeholder is written instead so that `cargo check` and clippy work on any
//! machine; the binary then says at run time that it has no BPF programs.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let placeholder = out_dir.join("hawk");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let have_linker = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("bpf-linker").is_file())
    });
    if skip || !have_linker {
        if !skip {
            println!(
                "cargo:warning=bpf-linker not found: building without BPF programs (run `cargo xtask setup`)"
            );
        }
        std::fs::write(&placeholder, b"").context("writing placeholder BPF object")?;
        return Ok(());
    }

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|p| p.name.as_str() == "hawk-ebpf")
        .ok_or_else(|| anyhow!("hawk-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf_package.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
