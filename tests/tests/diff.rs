//! `hawk-ebpf diff BASE NEW` on hand-written profiles. Needs no kernel and no
//! privileges: it only reads files and writes an SVG.

use std::path::{Path, PathBuf};
use std::process::Output;

use hawk_tests::{find_output, hawk, scratch_dir};

/// Writes `text` to `dir/name` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write input");
    path.to_str().expect("utf-8 path").to_string()
}

fn stdout(run: &Output) -> String {
    String::from_utf8_lossy(&run.stdout).into_owned()
}

fn stderr(run: &Output) -> String {
    String::from_utf8_lossy(&run.stderr).into_owned()
}

/// The rows of one section of the table (`Grew most` or `Shrank most`):
/// (function, base %, new %, delta) as printed.
fn rows(table: &str, section: &str) -> Vec<(String, String, String, String)> {
    table
        .lines()
        .skip_while(|l| !l.starts_with(section))
        .skip(1)
        .take_while(|l| l.starts_with("  ") && !l.trim_start().starts_with('('))
        .map(|l| {
            // The name may contain spaces: the three numbers are the last words.
            let words: Vec<&str> = l.split_whitespace().collect();
            let n = words.len();
            assert!(n >= 4, "row {l:?}");
            (
                words[..n - 3].join(" "),
                words[n - 3].to_string(),
                words[n - 2].to_string(),
                words[n - 1].to_string(),
            )
        })
        .collect()
}

/// Runs a diff that must succeed and returns its stdout and the SVG written.
fn diff_ok(base: &str, new: &str, out: &Path) -> (String, PathBuf, String) {
    let run = hawk(&["diff", base, new, "--out", out.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "diff failed: {}\n{}",
        stderr(&run),
        stdout(&run)
    );
    let svg_path = find_output(out, ".svg");
    let name = svg_path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("hwk_cpu_ebpf_diff_") && name.ends_with(".svg"),
        "{name}"
    );
    let text = stdout(&run);
    assert_eq!(
        text.lines().last(),
        Some(svg_path.to_str().unwrap()),
        "the SVG's path is the last line:\n{text}"
    );
    let svg = std::fs::read_to_string(&svg_path).expect("read svg");
    (text, svg_path, svg)
}

const BASE_FOLDED: &str = "\
service (4101);main;handle;fast_path 300
service (4101);main;handle;slow_path 100
";

/// Three times the samples of BASE (a longer window), the split reversed,
/// and another pid for the same program.
const NEW_FOLDED: &str = "\
service (5202);main;handle;fast_path 300
service (5202);main;handle;slow_path 900
";

#[test]
fn folded_profiles_show_slow_path_growing_by_fifty_points() {
    let dir = scratch_dir("diff-folded");
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let base = write(&dir, "base.folded", BASE_FOLDED);
    let new = write(&dir, "new.folded", NEW_FOLDED);
    let (text, _, svg) = diff_ok(&base, &new, &out);

    let grew = rows(&text, "Grew most");
    assert_eq!(
        grew.first(),
        Some(&(
            "slow_path".to_string(),
            "25.0".to_string(),
            "75.0".to_string(),
            "+50.0".to_string()
        )),
        "{text}"
    );
    assert_eq!(grew.len(), 1, "main and handle did not change:\n{text}");
    let shrank = rows(&text, "Shrank most");
    assert_eq!(shrank.len(), 1, "{text}");
    assert_eq!(shrank[0].0, "fast_path");
    assert_eq!(shrank[0].3, "-50.0");
    // Root frames are not functions, and the pids are gone.
    assert!(!text.contains("service"), "{text}");

    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("slow_path") && svg.contains("fast_path"));
    assert!(
        svg.contains("new.folded vs base.folded"),
        "title names both"
    );
    // Normalised: NEW's 900 of 1200 against BASE's 100 of 400 scaled to 300.
    assert!(
        svg.contains("slow_path (900 samples, 75.00%; +50.00%)"),
        "slow_path tooltip"
    );
    // The two pids became one root frame.
    assert!(svg.contains("<title>service (1,200 samples, 100.00%"));
    assert!(!svg.contains("4101") && !svg.contains("5202"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Hawk JSON document as `record` writes it, with the given stacks.
fn hawk_json(kind: &str, pid: u32, stacks: &[(&[&str], u64)]) -> String {
    let weight_key = if kind == "cpu" { "samples" } else { "bytes" };
    let stats: Vec<String> = stacks
        .iter()
        .map(|(frames, w)| {
            let mut all = vec![format!("\"service ({pid})\"")];
            all.extend(frames.iter().map(|f| format!("{f:?}")));
            format!(
                r#"{{"frames": [{}], "{weight_key}": {w}, "pid": {pid}, "comm": "service"}}"#,
                all.join(", ")
            )
        })
        .collect();
    let total: u64 = stacks.iter().map(|(_, w)| w).sum();
    format!(
        r#"{{
  "profiler": "ebpf",
  "type": "{kind}",
  "trace_context": {{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}},
  "metadata": {{
    "frequency_hz": 999, "interval_secs": 0.001001, "start": "2024-01-09T12:30:45.123Z",
    "end": "2024-01-09T12:30:45.623Z", "duration_secs": 0.5, "samples": {total},
    "total_weight": {total}, "lost_stacks": 0, "dropped_samples": 0, "unsymbolized_frames": 0,
    "unmapped_processes": 0, "pids": [{pid}], "target_pids": [], "unit": "{weight_key}"
  }},
  "stats": [{}]
}}
"#,
        stats.join(",\n    ")
    )
}

#[test]
fn hawk_json_profiles_compare_by_share_and_count_recursion_once() {
    let dir = scratch_dir("diff-json");
    let base = write(
        &dir,
        "fast-trace.json",
        &hawk_json(
            "cpu",
            11,
            &[
                (&["main", "handle", "parse"], 60),
                (&["main", "handle", "render"], 20),
                (&["main", "walk", "walk", "walk"], 20),
            ],
        ),
    );
    let new = write(
        &dir,
        "slow-trace.json",
        &hawk_json(
            "cpu",
            22,
            &[
                (&["main", "handle", "parse"], 10),
                (&["main", "handle", "render"], 10),
                (&["main", "walk", "walk", "walk", "walk", "walk"], 30),
            ],
        ),
    );
    let (text, _, svg) = diff_ok(&base, &new, &dir);
    let grew = rows(&text, "Grew most");
    // walk: 20% → 60% (each stack counted once however deep the recursion).
    assert_eq!(grew[0].0, "walk", "{text}");
    assert_eq!((grew[0].1.as_str(), grew[0].2.as_str()), ("20.0", "60.0"));
    assert_eq!(grew[0].3, "+40.0");
    let shrank = rows(&text, "Shrank most");
    // parse 60% → 20%, handle 80% → 40%: both -40.0, ties by name.
    let names: Vec<&str> = shrank.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["handle", "parse"], "{text}");
    assert!(shrank.iter().all(|r| r.3 == "-40.0"), "{text}");
    assert!(svg.contains("walk") && svg.contains("parse"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Asserts a failed run: non-zero exit, one line on stderr containing `needles`.
fn assert_one_line_error(run: &Output, needles: &[&str]) {
    let err = stderr(run);
    assert!(!run.status.success(), "expected failure, got: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("hawk-ebpf: error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_file() {
    let dir = scratch_dir("diff-bad");
    let good = write(&dir, "good.folded", BASE_FOLDED);
    let bad = write(
        &dir,
        "bad.folded",
        "service (1);main;fast_path 3\nservice (1);main;slow_path lots\n",
    );
    let broken_json = write(&dir, "broken.json", "{\"profiler\": \"ebpf\", \"type\": ");
    let missing = dir.join("missing.folded");
    let missing = missing.to_str().unwrap();
    let mem = write(
        &dir,
        "mem.json",
        &hawk_json("mem", 3, &[(&["malloc"], 4096)]),
    );
    let cpu = write(&dir, "cpu.json", &hawk_json("cpu", 3, &[(&["main"], 5)]));
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let out_s = out.to_str().unwrap();

    let run = hawk(&["diff", &good, &bad, "--out", out_s]);
    assert_one_line_error(&run, &["NEW", "bad.folded", "line 2", "\"lots\""]);
    let run = hawk(&["diff", missing, &good, "--out", out_s]);
    assert_one_line_error(&run, &["BASE", "missing.folded", "No such file"]);
    let run = hawk(&["diff", &good, &broken_json, "--out", out_s]);
    assert_one_line_error(&run, &["broken.json", "Hawk JSON"]);
    let run = hawk(&["diff", &cpu, &mem, "--out", out_s]);
    assert_one_line_error(&run, &["cpu profile", "mem profile"]);
    let empty = write(&dir, "empty.folded", "");
    let run = hawk(&["diff", &good, &empty, "--out", out_s]);
    assert_one_line_error(&run, &["empty.folded", "no samples"]);
    let run = hawk(&["diff", &good, &good, "--out", missing]);
    assert_one_line_error(&run, &["does not exist"]);

    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "no file written on error"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
