//! `cargo xtask setup`: installs what building and testing Hawk needs on a
//! Debian machine, and reports what it finds, one line per thing:
//!
//! - the nightly toolchain and its `rust-src` (aya-build compiles the BPF crate
//!   for `bpfel-unknown-none` with `-Z build-std=core`);
//! - `bpf-linker`, built against the LLVM major of that nightly (from
//!   `rustc +nightly -vV`) and Debian's `llvm-<major>-dev`;
//! - tracefs at `/sys/kernel/tracing` (uprobes and tracepoints attach through
//!   it; `hawk-ebpf` mounts it too when it is missing).
//!
//! Every check is a quick probe, so when everything is there the whole setup
//! takes a second or two; it only installs what is missing.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{probe, run};

pub fn setup() -> Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    tracefs();
    Ok(())
}

fn nightly() -> Result<()> {
    if let Some(version) = probe(&mut rustup_nightly(&["rustc", "-V"])) {
        found("nightly toolchain", &version);
        return Ok(());
    }
    installing("nightly toolchain");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    let version = probe(&mut rustup_nightly(&["rustc", "-V"]))
        .context("the nightly toolchain still does not run after installing it")?;
    installed("nightly toolchain", &version);
    Ok(())
}

fn rust_src() -> Result<()> {
    let sysroot = probe(&mut rustup_nightly(&["rustc", "--print", "sysroot"]))
        .context("cannot find the nightly toolchain's sysroot")?;
    let library = Path::new(&sysroot).join("lib/rustlib/src/rust/library");
    if library.join("core").is_dir() {
        found("rust-src (nightly)", &library.display().to_string());
        return Ok(());
    }
    installing("rust-src (nightly)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    installed("rust-src (nightly)", &library.display().to_string());
    Ok(())
}

/// bpf-linker must use the same LLVM major as the nightly rustc whose bitcode
/// it links. Its default feature follows the newest LLVM, so it is built with
/// `--no-default-features --features llvm-<major>` against Debian's LLVM.
fn bpf_linker() -> Result<()> {
    if let Some(version) = probe(Command::new("bpf-linker").arg("--version")) {
        found("bpf-linker", &version);
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    installing(&format!("bpf-linker (for the nightly's LLVM {major})"));
    apt_install(&[format!("llvm-{major}-dev")])?;
    let prefix = format!("/usr/lib/llvm-{major}");
    if !Path::new(&prefix).join("bin/llvm-config").is_file() {
        bail!("{prefix}/bin/llvm-config is missing although llvm-{major}-dev is installed");
    }
    // llvm-sys is versioned <major><minor> (221 for LLVM 22.1; LLVM releases
    // start at <major>.1) and reads its prefix from LLVM_SYS_<version>_PREFIX.
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env(format!("LLVM_SYS_{major}1_PREFIX"), &prefix))?;
    let version = probe(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker does not run after installing it: is ~/.cargo/bin on PATH?")?;
    installed("bpf-linker", &version);
    Ok(())
}

/// The LLVM major of the nightly rustc, from the `LLVM version: 22.1.4` line
/// of `rustc -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let verbose =
        probe(&mut rustup_nightly(&["rustc", "-vV"])).context("`rustc +nightly -vV` failed")?;
    let version = verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` prints no LLVM version")?
        .trim();
    version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major from {version:?}"))
}

/// Installs the Debian packages that are not installed yet; `apt-get update`
/// runs only when there is something to install.
pub(crate) fn apt_install(packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages
        .iter()
        .filter(|package| {
            let status = probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
            status.as_deref() != Some("install ok installed")
        })
        .collect();
    for package in packages.iter().filter(|p| !missing.contains(p)) {
        found(package, "Debian package");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "installing Debian packages needs root: run as root, or `apt-get install {}` first",
            missing
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for package in missing {
        installed(package, "Debian package");
    }
    Ok(())
}

/// Mounts tracefs when it is missing. Never fatal: `hawk-ebpf` tries too, and
/// `hawk-ebpf check` says what is wrong.
fn tracefs() {
    const DIR: &str = "/sys/kernel/tracing";
    for dir in [DIR, "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            found("tracefs", dir);
            return;
        }
    }
    if !crate::is_root() {
        println!("warning   tracefs: not mounted, and mounting it at {DIR} needs root");
        return;
    }
    installing(&format!("tracefs at {DIR}"));
    match run(Command::new("mount").args(["-t", "tracefs", "tracefs", DIR])) {
        Ok(()) => installed("tracefs", DIR),
        Err(e) => println!("warning   tracefs: {e:#}"),
    }
}

/// `rustup run nightly ARGS…`: a command of the nightly toolchain. Rustup
/// must not install a missing nightly on its own (with its default profile):
/// [`nightly`] does that.
fn rustup_nightly(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly"])
        .args(args)
        .env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn found(what: &str, detail: &str) {
    println!("found     {what}: {detail}");
}

fn installing(what: &str) {
    println!("installing {what}");
}

fn installed(what: &str, detail: &str) {
    println!("installed {what}: {detail}");
}
