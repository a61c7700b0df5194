//! Folded stacks (Brendan Gregg's `stackcollapse` format): rendering and parsing.
//!
//! One line per merged (pid, stack), heaviest first:
//! `comm (pid);main;work;vfs_write_[k] 12`. Frames are joined by `;`;
//! kernel frames get perf's `_[k]` suffix (so flamegraph palettes colour
//! them), user frames none. A `;` inside a name becomes `:` and line breaks
//! become spaces, so every line stays parseable. The SVG renderer draws
//! from these same lines.

use std::borrow::Cow;
use std::time::SystemTime;

use crate::profile::{Frame, FrameKind, Metadata, Profile, ProfileKind, Sample};

use super::RenderError;

/// perf's suffix for kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// A frame's name as it appears in a folded line: `;` → `:`, CR/LF → space,
/// and `_[k]` appended to kernel frames.
pub fn frame_name(frame: &Frame) -> Cow<'_, str> {
    let needs_cleaning = frame.name.contains([';', '\n', '\r']);
    let mut name: Cow<'_, str> = if needs_cleaning {
        Cow::Owned(
            frame
                .name
                .chars()
                .map(|c| match c {
                    ';' => ':',
                    '\n' | '\r' => ' ',
                    c => c,
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(&frame.name)
    };
    if frame.kind == FrameKind::Kernel {
        name.to_mut().push_str(KERNEL_SUFFIX);
    }
    name
}

/// The folded lines of `profile` (without line ends), heaviest stack first.
pub fn lines(profile: &Profile) -> Vec<String> {
    super::stacks(profile)
        .into_iter()
        .map(|(_, _, frames, weight)| {
            let mut line = String::new();
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    line.push(';');
                }
                line.push_str(&frame_name(frame));
            }
            line.push(' ');
            line.push_str(&weight.to_string());
            line
        })
        .collect()
}

/// Renders `profile` as folded stacks, one `\n`-terminated line per stack.
pub fn render(profile: &Profile) -> Vec<u8> {
    let mut out = String::new();
    for line in lines(profile) {
        out.push_str(&line);
        out.push('\n');
    }
    out.into_bytes()
}

/// Splits a root frame `comm (pid)` into its parts.
pub(crate) fn split_process_frame(name: &str) -> Option<(&str, u32)> {
    let inner = name.strip_suffix(')')?;
    let open = inner.rfind(" (")?;
    let pid = inner[open + 2..].parse().ok()?;
    Some((&inner[..open], pid))
}

/// Reads folded stacks back into a profile of `kind`.
///
/// Each line is `frame;frame;... weight`; empty lines and `# ` comments are
/// skipped. The first frame is the process root: `comm (pid)` gives the
/// sample's comm and pid, any other name is the comm with pid 0 (unknown).
/// Frames ending in `_[k]` become kernel frames without the suffix, the
/// others user frames. Thread ids are unknown (0). The metadata is a
/// zero-length window at the epoch with no frequency; for cpu,
/// `stats.samples` is the sum of the weights.
pub fn parse(text: &str, kind: ProfileKind) -> Result<Profile, RenderError> {
    let mut profile = Profile::new(Metadata::new(
        kind,
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH,
    ));
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("# ") {
            continue;
        }
        let err = |reason: &str| RenderError::InvalidFolded {
            line: i + 1,
            reason: reason.to_string(),
        };
        let (stack, weight) = line
            .rsplit_once(' ')
            .ok_or_else(|| err("expected `frame;frame;... weight`"))?;
        let weight: u64 = weight
            .parse()
            .map_err(|_| err(&format!("weight {weight:?} is not a whole number")))?;
        let stack = stack.trim_end();
        if stack.is_empty() {
            return Err(err("no frames before the weight"));
        }
        let mut names = stack.split(';');
        let root = names.next().unwrap_or_default();
        let (comm, pid) = split_process_frame(root).unwrap_or((root, 0));
        let mut frames = vec![Frame::new(root, FrameKind::Process)];
        frames.extend(names.map(|name| match name.strip_suffix(KERNEL_SUFFIX) {
            Some(k) => Frame::new(k, FrameKind::Kernel),
            None => Frame::new(name, FrameKind::User),
        }));
        profile.samples.push(Sample {
            pid,
            tid: 0,
            comm: comm.to_string(),
            frames,
            weight,
            trace: None,
        });
    }
    if kind == ProfileKind::Cpu {
        profile.metadata.stats.samples = profile.total_weight();
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testutil;

    #[test]
    fn renders_the_expected_lines() {
        testutil::assert_expected("cpu.folded", &render(&testutil::cpu_profile()));
        testutil::assert_expected("mem.folded", &render(&testutil::mem_profile()));
    }

    #[test]
    fn merges_threads_marks_kernel_frames_and_cleans_names() {
        let text = String::from_utf8(render(&testutil::cpu_profile())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cpu_split (4242);main;hot_a 50");
        assert!(lines.contains(
            &"cpu_split (4242);main;write;entry_SYSCALL_64_[k];ksys_write_[k];vfs_write_[k] 3"
        ));
        assert!(lines.contains(&"cpu_split (4242);main;std::vec::Vec<[u8: 8]>::push 5"));
        assert!(lines.contains(&"swapper/0 (0);cpu_startup_entry_[k];do_idle_[k] 7"));
        assert!(!text.contains("ignored"), "zero-weight stacks are left out");

        let frame = Frame::new("a;b\nc\r\nd", FrameKind::User);
        assert_eq!(frame_name(&frame), "a:b c  d");
        assert!(matches!(
            frame_name(&Frame::new("plain", FrameKind::User)),
            Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn parses_what_it_renders() {
        let original = testutil::cpu_profile();
        let text = String::from_utf8(render(&original)).unwrap();
        let parsed = parse(&text, ProfileKind::Cpu).unwrap();
        assert_eq!(String::from_utf8(render(&parsed)).unwrap(), text);
        assert_eq!(parsed.total_weight(), original.total_weight());
        assert_eq!(parsed.metadata.stats.samples, 92);
        assert_eq!(parsed.pids(), vec![0, 77, 4242]);
        let idle = parsed
            .samples
            .iter()
            .find(|s| s.comm == "swapper/0")
            .unwrap();
        assert_eq!(
            idle.frames,
            vec![
                Frame::new("swapper/0 (0)", FrameKind::Process),
                Frame::new("cpu_startup_entry", FrameKind::Kernel),
                Frame::new("do_idle", FrameKind::Kernel),
            ]
        );
    }

    #[test]
    fn parses_foreign_folded_stacks() {
        let text = "# comment\n\njava;start_thread;Foo::bar 12\r\nweird (name);x 3\n";
        let p = parse(text, ProfileKind::Mem).unwrap();
        assert_eq!(p.samples.len(), 2);
        assert_eq!((p.samples[0].pid, p.samples[0].comm.as_str()), (0, "java"));
        assert_eq!(
            p.samples[0].frames[2],
            Frame::new("Foo::bar", FrameKind::User)
        );
        assert_eq!(p.samples[0].weight, 12);
        assert_eq!(
            (p.samples[1].pid, p.samples[1].comm.as_str()),
            (0, "weird (name)")
        );
        assert_eq!(p.metadata.kind, ProfileKind::Mem);
        assert_eq!(p.metadata.stats.samples, 0);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        for (text, needle) in [
            ("a;b 1\na;b\n", "line 2: expected"),
            ("a;b x\n", "line 1: weight \"x\""),
            ("a;b -3\n", "not a whole number"),
            (" 5\n", "expected"),
        ] {
            let err = parse(text, ProfileKind::Cpu).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert_eq!(
            split_process_frame("cpu_split (42)"),
            Some(("cpu_split", 42))
        );
        assert_eq!(split_process_frame("a (b) (7)"), Some(("a (b)", 7)));
        assert_eq!(split_process_frame("(7)"), None);
    }
}
