//! Hawk's developer tasks, run as `cargo xtask <task>` (an alias in
//! `.cargo/config.toml`):
//!
//! - `setup`: installs what building and testing needs (see [`setup`]);
//! - `build`: setup, then builds every binary of the workspace;
//! - `run -- ARGS…`: setup, builds the binaries (release) and runs `hawk-ebpf`;
//! - `test -- ARGS…`: setup, then fmt, clippy, build and every test (root);
//! - `bench [--quick] [--only LIST]`: the measurements of BENCHMARKS.md (see [`bench`]);
//! - `vm-test [--kernel …] -- ARGS…`: the integration tests inside Debian
//!   kernels booted with QEMU (see [`vm`]).
//!
//! Every command that a task spawns is printed before it runs.
//!
//! The BPF crate `hawk-ebpf` only builds for `bpfel-unknown-none`, so the
//! host commands use `--workspace --exclude hawk-ebpf`; hawk-userspace's
//! build script builds it with aya-build (which needs what `setup` installs).

mod bench;
mod cmd;
mod setup;
mod vm;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "Hawk's developer tasks: cargo xtask setup | build | run | test | vm-test"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Measure overhead, BPF cost per sample, end-to-end latency and memory
    /// against no profiler and perf (needs root); prints tables for
    /// BENCHMARKS.md. `--quick` runs a short version (under 2 minutes).
    Bench {
        #[arg(long)]
        quick: bool,
        /// Run only these sections of BENCHMARKS.md (comma list, e.g. `2,6`).
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        only: Vec<u8>,
    },
    /// Install what is missing: nightly toolchain + rust-src, bpf-linker
    /// (with Debian's llvm-<major>-dev), tracefs. Fast when all is there.
    Setup,
    /// Set up, then build every binary of the workspace.
    Build {
        /// Build the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build the binaries and run hawk-ebpf: `cargo xtask run -- record --duration 10`.
    ///
    /// Builds the release profile by default, since a profiler's overhead
    /// should be measured optimized; `--debug` builds the dev profile instead.
    /// The exit code is hawk-ebpf's.
    Run {
        /// Build and run the dev profile instead of release.
        #[arg(long)]
        debug: bool,
        /// Arguments for hawk-ebpf, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run every check and test, stopping at the first failure:
    /// cargo fmt --check, clippy -D warnings, build, cargo test. Needs root
    /// (the integration tests load BPF programs).
    ///
    /// Arguments after `--` go to the test binaries, e.g. a name filter:
    /// `cargo xtask test -- speedscope`.
    Test {
        /// Arguments for the test binaries, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the integration tests inside Debian kernels booted with QEMU:
    /// `cargo xtask vm-test --kernel 6.1,7.x -- FILTER`.
    ///
    /// Fetches and caches the kernels under target/vm-cache, boots each with
    /// a tiny initramfs that sees the host's / read-only (under a tmpfs
    /// overlay), runs every hawk-tests integration binary with
    /// --test-threads=1 and prints a summary table. Fails if any kernel fails.
    VmTest {
        /// Kernels to test: 6.1, 6.12, 7.x or all (comma-separated or repeated).
        #[arg(long = "kernel", value_delimiter = ',', default_value = "all")]
        kernels: Vec<String>,
        /// Seconds one kernel may take (boot and every test) before its
        /// guest is killed and counted as failed.
        #[arg(long, default_value_t = 1500)]
        timeout: u64,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 3072)]
        memory: u32,
        /// Arguments for the test binaries, after `--` (e.g. a name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.task, Task::Setup) && std::env::var_os("AYA_BUILD_SKIP").is_some() {
        println!("note: ignoring AYA_BUILD_SKIP: this task needs the real BPF object");
    }
    let result = match cli.task {
        Task::Bench { quick, only } => bench::bench(quick, &only),
        Task::Setup => setup::setup(),
        Task::Build { release } => build(release),
        Task::Run { debug, args } => run(!debug, &args),
        Task::Test { args } => test(&args),
        Task::VmTest {
            kernels,
            timeout,
            memory,
            args,
        } => vm::vm_test(&vm::Options {
            kernels,
            timeout: std::time::Duration::from_secs(timeout),
            memory_mib: memory,
            args,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(release: bool) -> Result<()> {
    setup::setup()?;
    cmd::run(&mut build_bins(release))
}

fn run(release: bool, args: &[OsString]) -> Result<()> {
    setup::setup()?;
    // The same build as `build`: a narrower one (`-p hawk-userspace`) would
    // unify other features and recompile much of the workspace each time.
    cmd::run(&mut build_bins(release))?;
    let profile = if release { "release" } else { "debug" };
    let binary = target_dir()?.join(profile).join("hawk-ebpf");
    let mut hawk = Command::new(&binary);
    hawk.args(args);
    println!("$ {}", cmd::display(&hawk));
    // exec: hawk-ebpf takes this process's place, so Ctrl-C and its exit
    // code reach the caller unchanged.
    let err = hawk.exec();
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}

fn test(args: &[OsString]) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` must run as root: the integration tests load BPF programs \
             (they need CAP_BPF and CAP_PERFMON)"
        );
    }
    let mut unit_and_integration = cargo(&["test", "--workspace", "--exclude", "hawk-ebpf"]);
    if !args.is_empty() {
        unit_and_integration.arg("--").args(args);
    }
    // The integration tests run the `hawk-ebpf` binary from the target
    // directory, so the binaries are built (same dev profile) before them.
    let mut steps: Vec<(&str, Option<Command>)> = vec![
        ("setup", None),
        ("fmt", Some(cargo(&["fmt", "--all", "--check"]))),
        (
            "clippy",
            Some(cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "hawk-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])),
        ),
        ("build", Some(build_bins(false))),
        ("test", Some(unit_and_integration)),
    ];

    let mut summary = Vec::new();
    let mut failed = None;
    for (name, command) in &mut steps {
        if failed.is_some() {
            summary.push(format!("skipped {name}"));
            continue;
        }
        println!("==> {name}");
        let start = Instant::now();
        let result = match command {
            None => setup::setup(),
            Some(command) => cmd::run(command),
        };
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => summary.push(format!("ok      {name:<7} {secs:7.1}s")),
            Err(e) => {
                summary.push(format!("FAILED  {name:<7} {secs:7.1}s  {e:#}"));
                failed = Some(*name);
            }
        }
    }
    println!("==> summary");
    for line in &summary {
        println!("{line}");
    }
    match failed {
        Some(name) => bail!("step `{name}` failed"),
        None => Ok(()),
    }
}

/// A cargo command for the tasks that need the real BPF object: a leftover
/// `AYA_BUILD_SKIP` (which makes the build script write an empty placeholder)
/// is removed.
fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args).env_remove("AYA_BUILD_SKIP");
    cmd
}

/// `cargo build --workspace --exclude hawk-ebpf --bins [--release]`.
fn build_bins(release: bool) -> Command {
    let mut cmd = cargo(&["build", "--workspace", "--exclude", "hawk-ebpf", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    cmd
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and cargo config).
fn target_dir() -> Result<std::path::PathBuf> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("`cargo metadata` failed")?;
    Ok(metadata.target_directory.into_std_path_buf())
}

/// Whether this process runs as root: its effective uid, the second field of
/// the `Uid:` line in `/proc/self/status`, is 0.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0")
}
