//! Renderers: Profile → SVG flamegraph, speedscope JSON, Hawk JSON, folded stacks.
//!
//! This module owns the output [`Format`]s (their names on the command line
//! and in HTTP queries, file extensions and content types), the dispatch
//! [`render`] / [`render_with`], the default title, and [`RenderError`].
//! Each format lives in its own submodule; [`folded`] and [`json`] can also
//! read their output back into a [`Profile`] (for `diff`). Renderers know
//! nothing about BPF or files: [`crate::output`] names and writes the bytes.

pub mod folded;
pub mod json;
pub mod speedscope;
pub mod svg;

use std::fmt;
use std::str::FromStr;

use crate::profile::{Frame, Profile, ProfileKind};

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Interactive flamegraph (inferno).
    Svg,
    /// speedscope's file format, one profile per process.
    Speedscope,
    /// Hawk JSON: metadata and stacks with weights.
    Json,
    /// Brendan Gregg's folded stacks, `a;b;c 12` per line.
    Folded,
}

impl Format {
    /// Every format, in the order of the `--format` default.
    pub const ALL: [Format; 4] = [
        Format::Svg,
        Format::Speedscope,
        Format::Json,
        Format::Folded,
    ];

    /// The name users type: `svg`, `speedscope`, `json`, `folded`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Speedscope => "speedscope",
            Format::Json => "json",
            Format::Folded => "folded",
        }
    }

    /// The file extension, without the dot. speedscope files end in
    /// `.speedscope.json` so they neither clash with Hawk JSON nor lose the
    /// `.json` that speedscope's file picker looks for.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Speedscope => "speedscope.json",
            Format::Json => "json",
            Format::Folded => "folded",
        }
    }

    /// The HTTP `Content-Type` of the rendered bytes.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Svg => "image/svg+xml",
            Format::Speedscope | Format::Json => "application/json",
            Format::Folded => "text/plain; charset=utf-8",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = RenderError;

    /// Parses a format name, ignoring ASCII case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, RenderError> {
        let name = s.trim();
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| RenderError::UnknownFormat(name.to_string()))
    }
}

/// Parses a comma-separated list of formats such as `svg,json`. Duplicates
/// are dropped (first occurrence wins); an unknown or empty entry is an error
/// that names it and the allowed formats.
pub fn parse_formats(s: &str) -> Result<Vec<Format>, RenderError> {
    let mut formats = Vec::new();
    for entry in s.split(',') {
        if entry.trim().is_empty() {
            return Err(RenderError::EmptyFormat(s.to_string()));
        }
        let format: Format = entry.parse()?;
        if !formats.contains(&format) {
            formats.push(format);
        }
    }
    Ok(formats)
}

/// The allowed format names, for error messages.
const FORMAT_NAMES: &str = "svg, speedscope, json, folded";

/// Why a profile could not be rendered or read back.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown format {0:?}: expected {FORMAT_NAMES}")]
    UnknownFormat(String),
    #[error("empty entry in format list {0:?}: expected a comma-separated list of {FORMAT_NAMES}")]
    EmptyFormat(String),
    /// inferno failed to draw the flamegraph.
    #[error("drawing the flamegraph")]
    Flamegraph(#[source] std::io::Error),
    /// JSON encoding failed, or JSON input is not valid JSON of the expected shape.
    #[error("JSON")]
    Json(#[from] serde_json::Error),
    /// Hawk JSON input that parses as JSON but does not describe a profile.
    #[error("invalid Hawk JSON: {0}")]
    InvalidJson(String),
    /// A line of folded-stacks input that is not `frame;frame;... weight`.
    #[error("invalid folded stacks, line {line}: {reason}")]
    InvalidFolded { line: usize, reason: String },
}

/// Rendering choices that are not part of the profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Title of the flamegraph and name of the speedscope file; `None`
    /// uses [`default_title`].
    pub title: Option<String>,
}

/// Renders `profile` in `format` with default options.
pub fn render(profile: &Profile, format: Format) -> Result<Vec<u8>, RenderError> {
    render_with(profile, format, &RenderOptions::default())
}

/// Renders `profile` in `format`.
pub fn render_with(
    profile: &Profile,
    format: Format,
    options: &RenderOptions,
) -> Result<Vec<u8>, RenderError> {
    let title = || {
        options
            .title
            .clone()
            .unwrap_or_else(|| default_title(profile))
    };
    match format {
        Format::Svg => svg::render(profile, &title()),
        Format::Speedscope => speedscope::render(profile, &title()),
        Format::Json => json::render(profile),
        Format::Folded => Ok(folded::render(profile)),
    }
}

/// The title a profile gets unless one is given, e.g.
/// `Hawk CPU profile — 10.0 s at 99 Hz, 1234 samples` or
/// `Hawk memory profile of trace 4bf9… — 2.5 s, 1048576 bytes outstanding`
/// (`≈… bytes allocated (sampled)` when the bytes are estimates).
pub fn default_title(profile: &Profile) -> String {
    let m = &profile.metadata;
    let what = match m.kind {
        ProfileKind::Cpu => "CPU",
        ProfileKind::Mem => "memory",
    };
    let mut title = format!("Hawk {what} profile");
    if let Some(ids) = &m.trace {
        title.push_str(&format!(" of trace {}", ids.trace_id));
    }
    title.push_str(&format!(" — {:.1} s", m.duration().as_secs_f64()));
    if let Some(hz) = m.frequency_hz.filter(|_| m.kind == ProfileKind::Cpu) {
        title.push_str(&format!(" at {hz} Hz"));
    }
    let total = profile.total_weight();
    let unit = m.kind.unit();
    let unit = if total == 1 {
        unit.trim_end_matches('s')
    } else {
        unit
    };
    let sampled = m
        .mem
        .as_ref()
        .is_some_and(|mem| mem.source == crate::profile::MemSource::Sampled);
    title.push_str(&format!(
        ", {}{total} {unit}",
        if sampled { "≈" } else { "" }
    ));
    if let Some(mem) = &m.mem {
        title.push(' ');
        title.push_str(mem.view.as_str());
        if sampled {
            title.push_str(" (sampled)");
        }
    }
    title
}

/// The stacks every renderer draws: [`Profile::merged_by_stack`] without
/// stacks of zero weight.
pub(crate) fn stacks(profile: &Profile) -> Vec<(u32, &str, &[Frame], u64)> {
    let mut merged = profile.merged_by_stack();
    merged.retain(|s| s.3 > 0);
    merged
}

/// Hand-built profiles shared by the renderer and output tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use crate::profile::{
        Frame, FrameKind, Metadata, Profile, ProfileKind, Sample, SpanId, TraceId, TraceIds,
    };

    /// 2024-01-09T12:30:45.123Z, the DESIGN example.
    pub fn start() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_803_445_123)
    }

    pub fn trace() -> TraceIds {
        TraceIds {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736"
                .parse::<TraceId>()
                .unwrap(),
            span_id: "00f067aa0ba902b7".parse::<SpanId>().unwrap(),
        }
    }

    /// A sample whose frames are `comm (pid)` then `frames`; a name that
    /// starts with `k:` is a kernel frame.
    pub fn sample(pid: u32, tid: u32, comm: &str, frames: &[&str], weight: u64) -> Sample {
        let mut stack = vec![Frame::process(comm, pid)];
        stack.extend(frames.iter().map(|name| match name.strip_prefix("k:") {
            Some(k) => Frame::new(k, FrameKind::Kernel),
            None => Frame::new(*name, FrameKind::User),
        }));
        Sample {
            pid,
            tid,
            comm: comm.to_string(),
            frames: stack,
            weight,
            trace: None,
        }
    }

    /// A 10 s CPU profile at 99 Hz of a trace: two processes with user
    /// stacks (one name holds a `;`), a syscall into the kernel, idle
    /// kernel-only stacks, two threads of one stack to merge.
    pub fn cpu_profile() -> Profile {
        let mut m = Metadata::new(ProfileKind::Cpu, start(), start() + Duration::from_secs(10));
        m.frequency_hz = Some(99);
        m.target_pids = vec![4242];
        m.trace = Some(trace());
        m.stats.samples = 131;
        m.stats.lost_stacks = 2;
        m.stats.dropped_samples = 1;
        m.stats.unsymbolized_frames = 4;
        m.stats.unmapped_processes = 0;
        let mut p = Profile::new(m);
        p.samples = vec![
            sample(4242, 4242, "cpu_split", &["main", "hot_a"], 30),
            sample(4242, 4243, "cpu_split", &["main", "hot_a"], 20),
            sample(4242, 4242, "cpu_split", &["main", "hot_b"], 25),
            sample(
                4242,
                4243,
                "cpu_split",
                &["main", "std::vec::Vec<[u8; 8]>::push"],
                5,
            ),
            sample(
                4242,
                4242,
                "cpu_split",
                &[
                    "main",
                    "write",
                    "k:entry_SYSCALL_64",
                    "k:ksys_write",
                    "k:vfs_write",
                ],
                3,
            ),
            sample(0, 0, "swapper/0", &["k:cpu_startup_entry", "k:do_idle"], 7),
            sample(77, 78, "sshd", &["main", "libc.so.6+0x11a2b3"], 2),
            sample(77, 77, "sshd", &["main", "ignored"], 0),
        ];
        p
    }

    /// A 2.5 s memory profile (bytes) of two processes, with the live heap size.
    pub fn mem_profile() -> Profile {
        let start = start();
        let mut m = Metadata::new(ProfileKind::Mem, start, start + Duration::from_millis(2500));
        m.stats.samples = 9;
        m.heap_current_bytes = Some(70_000);
        m.mem = Some(crate::profile::MemInfo {
            source: crate::profile::MemSource::Libc,
            view: crate::profile::MemView::Outstanding,
            allocations: 9,
            frees: 3,
            unknown_frees: 1,
            live_allocations: 4,
            max_frames: 127,
            min_age: Duration::from_millis(500),
        });
        let mut p = Profile::new(m);
        p.samples = vec![
            sample(
                500,
                500,
                "leaky",
                &["main", "alloc_buffers", "malloc"],
                8192,
            ),
            sample(
                500,
                501,
                "leaky",
                &["main", "alloc_buffers", "malloc"],
                4096,
            ),
            sample(500, 500, "leaky", &["main", "parse_config", "calloc"], 1024),
            sample(501, 501, "cache", &["main", "grow", "realloc"], 65_536),
        ];
        p
    }

    /// `src/render/testdata/<name>`.
    pub fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/render/testdata")
            .join(name)
    }

    /// Compares `actual` with the expected-output file `name`; with
    /// `HAWK_BLESS=1` in the environment, (re)writes the file instead.
    pub fn assert_expected(name: &str, actual: &[u8]) {
        let path = testdata(name);
        if std::env::var_os("HAWK_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with HAWK_BLESS=1 to create it)",
                path.display()
            )
        });
        if expected != actual {
            panic!(
                "{} differs from the rendered output (run with HAWK_BLESS=1 to update it)\n\
                 --- expected\n{}\n--- actual\n{}",
                path.display(),
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(actual)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert_eq!(" SVG ".parse::<Format>().unwrap(), Format::Svg);
        assert_eq!(Format::Speedscope.extension(), "speedscope.json");
        assert_eq!(Format::Folded.extension(), "folded");
        assert_eq!(Format::Svg.content_type(), "image/svg+xml");
    }

    #[test]
    fn parses_format_lists() {
        assert_eq!(
            parse_formats("svg,speedscope,json,folded").unwrap(),
            Format::ALL.to_vec()
        );
        assert_eq!(
            parse_formats("json, svg,json").unwrap(),
            vec![Format::Json, Format::Svg]
        );
        let err = parse_formats("svg,png").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown format \"png\": expected svg, speedscope, json, folded"
        );
        let err = parse_formats("svg,,json").unwrap_err().to_string();
        assert!(
            err.contains("empty entry") && err.contains("svg, speedscope"),
            "{err}"
        );
        assert!(parse_formats("").is_err());
    }

    #[test]
    fn default_titles() {
        let cpu = testutil::cpu_profile();
        assert_eq!(
            default_title(&cpu),
            "Hawk CPU profile of trace 4bf92f3577b34da6a3ce929d0e0e4736 — 10.0 s at 99 Hz, 92 samples"
        );
        let mut mem = testutil::mem_profile();
        assert_eq!(
            default_title(&mem),
            "Hawk memory profile — 2.5 s, 78848 bytes outstanding"
        );
        mem.samples.truncate(0);
        if let Some(info) = mem.metadata.mem.as_mut() {
            info.source = crate::profile::MemSource::Sampled;
            info.view = crate::profile::MemView::Allocated;
        }
        assert_eq!(
            default_title(&mem),
            "Hawk memory profile — 2.5 s, ≈0 bytes allocated (sampled)"
        );
        let mut one = testutil::cpu_profile();
        one.metadata.trace = None;
        one.samples = vec![testutil::sample(1, 1, "x", &["main"], 1)];
        assert_eq!(
            default_title(&one),
            "Hawk CPU profile — 10.0 s at 99 Hz, 1 sample"
        );
    }

    #[test]
    fn custom_titles_reach_the_svg_and_speedscope() {
        let p = testutil::cpu_profile();
        let options = RenderOptions {
            title: Some("my <title>".into()),
        };
        let svg = String::from_utf8(render_with(&p, Format::Svg, &options).unwrap()).unwrap();
        assert!(svg.contains("my &lt;title&gt;"), "{svg}");
        let ss: serde_json::Value =
            serde_json::from_slice(&render_with(&p, Format::Speedscope, &options).unwrap())
                .unwrap();
        assert_eq!(ss["name"], "my <title>");
    }

    #[test]
    fn every_format_renders_an_empty_profile() {
        for mut p in [testutil::cpu_profile(), testutil::mem_profile()] {
            p.samples.clear();
            for f in Format::ALL {
                render(&p, f).unwrap_or_else(|e| panic!("{f}: {e}"));
            }
        }
    }
}
