//! `cargo xtask vm-test`: the integration tests inside real Debian kernels.
//!
//! For each kernel asked for (6.1 from bookworm, 6.12 from trixie, 7.x from
//! sid), this task:
//!
//! 0. builds the binaries and the test binaries once, and hard-links them
//!    into a snapshot that the guests bind over `target/<profile>` (other
//!    builds may replace files in the shared target directory meanwhile);
//! 1. downloads the kernel's packages from Debian's archive with `apt-get
//!    download` through a private apt configuration (the machine's sources are
//!    left alone) and unpacks them with `dpkg-deb -x`, cached under
//!    `target/vm-cache/<kernel>/` (delete that directory, or set
//!    `HAWK_VM_REFRESH=1`, to fetch the newest package again);
//! 2. builds a tiny initramfs: busybox-static, the virtio/9p/overlay modules
//!    (decompressed, with their dependencies from `modinfo`) and an `/init`
//!    script generated for this run;
//! 3. boots it with QEMU (software emulation, `-accel tcg -cpu qemu64`: the
//!    `/dev/kvm` of our CI machines cannot run stock kernels; `HAWK_VM_ACCEL=kvm`
//!    tries KVM instead). The guest mounts the host's `/` read-only over 9p
//!    under a tmpfs overlay, so it sees the target directory at the same path
//!    and may write into it (scratch files, `cc` output) without touching the
//!    host; brings up loopback; mounts proc, sys, tracefs, debugfs and bpffs;
//!    raises the memlock limit; runs every integration test binary of
//!    `hawk-tests` one after the other with `--test-threads=1 --nocapture`
//!    (with `HAWK_TEST_VM=1` and `HAWK_TEST_VM_ACCEL=tcg|kvm` in their
//!    environment); writes the overall exit status into a writable 9p share
//!    of the host; and powers off;
//! 4. streams the guest's console with a `[<kernel>]` prefix, kills the guest
//!    when it exceeds the timeout, and counts passed, failed and skipped tests
//!    (a test that prints `SKIPPED:` is a skip, as are ignored tests).
//!
//! A summary table closes the run; the task fails when any kernel failed.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, probe};

/// Debian packages the task needs on the host.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "zstd",
    "xz-utils",
];

/// Modules the guest loads (with their dependencies) unless built in.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

const ARCHIVE: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// A kernel the task can test: its name on the command line, the Debian
/// suites its package comes from, and the version prefix it must have.
struct KernelSpec {
    name: &'static str,
    suites: &'static [(&'static str, &'static str)],
    version_prefix: &'static str,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        suites: &[(ARCHIVE, "bookworm"), (SECURITY, "bookworm-security")],
        version_prefix: "6.1.",
    },
    KernelSpec {
        name: "6.12",
        suites: &[(ARCHIVE, "trixie"), (SECURITY, "trixie-security")],
        version_prefix: "6.12.",
    },
    KernelSpec {
        name: "7.x",
        suites: &[(ARCHIVE, "sid")],
        version_prefix: "7.",
    },
];

/// Options of `cargo xtask vm-test`.
pub struct Options {
    pub kernels: Vec<String>,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub args: Vec<OsString>,
}

/// A kernel unpacked in the cache, with the initramfs modules it needs.
struct Kernel {
    /// `6.1.0-56-amd64`.
    release: String,
    /// The bzImage.
    image: PathBuf,
    /// The unpacked `.../modules/<release>` directory.
    modules: PathBuf,
}

/// What one kernel's run came to.
struct Outcome {
    kernel: String,
    release: String,
    passed: u32,
    failed: u32,
    skipped: u32,
    secs: f64,
    error: Option<String>,
}

/// One integration test binary and the directory cargo would run it in.
struct TestBinary {
    path: PathBuf,
    cwd: PathBuf,
}

pub fn vm_test(options: &Options) -> Result<()> {
    let specs = select_kernels(&options.kernels)?;
    println!("==> setup");
    crate::setup::setup()?;
    apt_install(HOST_PACKAGES)?;

    println!("==> build");
    cmd::run(&mut crate::build_bins(false))?;
    let binaries = test_binaries()?;
    for binary in &binaries {
        println!("test binary {}", binary.path.display());
    }

    let cache = crate::target_dir()?.join("vm-cache");
    let snapshot = Snapshot::take(
        &binaries,
        &cache.join(format!("snapshot-{}", std::process::id())),
    )?;
    let mut outcomes = Vec::new();
    for spec in specs {
        println!("==> kernel {}", spec.name);
        let start = Instant::now();
        let mut outcome = Outcome {
            kernel: spec.name.to_owned(),
            release: String::new(),
            passed: 0,
            failed: 0,
            skipped: 0,
            secs: 0.0,
            error: None,
        };
        if let Err(e) = test_kernel(spec, &cache, &binaries, &snapshot, options, &mut outcome) {
            eprintln!("[{}] FAILED: {e:#}", spec.name);
            outcome.error = Some(format!("{e:#}"));
        }
        outcome.secs = start.elapsed().as_secs_f64();
        let run_dir = cache
            .join(spec.name)
            .join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(run_dir);
        outcomes.push(outcome);
    }
    let _ = std::fs::remove_dir_all(&snapshot.dir);

    println!("==> summary");
    println!(
        "{:<6} {:<26} {:>6} {:>6} {:>7} {:>8}  result",
        "kernel", "release", "passed", "failed", "skipped", "seconds"
    );
    for o in &outcomes {
        let result = match &o.error {
            None => "ok".to_owned(),
            Some(e) => format!("FAILED: {}", e.lines().next().unwrap_or_default()),
        };
        println!(
            "{:<6} {:<26} {:>6} {:>6} {:>7} {:>8.1}  {result}",
            o.kernel, o.release, o.passed, o.failed, o.skipped, o.secs
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the VM tests failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

fn select_kernels(names: &[String]) -> Result<Vec<&'static KernelSpec>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(KERNELS.iter().collect());
    }
    let mut specs = Vec::new();
    for name in names {
        let spec = KERNELS.iter().find(|k| k.name == name).with_context(|| {
            let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            format!("unknown kernel {name:?}: use {} or all", known.join(", "))
        })?;
        if !specs.iter().any(|s: &&KernelSpec| s.name == spec.name) {
            specs.push(spec);
        }
    }
    Ok(specs)
}

fn test_kernel(
    spec: &KernelSpec,
    cache: &Path,
    binaries: &[TestBinary],
    snapshot: &Snapshot,
    options: &Options,
    outcome: &mut Outcome,
) -> Result<()> {
    let dir = cache.join(spec.name);
    let kernel = fetch_kernel(spec, &dir)?;
    outcome.release = kernel.release.clone();
    if !kernel.release.starts_with(spec.version_prefix) {
        bail!(
            "the newest kernel of {} is {}, not {}*",
            spec.suites[0].1,
            kernel.release,
            spec.version_prefix
        );
    }
    // Per process: several runs may share the target directory.
    remove_stale(&dir, "run-");
    let run_dir = dir.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let results = run_dir.join("results");
    std::fs::create_dir_all(&results)
        .with_context(|| format!("cannot create {}", results.display()))?;
    let initramfs = run_dir.join("initramfs.cpio");
    build_initramfs(
        &kernel,
        &run_dir.join("initramfs"),
        &initramfs,
        binaries,
        snapshot,
        &options.args,
    )?;

    // Under TCG a kernel occasionally crashes while it boots (seen with 7.x:
    // an invalid opcode while code is patched), before any test ran: that
    // one boot is retried.
    let mut counts = boot(spec.name, &kernel, &initramfs, &results, options)?;
    if !counts.started {
        println!(
            "[{}] the guest stopped before its init started the tests: booting once more",
            spec.name
        );
        counts = boot(spec.name, &kernel, &initramfs, &results, options)?;
    }
    (outcome.passed, outcome.failed, outcome.skipped) = counts.finish();

    let status = std::fs::read_to_string(results.join("status")).ok();
    match status.as_deref().map(str::trim) {
        None => bail!(
            "the guest stopped without writing its exit status (kernel panic or broken init? \
             see its output above)"
        ),
        Some("0") => {}
        Some(code) => bail!("a test binary failed in the guest (exit status {code})"),
    }
    if counts.binaries != binaries.len() {
        bail!(
            "{} of {} test binaries reported a result",
            counts.binaries,
            binaries.len()
        );
    }
    if outcome.failed > 0 {
        bail!("{} tests failed", outcome.failed);
    }
    Ok(())
}

/// The hawk-tests integration test executables (built here, dev profile).
fn test_binaries() -> Result<Vec<TestBinary>> {
    // The same package set as `cargo xtask test`, so nothing is rebuilt with
    // other features; only hawk-tests' `test` targets are kept.
    let mut build = crate::cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "hawk-ebpf",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    build.stdout(Stdio::piped());
    println!("$ {}", cmd::display(&build));
    let mut child = build
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(&build)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut binaries = Vec::new();
    for message in cargo_metadata::Message::parse_stream(BufReader::new(stdout)) {
        let message = message.context("reading cargo's JSON messages")?;
        let cargo_metadata::Message::CompilerArtifact(artifact) = message else {
            continue;
        };
        let is_test = artifact
            .target
            .kind
            .contains(&cargo_metadata::TargetKind::Test);
        let in_tests_package = artifact.manifest_path.parent().and_then(|p| p.file_name())
            == Some("tests")
            && artifact.package_id.repr.contains("hawk-tests");
        if let (true, true, Some(exe)) = (is_test, in_tests_package, artifact.executable) {
            binaries.push(TestBinary {
                path: exe.into_std_path_buf(),
                cwd: artifact
                    .manifest_path
                    .parent()
                    .context("manifest dir")?
                    .to_path_buf()
                    .into_std_path_buf(),
            });
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    cmd::check(&build, status)?;
    if binaries.is_empty() {
        bail!("cargo built no integration test binary of hawk-tests");
    }
    binaries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(binaries)
}

/// Hard links to the binaries of this run, taken right after building them:
/// other builds may replace the files in the shared target directory while
/// the guests run (cargo and the linkers replace a file, so a hard link keeps
/// this build's). The guest binds each copy over its profile directory, so
/// the tests find everything at the usual paths, and writes land in its
/// tmpfs overlay.
struct Snapshot {
    dir: PathBuf,
    /// (profile directory, e.g. target/debug; its copy).
    dirs: Vec<(PathBuf, PathBuf)>,
}

impl Snapshot {
    fn take(binaries: &[TestBinary], dir: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        // Snapshots of runs that were killed (named after their process).
        remove_stale(
            dir.parent().context("snapshot dir has no parent")?,
            "snapshot-",
        );
        let mut dirs: Vec<(PathBuf, PathBuf)> = Vec::new();
        for binary in binaries {
            // target/<profile>/deps/<test>-<hash>
            let profile_dir = binary
                .path
                .parent()
                .and_then(Path::parent)
                .context("test binary outside target/<profile>/deps")?
                .to_path_buf();
            let copy = dir.join(profile_dir.file_name().context("profile dir name")?);
            if !dirs.iter().any(|(p, _)| *p == profile_dir) {
                std::fs::create_dir_all(copy.join("deps"))?;
                // The profile's executables: hawk-ebpf and the workloads.
                for entry in std::fs::read_dir(&profile_dir)? {
                    let entry = entry?;
                    let meta = entry.metadata()?;
                    if meta.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
                    {
                        link_or_copy(&entry.path(), &copy.join(entry.file_name()))?;
                    }
                }
                dirs.push((profile_dir.clone(), copy.clone()));
            }
            let name = binary.path.file_name().context("test binary name")?;
            link_or_copy(&binary.path, &copy.join("deps").join(name))?;
        }
        println!("snapshot  of the binaries: {}", dir.display());
        Ok(Self {
            dir: dir.to_path_buf(),
            dirs,
        })
    }
}

/// Removes the directories `<prefix><pid>` in `parent` whose process is gone
/// (runs that were killed).
fn remove_stale(parent: &Path, prefix: &str) {
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix)
            && !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernels from Debian's archive

/// The cached kernel of `spec` in `dir`, downloaded and unpacked when missing.
fn fetch_kernel(spec: &KernelSpec, dir: &Path) -> Result<Kernel> {
    let root = dir.join("root");
    let ready = dir.join("ready");
    let refresh = std::env::var_os("HAWK_VM_REFRESH").is_some_and(|v| !v.is_empty() && v != "0");
    if ready.exists() && !refresh {
        let kernel = find_kernel(&root)?;
        println!("found     kernel {}: {}", spec.name, kernel.release);
        return Ok(kernel);
    }
    println!("fetching  kernel {} from {}", spec.name, suites(spec));
    // Everything is fetched into a directory of this process and moved into
    // place at the end, so runs sharing the target directory do not clash.
    remove_stale(dir, "fetch-");
    let staging = dir.join(format!("fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let apt = Apt::new(&staging.join("apt"), spec)?;
    cmd::run(apt.command("apt-get").args(["-q", "update"]))?;
    let image = apt
        .depends("linux-image-amd64")?
        .into_iter()
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .context("linux-image-amd64 depends on no linux-image-*-amd64 package")?;
    // From 7.x on the image package is a shell around linux-binary-* (the
    // kernel) and linux-modules-* (its modules).
    let mut packages = vec![image.clone()];
    packages.extend(
        apt.depends(&image)?
            .into_iter()
            .filter(|p| p.starts_with("linux-binary-") || p.starts_with("linux-modules-")),
    );
    let debs = staging.join("debs");
    let new_root = staging.join("root");
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    cmd::run(
        apt.command("apt-get")
            .args(["-q", "download"])
            .args(&packages)
            .current_dir(&debs),
    )?;
    for entry in std::fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&new_root))?;
        }
    }
    find_kernel(&new_root)?;
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&new_root, &root)
        .with_context(|| format!("cannot move {} to {}", new_root.display(), root.display()))?;
    let _ = std::fs::remove_dir_all(&staging);
    let kernel = find_kernel(&root)?;
    std::fs::write(&ready, format!("{}\n", kernel.release))?;
    println!("fetched   kernel {}: {}", spec.name, kernel.release);
    Ok(kernel)
}

fn suites(spec: &KernelSpec) -> String {
    spec.suites
        .iter()
        .map(|(_, suite)| *suite)
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The kernel unpacked under `root`: `lib/modules/<release>` (bookworm) or
/// `usr/lib/modules/<release>`, and the image in `boot/vmlinuz-<release>` or
/// `usr/lib/modules/<release>/vmlinuz`.
fn find_kernel(root: &Path) -> Result<Kernel> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = std::fs::read_dir(root.join(base)) else {
            continue;
        };
        for entry in entries {
            let modules = entry?.path();
            if !modules.join("kernel").is_dir() {
                continue;
            }
            let release = modules
                .file_name()
                .context("modules dir name")?
                .to_string_lossy()
                .into_owned();
            let image = [
                root.join("boot").join(format!("vmlinuz-{release}")),
                modules.join("vmlinuz"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no kernel image for {release} in {}", root.display()))?;
            return Ok(Kernel {
                release,
                image,
                modules,
            });
        }
    }
    bail!("no kernel modules unpacked in {}", root.display())
}

/// A private apt configuration: its own sources, lists and cache, so the
/// machine's apt state stays as it is.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path, spec: &KernelSpec) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let mut sources = String::new();
        for (uri, suite) in spec.suites {
            writeln!(
                sources,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main"
            )?;
        }
        let list = dir.join("sources.list");
        std::fs::write(&list, sources)?;
        let d = dir.display();
        let options = [
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/dev/null".into(),
            "Dir::Etc::Preferences=/dev/null".into(),
            "Dir::Etc::PreferencesParts=/dev/null".into(),
            format!("Dir::State::Lists={d}/lists"),
            "Dir::State::status=/dev/null".into(),
            format!("Dir::Cache={d}/cache"),
            "Acquire::Languages=none".into(),
            "Debug::NoLocking=1".into(),
            // apt-get download writes into the current directory, which the
            // _apt user may not be allowed to.
            "APT::Sandbox::User=root".into(),
        ];
        Ok(Self {
            options: options.into_iter().flat_map(|o| ["-o".into(), o]).collect(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    /// The packages `package` depends on (candidate version).
    fn depends(&self, package: &str) -> Result<Vec<String>> {
        let out = probe(self.command("apt-cache").args(["depends", package]))
            .with_context(|| format!("`apt-cache depends {package}` failed"))?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(|p| p.trim_matches(['<', '>']).to_owned())
            .collect())
    }
}

// ---------------------------------------------------------------------------
// The initramfs

/// Writes the initramfs tree into `dir` and packs it into `out` (newc cpio).
fn build_initramfs(
    kernel: &Kernel,
    dir: &Path,
    out: &Path,
    binaries: &[TestBinary],
    snapshot: &Snapshot,
    args: &[OsString],
) -> Result<()> {
    for sub in [
        "bin", "modules", "dev", "proc", "sys", "lower", "rw", "newroot", "results",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let busybox = Path::new("/bin/busybox");
    std::fs::copy(busybox, dir.join("bin/busybox"))
        .with_context(|| format!("cannot copy {}", busybox.display()))?;
    let mut order = String::new();
    for module in guest_modules(kernel)? {
        let name = module_name(&module);
        let dest = dir.join("modules").join(format!("{name}.ko"));
        decompress_module(&module, &dest)?;
        writeln!(order, "{name}")?;
    }
    std::fs::write(dir.join("modules/order"), order)?;
    let init = dir.join("init");
    std::fs::write(&init, init_script(binaries, snapshot, args))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut pack = Command::new("sh");
    pack.arg("-c")
        .arg(r#"cd "$1" && find . | cpio --quiet -o -H newc -R 0:0 > "$2""#)
        .arg("sh")
        .arg(dir)
        .arg(out);
    cmd::run(&mut pack)
}

/// The module files to load, dependencies first; built-in modules are left
/// out.
fn guest_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![kernel.modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(".ko") {
                files.insert(module_name(&path), path);
            }
        }
    }
    // Newer packages (7.x) ship no modules.builtin: then a module that is
    // not a file is taken for built in, and the guest's mounts tell.
    let builtin: Option<HashSet<String>> =
        std::fs::read_to_string(kernel.modules.join("modules.builtin"))
            .ok()
            .map(|text| text.lines().map(|l| module_name(Path::new(l))).collect());
    let mut ordered = Vec::new();
    let mut seen = HashSet::new();
    for name in GUEST_MODULES {
        add_module(name, &files, &builtin, &mut seen, &mut ordered)?;
    }
    Ok(ordered)
}

fn add_module(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &Option<HashSet<String>>,
    seen: &mut HashSet<String>,
    ordered: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) || builtin.as_ref().is_some_and(|b| b.contains(&name)) {
        return Ok(());
    }
    let Some(file) = files.get(&name) else {
        if builtin.is_none() {
            println!("note      module {name}: no file (no modules.builtin): taken as built in");
            return Ok(());
        }
        bail!("kernel module {name} is neither built in nor a file");
    };
    let depends = probe(Command::new("modinfo").args(["-F", "depends"]).arg(file))
        .with_context(|| format!("`modinfo {}` failed", file.display()))?;
    for dep in depends.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        add_module(dep, files, builtin, seen, ordered)?;
    }
    ordered.push(file.clone());
    Ok(())
}

/// `9pnet_virtio` for `.../9pnet_virtio.ko.xz` (dashes as underscores).
fn module_name(path: &Path) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    file.split(".ko")
        .next()
        .unwrap_or_default()
        .replace('-', "_")
}

/// Copies a module, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz` (busybox's
/// insmod loads plain ELF files).
fn decompress_module(src: &Path, dest: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        std::fs::copy(src, dest).with_context(|| format!("cannot copy {name}"))?;
        return Ok(());
    };
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(src)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !out.status.success() {
        bail!("`{tool} -dc {name}` failed: {}", out.status);
    }
    std::fs::write(dest, out.stdout)?;
    Ok(())
}

/// QEMU's accelerator: `tcg` unless `HAWK_VM_ACCEL=kvm`.
fn accel() -> &'static str {
    if std::env::var("HAWK_VM_ACCEL").is_ok_and(|a| a == "kvm") {
        "kvm"
    } else {
        "tcg"
    }
}

/// Single-quotes `s` for the guest's shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's `/init`: modules, mounts, the test binaries, exit status,
/// power off. Lines starting with `HAWK-VM:` are read by the host.
fn init_script(binaries: &[TestBinary], snapshot: &Snapshot, args: &[OsString]) -> String {
    let mut script = String::from(INIT_HEAD);
    for (profile_dir, copy) in &snapshot.dirs {
        let _ = writeln!(
            script,
            "mount -o bind /newroot{} /newroot{} || fail \"bind the snapshot of {}\"",
            sh_quote(&copy.to_string_lossy()),
            sh_quote(&profile_dir.to_string_lossy()),
            profile_dir.display(),
        );
    }
    script.push_str(INIT_RUN);
    // Tests may read these, e.g. to allow for the emulator's slow clock.
    let _ = writeln!(
        script,
        "export HAWK_TEST_VM=1 HAWK_TEST_VM_ACCEL={}",
        accel()
    );
    let extra: Vec<String> = args
        .iter()
        .map(|a| sh_quote(&a.to_string_lossy()))
        .collect();
    for binary in binaries {
        let path = sh_quote(&binary.path.to_string_lossy());
        let cwd = sh_quote(&binary.cwd.to_string_lossy());
        let _ = writeln!(
            script,
            "echo \"HAWK-VM: run {}\"\n\
             run_test {cwd} {path} --test-threads=1 --nocapture {}\n\
             code=$?\n\
             echo \"HAWK-VM: exit $code {}\"\n\
             [ $code -eq 0 ] || status=$code",
            binary.path.display(),
            extra.join(" "),
            binary.path.display(),
        );
    }
    script.push_str(INIT_TAIL);
    script
}

const INIT_HEAD: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "HAWK-VM: init failed: $*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The tests talk to their workloads over 127.0.0.1.
ip link set lo up || fail "bring up the loopback interface"
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || fail "insmod $m"
done
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" host /lower || fail "mount the host's / over 9p"
mount -t 9p -o "$opts" results /results || fail "mount the results share"
mount -t tmpfs -o size=50% tmpfs /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "mount the overlay root"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
# No tmpfs over /tmp: the checkout may live there (the overlay's upper
# layer already makes /tmp writable).
mount -t tmpfs tmpfs /newroot/run
mount -t tracefs tracefs /newroot/sys/kernel/tracing || fail "mount tracefs"
mount -t debugfs debugfs /newroot/sys/kernel/debug
mount -t bpf bpf /newroot/sys/fs/bpf
ulimit -l unlimited
echo "HAWK-VM: kernel $(uname -r), $(nproc) CPUs"
"#;

/// After the snapshot binds.
const INIT_RUN: &str = r#"run_test() {
    chroot /newroot /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$@" \
        </dev/null
}
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export RUST_BACKTRACE=1
status=0
"#;

const INIT_TAIL: &str = r#"echo "$status" > /results/status
sync
echo "HAWK-VM: done, status $status"
poweroff -f
"#;

// ---------------------------------------------------------------------------
// Booting

#[derive(Default)]
struct Counts {
    passed: u32,
    failed: u32,
    ignored: u32,
    skip_lines: u32,
    /// The init printed its `HAWK-VM: kernel` line (the boot went well).
    started: bool,
    /// Test binaries that printed their `test result:` line.
    binaries: usize,
}

/// Boots the guest, streams its console with a `[name]` prefix and counts
/// the test results; kills it after the timeout.
fn boot(
    name: &str,
    kernel: &Kernel,
    initramfs: &Path,
    results: &Path,
    options: &Options,
) -> Result<Counts> {
    let kvm = accel() == "kvm";
    let mut qemu = Command::new("qemu-system-x86_64");
    if kvm {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        qemu.args(["-accel", "tcg", "-cpu", "qemu64"]);
    }
    qemu.args(["-m", &options.memory_mib.to_string(), "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args([
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init",
        ])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            results.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", cmd::display(&qemu));
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(&qemu)))?;

    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        if tx.send(text.replace('\r', "")).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);

    let deadline = Instant::now() + options.timeout;
    let mut counts = Counts::default();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                println!("[{name}] {line}");
                count(&line, &mut counts);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    if timed_out {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "timed out after {}s: the guest hung or the tests are too slow (killed it; \
             `--timeout SECS` sets the limit)",
            options.timeout.as_secs()
        );
    }
    let status = child.wait().context("waiting for qemu")?;
    for reader in readers {
        let _ = reader.join();
    }
    if !status.success() {
        bail!("qemu failed: {status}");
    }
    Ok(counts)
}

/// Reads libtest's summary lines (`test result: ok. 5 passed; 0 failed; 1
/// ignored; …`) and the tests' `SKIPPED:` lines.
fn count(line: &str, counts: &mut Counts) {
    if line.starts_with("HAWK-VM: kernel ") {
        counts.started = true;
    }
    if line.contains("SKIPPED:") {
        // A skipping test passes: `finish` moves it from passed to skipped.
        counts.skip_lines += 1;
    }
    let Some(summary) = line.split("test result: ").nth(1) else {
        return;
    };
    counts.binaries += 1;
    let number = |what: &str| -> u32 {
        summary
            .split(';')
            .find_map(|part| {
                let part = part
                    .trim()
                    .trim_start_matches(|c: char| !c.is_ascii_digit());
                part.strip_suffix(what).and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    counts.passed += number("passed");
    counts.failed += number("failed");
    counts.ignored += number("ignored");
}

impl Counts {
    /// (passed, failed, skipped): tests that printed `SKIPPED:` passed for
    /// libtest but count as skipped, as do ignored ones.
    fn finish(&self) -> (u32, u32, u32) {
        (
            self.passed.saturating_sub(self.skip_lines),
            self.failed,
            self.ignored + self.skip_lines,
        )
    }
}

/// Installs the Debian packages that are not installed yet (as `setup` does
/// for its own); `apt-get update` runs only when something is missing.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            let status = probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
            status.as_deref() != Some("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        println!("found     {}: Debian packages", packages.join(", "));
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "installing Debian packages needs root: run as root, or `apt-get install {}` first",
            missing.join(" ")
        );
    }
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    println!("installed {}: Debian packages", missing.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summaries_and_skips() {
        let mut counts = Counts::default();
        for line in [
            "HAWK-VM: kernel 6.1.0-56-amd64, 2 CPUs",
            "test a ... SKIPPED: needs root (CAP_BPF, CAP_PERFMON)",
            "ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 4.15s",
            "test result: FAILED. 6 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; \
             finished in 101.67s",
        ] {
            count(line, &mut counts);
        }
        assert!(counts.started);
        assert_eq!(counts.binaries, 2);
        assert_eq!(counts.finish(), (8, 3, 2));
    }

    #[test]
    fn module_names_drop_the_compression_and_use_underscores() {
        assert_eq!(
            module_name(Path::new("kernel/net/9p/9pnet_virtio.ko.xz")),
            "9pnet_virtio"
        );
        assert_eq!(module_name(Path::new("virtio-iommu.ko")), "virtio_iommu");
    }
}
