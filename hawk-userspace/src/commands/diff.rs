//! `hawk-ebpf diff BASE NEW`: compare two profiles of the same program, e.g.
//! a fast and a slow trace, as a differential flamegraph plus a table of the
//! functions whose share grew (and shrank) most.
//!
//! - **Inputs.** BASE and NEW are Hawk JSON or folded stacks, told apart by
//!   content: JSON when the first non-space byte is `{`, folded otherwise.
//!   Folded stacks carry no kind: a folded file takes the kind of the other
//!   input when that one is Hawk JSON, and is cpu otherwise. Two profiles of
//!   different kinds (cpu vs mem) are an error, as is an empty profile.
//! - **Root frames.** Every stack starts with its process frame
//!   `comm (pid)`. Pids differ from run to run, so the ` (pid)` suffix is
//!   stripped before comparing: `server (41)` in BASE and `server (977)` in
//!   NEW are both `server`, and samples of several processes with the same
//!   name add up. Kernel frames lose their `_[k]` marker too (Hawk JSON does
//!   not keep it), so a JSON and a folded profile line up.
//! - **Shares, not counts.** A 10 s and a 30 s profile must be comparable, so
//!   both the table and the flamegraph compare fractions of each profile's
//!   total weight.
//! - **The table** ([`share_deltas`]): a function's share is inclusive, the
//!   fraction of the total weight whose stack contains the function at least
//!   once (a recursive function counts once per stack). Root (process)
//!   frames are left out. Deltas are in percentage points, NEW minus BASE.
//! - **The flamegraph** is inferno's differential one: inferno's
//!   `differential` pass scales BASE's counts to NEW's total (`normalize`)
//!   and writes `stack base new` lines, which `flamegraph::from_lines` draws
//!   with NEW's shape (frame width = NEW's weight) and colours each frame by
//!   the change of its self weight: red grew, blue shrank, white unchanged.
//!   Stacks present only in BASE have no width in NEW and are not drawn; the
//!   table's "shrank" part lists them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use inferno::flamegraph::color::BackgroundColor;
use inferno::flamegraph::{self, Options, Palette};

use crate::cli::DiffArgs;
use crate::output::{self, PROFILER_NAME, utc_parts};
use crate::profile::{Frame, FrameKind, Profile, ProfileKind};
use crate::render::folded::{self, split_process_frame};
use crate::render::{RenderError, json};

/// How many shrunk functions the table lists.
pub const SHRANK_TOP: usize = 5;

/// Names longer than this (in characters) are cut, ending in `…`.
pub const MAX_NAME_CHARS: usize = 60;

/// How the share of one function changed between BASE and NEW.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareDelta {
    /// The function's name (a frame name; root frames are never listed).
    pub function: String,
    /// Weight of BASE's stacks that contain the function.
    pub base_weight: u64,
    /// Weight of NEW's stacks that contain the function.
    pub new_weight: u64,
    /// `base_weight` / BASE's total weight, 0 to 1.
    pub base_share: f64,
    /// `new_weight` / NEW's total weight, 0 to 1.
    pub new_share: f64,
    /// `new_share - base_share`, -1 to 1, computed from the weights as one
    /// division, so equal changes are equal here (and sort as ties).
    pub delta: f64,
}

impl ShareDelta {
    /// The delta in percentage points, -100 to 100.
    pub fn delta_points(&self) -> f64 {
        self.delta * 100.0
    }
}

/// A root frame's name without its ` (pid)` suffix: `server (41)` → `server`.
/// Names without such a suffix are returned unchanged.
pub fn strip_pid(name: &str) -> &str {
    split_process_frame(name).map_or(name, |(comm, _)| comm)
}

/// A copy of `profile` ready to compare: root (process) frames without their
/// pid, pids and thread ids 0, and kernel frames as plain frames, so the same
/// program's stacks line up across runs and input formats.
pub fn comparable(profile: &Profile) -> Profile {
    let mut out = Profile::new(profile.metadata.clone());
    out.samples = profile
        .samples
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.pid = 0;
            s.tid = 0;
            s.comm = strip_pid(&s.comm).to_string();
            for frame in &mut s.frames {
                match frame.kind {
                    FrameKind::Process => {
                        let name = strip_pid(&frame.name).to_string();
                        *frame = Frame::new(name, FrameKind::Process);
                    }
                    FrameKind::Kernel => frame.kind = FrameKind::User,
                    FrameKind::User => {}
                }
            }
            s
        })
        .collect();
    out
}

/// Per function (root frames excluded): the weight of the stacks that
/// contain it at least once. Also returns the profile's total weight.
pub fn inclusive_weights(profile: &Profile) -> (BTreeMap<&str, u64>, u64) {
    let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
    let mut in_stack: BTreeSet<&str> = BTreeSet::new();
    for sample in &profile.samples {
        in_stack.clear();
        in_stack.extend(
            sample
                .frames
                .iter()
                .filter(|f| f.kind != FrameKind::Process)
                .map(|f| f.name.as_str()),
        );
        for name in &in_stack {
            *weights.entry(name).or_default() += sample.weight;
        }
    }
    (weights, profile.total_weight())
}

/// The change of every function's inclusive share from `base` to `new`,
/// largest growth first (ties by name). A function missing from one profile
/// has share 0 there; an empty profile gives every function share 0. Root
/// (process) frames are not functions and are left out.
pub fn share_deltas(base: &Profile, new: &Profile) -> Vec<ShareDelta> {
    let (base_weights, base_total) = inclusive_weights(base);
    let (new_weights, new_total) = inclusive_weights(new);
    // An empty profile has no weight anywhere: its shares are 0 whatever
    // the divisor, and 1 keeps the arithmetic finite.
    let (base_total, new_total) = (base_total.max(1), new_total.max(1));
    let share = |w: u64, total: u64| w as f64 / total as f64;
    // new/nt - base/bt = (new·bt - base·nt) / (bt·nt): exact integers, one rounding.
    let delta = |base_w: u64, new_w: u64| {
        let num =
            i128::from(new_w) * i128::from(base_total) - i128::from(base_w) * i128::from(new_total);
        num as f64 / (i128::from(base_total) * i128::from(new_total)) as f64
    };
    let names: BTreeSet<&str> = base_weights
        .keys()
        .chain(new_weights.keys())
        .copied()
        .collect();
    let mut deltas: Vec<ShareDelta> = names
        .into_iter()
        .map(|name| {
            let base_weight = base_weights.get(name).copied().unwrap_or(0);
            let new_weight = new_weights.get(name).copied().unwrap_or(0);
            ShareDelta {
                function: name.to_string(),
                base_weight,
                new_weight,
                base_share: share(base_weight, base_total),
                new_share: share(new_weight, new_total),
                delta: delta(base_weight, new_weight),
            }
        })
        .collect();
    deltas.sort_by(|a, b| {
        b.delta
            .total_cmp(&a.delta)
            .then_with(|| a.function.cmp(&b.function))
    });
    deltas
}

/// Whether a delta shows as something other than `+0.0` / `-0.0` in the table.
fn visible(points: f64) -> bool {
    points.abs() >= 0.05
}

/// `name`, cut to [`MAX_NAME_CHARS`] characters with a final `…`.
fn truncate(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_CHARS {
        name.to_string()
    } else {
        let mut cut: String = name.chars().take(MAX_NAME_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The text table: up to `top` functions that grew most, then up to
/// [`SHRANK_TOP`] that shrank most (deltas that round to 0.0 are left out).
/// `deltas` is [`share_deltas`]'s output. Each row is
/// `  <name>  <BASE %>  <NEW %>  <delta>`, right-aligned, one decimal.
pub fn table(deltas: &[ShareDelta], top: usize) -> String {
    let grew: Vec<&ShareDelta> = deltas
        .iter()
        .filter(|d| d.delta > 0.0 && visible(d.delta_points()))
        .take(top)
        .collect();
    let mut shrank: Vec<&ShareDelta> = deltas
        .iter()
        .filter(|d| d.delta < 0.0 && visible(d.delta_points()))
        .collect();
    shrank.sort_by(|a, b| {
        a.delta
            .total_cmp(&b.delta)
            .then_with(|| a.function.cmp(&b.function))
    });
    shrank.truncate(SHRANK_TOP);
    let width = grew
        .iter()
        .chain(&shrank)
        .map(|d| truncate(&d.function).chars().count())
        .chain(["Shrank most".len()])
        .max()
        .unwrap_or(0);
    let section = |title: &str, rows: &[&ShareDelta], none: &str| {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{title:<w$}  {:>6}  {:>6}  {:>10}",
            "BASE %",
            "NEW %",
            "DELTA (pp)",
            w = width + 2
        );
        if rows.is_empty() {
            let _ = writeln!(out, "  ({none})");
        }
        for d in rows {
            let name = truncate(&d.function);
            let pad = width.saturating_sub(name.chars().count());
            let _ = writeln!(
                out,
                "  {name}{:pad$}  {:>6.1}  {:>6.1}  {:>+10.1}",
                "",
                d.base_share * 100.0,
                d.new_share * 100.0,
                d.delta_points(),
            );
        }
        out
    };
    format!(
        "{}\n{}",
        section("Grew most", &grew, "no function grew"),
        section("Shrank most", &shrank, "no function shrank")
    )
}

/// Draws the differential flamegraph of `base` → `new` (both already
/// [`comparable`]): NEW's shape, coloured by the change since BASE with
/// BASE normalised to NEW's total.
pub fn differential_svg(
    base: &Profile,
    new: &Profile,
    title: &str,
    subtitle: &str,
) -> Result<Vec<u8>, RenderError> {
    let join = |p: &Profile| {
        let mut text = folded::lines(p).join("\n");
        text.push('\n');
        text
    };
    let (base_text, new_text) = (join(base), join(new));
    let mut lines = Vec::new();
    let opts = inferno::differential::Options {
        normalize: true,
        strip_hex: false,
    };
    inferno::differential::from_readers(
        opts,
        base_text.as_bytes(),
        new_text.as_bytes(),
        &mut lines,
    )
    .map_err(RenderError::Flamegraph)?;
    let lines = String::from_utf8_lossy(&lines);
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = new.metadata.kind.unit().to_string();
    // Colours come from the deltas; a plain background keeps red and blue readable.
    options.colors = Palette::Basic(inferno::flamegraph::color::BasicPalette::Hot);
    options.bgcolors = Some(BackgroundColor::Grey);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.lines(), &mut out)
        .map_err(RenderError::Flamegraph)?;
    Ok(out)
}

/// A profile read from a file, and whether the file was Hawk JSON.
struct Input {
    profile: Profile,
    json: bool,
}

/// Reads `path` (the `role` input, BASE or NEW) as Hawk JSON or folded
/// stacks; errors name the role and the file.
fn load(role: &str, path: &Path) -> anyhow::Result<Input> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {role} {shown}"))?;
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let profile = if json {
        json::parse(&bytes).map_err(|e| match e {
            RenderError::Json(e) => anyhow!("{role} {shown} is not valid Hawk JSON: {e}"),
            e => anyhow!("{role} {shown}: {e}"),
        })?
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            anyhow!("{role} {shown} is neither Hawk JSON nor folded stacks (not UTF-8 text)")
        })?;
        folded::parse(text, ProfileKind::Cpu).with_context(|| format!("{role} {shown}"))?
    };
    if profile.total_weight() == 0 {
        bail!("{role} {shown} has no samples: nothing to compare");
    }
    Ok(Input { profile, json })
}

/// `Hawk CPU` or `Hawk memory`.
fn what(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Cpu => "Hawk CPU",
        ProfileKind::Mem => "Hawk memory",
    }
}

/// The file name of a path, for titles.
fn short(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// `hwk_<kind>_ebpf_diff_<date>_<time>.svg`, `at` in UTC.
pub fn file_name(kind: ProfileKind, at: SystemTime) -> String {
    format!(
        "hwk_{}_{PROFILER_NAME}_diff_{}.svg",
        kind.as_str(),
        utc_parts(at).file_stamp()
    )
}

/// Runs `diff`: prints the table and the SVG's path, returns the path.
pub fn run(args: DiffArgs) -> anyhow::Result<PathBuf> {
    let mut base = load("BASE", &args.base)?;
    let mut new = load("NEW", &args.new)?;
    // Folded stacks carry no kind: take the JSON side's.
    match (base.json, new.json) {
        (true, false) => new.profile.metadata.kind = base.profile.metadata.kind,
        (false, true) => base.profile.metadata.kind = new.profile.metadata.kind,
        _ => {}
    }
    let kind = new.profile.metadata.kind;
    let base_kind = base.profile.metadata.kind;
    if base_kind != kind {
        bail!(
            "BASE {} is a {} profile but NEW {} is a {} profile: diff compares profiles of the same kind",
            args.base.display(),
            base_kind.as_str(),
            args.new.display(),
            kind.as_str()
        );
    }
    output::check_writable(&args.out)?;

    let base = comparable(&base.profile);
    let new = comparable(&new.profile);
    let (base_name, new_name) = (short(&args.base), short(&args.new));
    let unit = kind.unit();
    let (base_total, new_total) = (base.total_weight(), new.total_weight());
    let title = args.title.clone().unwrap_or_else(|| {
        format!(
            "{} diff: {new_name} vs {base_name} (red: grew, blue: shrank)",
            what(kind)
        )
    });
    let subtitle = format!(
        "Width: NEW ({new_total} {unit}). Colour: change of share since BASE \
         ({base_total} {unit}, scaled to NEW's total). Root frames without pids."
    );
    let svg = differential_svg(&base, &new, &title, &subtitle)
        .context("cannot draw the differential flamegraph")?;
    let name = file_name(kind, SystemTime::now());
    let path = output::write_atomic(&args.out, &name, &svg)
        .with_context(|| format!("cannot write {}", args.out.join(&name).display()))?;

    let deltas = share_deltas(&base, &new);
    println!(
        "{} diff: NEW {new_name} ({new_total} {unit}) vs BASE {base_name} ({base_total} {unit})",
        what(kind)
    );
    println!(
        "Share: % of all {unit} whose stack contains the function; delta in percentage points\n"
    );
    print!("{}", table(&deltas, args.top));
    println!();
    println!("{}", path.display());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Metadata, Sample};

    /// A cpu profile of stacks `"root;a;b"` with weights; the first frame is
    /// the process frame, `_[k]` marks kernel frames.
    fn profile(stacks: &[(&str, u64)]) -> Profile {
        let text: String = stacks.iter().map(|(s, w)| format!("{s} {w}\n")).collect();
        folded::parse(&text, ProfileKind::Cpu).unwrap()
    }

    fn find<'a>(deltas: &'a [ShareDelta], name: &str) -> &'a ShareDelta {
        deltas
            .iter()
            .find(|d| d.function == name)
            .unwrap_or_else(|| panic!("{name} not in {deltas:#?}"))
    }

    #[test]
    fn growth_and_shrink_with_exact_shares() {
        let base = profile(&[("w (1);main;fast_path", 75), ("w (1);main;slow_path", 25)]);
        let new = profile(&[("w (2);main;fast_path", 25), ("w (2);main;slow_path", 75)]);
        let deltas = share_deltas(&base, &new);
        let names: Vec<&str> = deltas.iter().map(|d| d.function.as_str()).collect();
        assert_eq!(names, ["slow_path", "main", "fast_path"]);
        assert_eq!(
            deltas[0],
            ShareDelta {
                function: "slow_path".into(),
                base_weight: 25,
                new_weight: 75,
                base_share: 0.25,
                new_share: 0.75,
                delta: 0.5,
            }
        );
        assert_eq!(deltas[0].delta_points(), 50.0);
        assert_eq!((deltas[1].base_share, deltas[1].new_share), (1.0, 1.0));
        assert_eq!(deltas[1].delta, 0.0);
        assert_eq!(deltas[2].delta_points(), -50.0);
    }

    #[test]
    fn shares_are_normalised_by_each_total() {
        // 10 s vs 30 s: three times the samples, the same split, and one new function.
        let base = profile(&[("w (1);a", 30), ("w (1);b", 10)]);
        let new = profile(&[("w (1);a", 90), ("w (1);b", 20), ("w (1);c", 10)]);
        let deltas = share_deltas(&base, &new);
        let a = find(&deltas, "a");
        assert_eq!((a.base_weight, a.new_weight), (30, 90));
        assert_eq!((a.base_share, a.new_share), (0.75, 0.75));
        assert_eq!(a.delta, 0.0);
        let b = find(&deltas, "b");
        assert_eq!((b.base_share, b.new_share), (0.25, 20.0 / 120.0));
        let c = find(&deltas, "c");
        assert_eq!((c.base_weight, c.base_share), (0, 0.0));
        assert_eq!(c.new_share, 10.0 / 120.0);
        assert_eq!(deltas[0].function, "c");
        assert_eq!(deltas.last().unwrap().function, "b");
    }

    #[test]
    fn recursion_counts_once_per_stack() {
        let base = profile(&[("w (1);main;fib;fib;fib", 2), ("w (1);main;io", 2)]);
        let new = profile(&[("w (1);main;fib;fib;fib;fib;fib", 3), ("w (1);main;io", 1)]);
        let deltas = share_deltas(&base, &new);
        let fib = find(&deltas, "fib");
        assert_eq!((fib.base_weight, fib.new_weight), (2, 3));
        assert_eq!((fib.base_share, fib.new_share), (0.5, 0.75));
        assert_eq!(fib.delta_points(), 25.0);
        assert_eq!(find(&deltas, "main").new_share, 1.0);
    }

    #[test]
    fn root_frames_lose_their_pid_and_are_not_functions() {
        assert_eq!(strip_pid("server (41)"), "server");
        assert_eq!(strip_pid("a (b) (7)"), "a (b)");
        assert_eq!(strip_pid("java"), "java");
        assert_eq!(strip_pid("(7)"), "(7)");

        let base = profile(&[("server (41);main;work", 4), ("server (42);main;idle", 4)]);
        let new = profile(&[("server (977);main;work_[k]", 6), ("cron (5);tick", 2)]);
        let (b, n) = (comparable(&base), comparable(&new));
        assert!(b.samples.iter().all(|s| s.pid == 0 && s.comm == "server"));
        assert_eq!(
            b.samples[0].frames[0],
            Frame::new("server", FrameKind::Process)
        );
        assert_eq!(n.samples[0].frames[2], Frame::new("work", FrameKind::User));
        assert_eq!(
            folded::lines(&b),
            ["server;main;idle 4", "server;main;work 4"]
        );
        assert_eq!(folded::lines(&n), ["server;main;work 6", "cron;tick 2"]);

        let deltas = share_deltas(&b, &n);
        let names: BTreeSet<&str> = deltas.iter().map(|d| d.function.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["idle", "main", "tick", "work"]));
        let work = find(&deltas, "work");
        assert_eq!((work.base_share, work.new_share), (0.5, 0.75));
        assert_eq!(find(&deltas, "main").delta_points(), -25.0);
    }

    #[test]
    fn equal_changes_are_exact_ties_sorted_by_name() {
        // handle 80% → 40% and parse 60% → 20%: in floating point
        // 0.4 - 0.8 != 0.2 - 0.6, but both are exactly -40 points.
        let base = profile(&[
            ("s (1);main;handle;parse", 60),
            ("s (1);main;handle;render", 20),
            ("s (1);main;walk", 20),
        ]);
        let new = profile(&[
            ("s (2);main;handle;parse", 10),
            ("s (2);main;handle;render", 10),
            ("s (2);main;walk", 30),
        ]);
        let deltas = share_deltas(&base, &new);
        assert_eq!(find(&deltas, "handle").delta, find(&deltas, "parse").delta);
        assert_eq!(find(&deltas, "parse").delta_points(), -40.0);
        let text = table(&deltas, 10);
        let shrank: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Shrank"))
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(shrank, ["handle", "parse"], "{text}");
    }

    #[test]
    fn empty_profiles_give_zero_shares() {
        let base = profile(&[]);
        let new = profile(&[("w (1);a", 3)]);
        let deltas = share_deltas(&base, &new);
        assert_eq!(deltas.len(), 1);
        assert_eq!((deltas[0].base_share, deltas[0].new_share), (0.0, 1.0));
        assert!(share_deltas(&base, &base).is_empty());
    }

    #[test]
    fn table_lists_growth_then_shrink_aligned() {
        let base = profile(&[("w (1);main;fast_path", 75), ("w (1);main;slow_path", 25)]);
        let new = profile(&[("w (2);main;fast_path", 25), ("w (2);main;slow_path", 75)]);
        let text = table(&share_deltas(&base, &new), 10);
        assert_eq!(
            text,
            "\
Grew most      BASE %   NEW %  DELTA (pp)
  slow_path      25.0    75.0       +50.0

Shrank most    BASE %   NEW %  DELTA (pp)
  fast_path      75.0    25.0       -50.0
"
        );
        let same = table(&share_deltas(&base, &base), 10);
        assert!(same.contains("(no function grew)"), "{same}");
        assert!(same.contains("(no function shrank)"), "{same}");
    }

    #[test]
    fn table_keeps_top_n_and_cuts_long_names() {
        let long = "x".repeat(100);
        let mut stacks: Vec<(String, u64)> =
            (1..=12).map(|i| (format!("w (1);grow{i:02}"), i)).collect();
        stacks.push((format!("w (1);{long}"), 50));
        let new = profile(
            &stacks
                .iter()
                .map(|(s, w)| (s.as_str(), *w))
                .collect::<Vec<_>>(),
        );
        let base = profile(&[("w (1);old", 1)]);
        let text = table(&share_deltas(&base, &new), 3);
        let lines: Vec<&str> = text.lines().collect();
        // Header, 3 grown rows, blank, header, 1 shrunk row.
        assert_eq!(lines.len(), 7, "{text}");
        let cut = format!("{}…", "x".repeat(MAX_NAME_CHARS - 1));
        assert!(lines[1].starts_with(&format!("  {cut}  ")), "{text}");
        assert!(lines[2].starts_with("  grow12 "), "{text}");
        assert!(lines[3].starts_with("  grow11 "), "{text}");
        assert!(lines[6].starts_with("  old "), "{text}");
        assert!(lines[6].ends_with("-100.0"), "{text}");
        // Every row has the same width: the columns line up.
        let widths: BTreeSet<usize> = lines
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.chars().count())
            .collect();
        assert_eq!(widths.len(), 1, "{text}");
    }

    #[test]
    fn differential_svg_colours_growth_red_and_shrink_blue() {
        let base = comparable(&profile(&[
            ("w (1);main;fast_path", 75),
            ("w (1);main;slow_path", 25),
        ]));
        // Three times the samples: normalisation keeps the 25/75 → 75/25 picture.
        let new = comparable(&profile(&[
            ("w (2);main;fast_path", 75),
            ("w (2);main;slow_path", 225),
        ]));
        let svg =
            String::from_utf8(differential_svg(&base, &new, "T & t", "sub").unwrap()).unwrap();
        assert!(svg.contains("T &amp; t"));
        let fill_of = |name: &str| -> (u8, u8, u8) {
            let start = svg.find(&format!("<title>{name} (")).unwrap();
            let rgb = svg[start..].split("fill=\"rgb(").nth(1).unwrap();
            let rgb = &rgb[..rgb.find(')').unwrap()];
            let v: Vec<u8> = rgb.split(',').map(|c| c.trim().parse().unwrap()).collect();
            (v[0], v[1], v[2])
        };
        let (r, g, b) = fill_of("slow_path");
        assert!(r == 255 && g == b && g < 200, "slow_path {r},{g},{b}");
        let (r, g, b) = fill_of("fast_path");
        assert!(b == 255 && r == g && r < 200, "fast_path {r},{g},{b}");
        // Tooltips: NEW's count and share, and the change in points of NEW's total.
        assert!(
            svg.contains("<title>slow_path (225 samples, 75.00%; +50.00%)</title>"),
            "{svg}"
        );
        assert!(svg.contains("<title>fast_path (75 samples, 25.00%; -50.00%)</title>"));
        assert!(svg.contains("<title>w (300 samples, 100.00%"));
    }

    #[test]
    fn file_names_follow_the_convention() {
        let at = crate::render::testutil::start();
        assert_eq!(
            file_name(ProfileKind::Cpu, at),
            "hwk_cpu_ebpf_diff_2024-01-09_12-30-45.svg"
        );
        assert_eq!(
            file_name(ProfileKind::Mem, at),
            "hwk_mem_ebpf_diff_2024-01-09_12-30-45.svg"
        );
    }

    #[test]
    fn comparable_keeps_metadata_and_weights() {
        let mut p = Profile::new(Metadata::new(
            ProfileKind::Mem,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
        ));
        p.samples.push(Sample {
            pid: 9,
            tid: 10,
            comm: "m".into(),
            frames: vec![
                Frame::process("m", 9),
                Frame::new("malloc", FrameKind::User),
            ],
            weight: 4096,
            trace: None,
        });
        let c = comparable(&p);
        assert_eq!(c.metadata, p.metadata);
        assert_eq!(c.total_weight(), 4096);
        assert_eq!((c.samples[0].pid, c.samples[0].tid), (0, 0));
        assert_eq!(c.samples[0].frames[0].name, "m");
    }
}
