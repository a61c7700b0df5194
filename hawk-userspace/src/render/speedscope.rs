//! speedscope's file format (<https://www.speedscope.app/file-format-schema.json>).
//!
//! One `sampled` profile per process, named `comm (pid)`, heaviest process
//! first (the one speedscope opens). A sample is the list of indices into
//! `shared.frames`, root first, *without* the process root frame (the
//! profile itself is the process). Weights are milliseconds for CPU
//! profiles with a frequency (`count × 1000 / Hz`), plain counts (unit
//! `none`) without one, and bytes for memory profiles. Kernel frames carry
//! `"file": "[kernel.kallsyms]"`, the name perf gives the kernel's image.
//! A profile without samples still opens: it holds one empty profile.

use std::collections::HashMap;

use serde::Serialize;

use crate::profile::{FrameKind, Profile, ProfileKind};

use super::RenderError;

/// The `$schema` every speedscope file names.
pub const SCHEMA_URL: &str = "https://www.speedscope.app/file-format-schema.json";

/// What a kernel frame's `file` says.
const KERNEL_FILE: &str = "[kernel.kallsyms]";

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    shared: Shared<'a>,
    profiles: Vec<SampledProfile<'a>>,
    name: &'a str,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    exporter: String,
}

#[derive(Serialize)]
struct Shared<'a> {
    frames: Vec<FrameJson<'a>>,
}

#[derive(Serialize)]
struct FrameJson<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'static str>,
}

/// Integer weights stay integers in the JSON; milliseconds are fractional.
#[derive(Serialize, Clone, Copy, PartialEq, Debug)]
#[serde(untagged)]
enum Weight {
    Count(u64),
    Millis(f64),
}

#[derive(Serialize)]
struct SampledProfile<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: u64,
    #[serde(rename = "endValue")]
    end_value: Weight,
    samples: Vec<Vec<usize>>,
    weights: Vec<Weight>,
}

/// A process's stacks while they are gathered.
struct Group<'a> {
    name: &'a str,
    total: u64,
    samples: Vec<Vec<usize>>,
    counts: Vec<u64>,
}

/// Renders `profile` as a speedscope file named `title`.
pub fn render(profile: &Profile, title: &str) -> Result<Vec<u8>, RenderError> {
    let m = &profile.metadata;
    // Milliseconds per count, when counts are samples at a known rate.
    let ms_per_count = match m.kind {
        ProfileKind::Cpu => m
            .frequency_hz
            .filter(|hz| *hz > 0)
            .map(|hz| 1000.0 / hz as f64),
        ProfileKind::Mem => None,
    };
    let unit = match (m.kind, ms_per_count) {
        (ProfileKind::Mem, _) => "bytes",
        (ProfileKind::Cpu, Some(_)) => "milliseconds",
        (ProfileKind::Cpu, None) => "none",
    };

    let mut frames: Vec<FrameJson<'_>> = Vec::new();
    let mut frame_index: HashMap<(&str, bool), usize> = HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut group_index: HashMap<(u32, &str), usize> = HashMap::new();
    for (pid, _, stack, count) in super::stacks(profile) {
        let (root, rest) = match stack.split_first() {
            Some((root, rest)) if root.kind == FrameKind::Process => (root.name.as_str(), rest),
            // Not expected: every stack starts at its process frame.
            _ => ("[unknown process]", stack),
        };
        let g = *group_index.entry((pid, root)).or_insert_with(|| {
            groups.push(Group {
                name: root,
                total: 0,
                samples: Vec::new(),
                counts: Vec::new(),
            });
            groups.len() - 1
        });
        let indices = rest
            .iter()
            .map(|f| {
                let kernel = f.kind == FrameKind::Kernel;
                *frame_index
                    .entry((f.name.as_str(), kernel))
                    .or_insert_with(|| {
                        frames.push(FrameJson {
                            name: &f.name,
                            file: kernel.then_some(KERNEL_FILE),
                        });
                        frames.len() - 1
                    })
            })
            .collect();
        let group = &mut groups[g];
        group.total += count;
        group.samples.push(indices);
        group.counts.push(count);
    }
    groups.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(b.name)));

    let weight = |count: u64| match ms_per_count {
        Some(ms) => Weight::Millis(count as f64 * ms),
        None => Weight::Count(count),
    };
    let mut profiles: Vec<SampledProfile<'_>> = groups
        .into_iter()
        .map(|g| {
            let weights: Vec<Weight> = g.counts.iter().map(|&c| weight(c)).collect();
            let end_value = match ms_per_count {
                Some(_) => Weight::Millis(
                    weights
                        .iter()
                        .map(|w| match w {
                            Weight::Millis(ms) => *ms,
                            Weight::Count(c) => *c as f64,
                        })
                        .sum(),
                ),
                None => Weight::Count(g.total),
            };
            SampledProfile {
                kind: "sampled",
                name: g.name,
                unit,
                start_value: 0,
                end_value,
                samples: g.samples,
                weights,
            }
        })
        .collect();
    if profiles.is_empty() {
        profiles.push(SampledProfile {
            kind: "sampled",
            name: "(no samples)",
            unit,
            start_value: 0,
            end_value: Weight::Count(0),
            samples: Vec::new(),
            weights: Vec::new(),
        });
    }
    let file = File {
        schema: SCHEMA_URL,
        shared: Shared { frames },
        profiles,
        name: title,
        active_profile_index: 0,
        exporter: format!("hawk-ebpf {}", env!("CARGO_PKG_VERSION")),
    };
    Ok(serde_json::to_vec(&file)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testutil;
    use serde_json::{Value, json};

    fn rendered(profile: &Profile) -> Value {
        serde_json::from_slice(&render(profile, "t").unwrap()).unwrap()
    }

    /// The vendored schema: speedscope 1.25.0's
    /// `dist/release/file-format-schema.json` (npm package `speedscope`, MIT).
    fn validator() -> jsonschema::Validator {
        let schema: Value =
            serde_json::from_str(include_str!("testdata/speedscope-file-format-schema.json"))
                .unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    fn assert_valid(doc: &Value) {
        let validator = validator();
        let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "schema errors: {errors:#?}\n{doc:#}");
    }

    /// Each sample as frame names, with its weight.
    fn stacks(doc: &Value, profile: usize) -> Vec<(Vec<String>, Value)> {
        let frames = doc["shared"]["frames"].as_array().unwrap();
        let p = &doc["profiles"][profile];
        p["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(p["weights"].as_array().unwrap())
            .map(|(s, w)| {
                let names = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        frames[i.as_u64().unwrap() as usize]["name"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                (names, w.clone())
            })
            .collect()
    }

    #[test]
    fn the_schema_validator_catches_mistakes() {
        // Guards against a validator that accepts everything.
        let validator = validator();
        assert!(!validator.is_valid(&json!({"profiles": []})));
        let mut doc = rendered(&testutil::cpu_profile());
        doc["profiles"][0]["unit"] = json!("furlongs");
        assert!(!validator.is_valid(&doc));
    }

    #[test]
    fn cpu_profiles_are_valid_and_in_milliseconds() {
        let doc = rendered(&testutil::cpu_profile());
        assert_valid(&doc);
        assert_eq!(doc["$schema"], SCHEMA_URL);
        assert_eq!(doc["name"], "t");
        assert_eq!(doc["activeProfileIndex"], 0);
        assert_eq!(
            doc["exporter"],
            format!("hawk-ebpf {}", env!("CARGO_PKG_VERSION"))
        );

        let names: Vec<&str> = doc["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cpu_split (4242)", "swapper/0 (0)", "sshd (77)"]);
        for p in doc["profiles"].as_array().unwrap() {
            assert_eq!(p["type"], "sampled");
            assert_eq!(p["unit"], "milliseconds");
            assert_eq!(p["startValue"], 0);
            let sum: f64 = p["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .sum();
            assert!((p["endValue"].as_f64().unwrap() - sum).abs() < 1e-9);
        }
        // 83 samples at 99 Hz.
        let end = doc["profiles"][0]["endValue"].as_f64().unwrap();
        assert!((end - 83_000.0 / 99.0).abs() < 1e-9, "{end}");

        let cpu_split = stacks(&doc, 0);
        assert_eq!(cpu_split[0].0, ["main", "hot_a"]);
        assert!((cpu_split[0].1.as_f64().unwrap() - 50_000.0 / 99.0).abs() < 1e-9);
        assert_eq!(
            cpu_split
                .iter()
                .map(|(s, _)| s.join(";"))
                .collect::<Vec<_>>(),
            [
                "main;hot_a",
                "main;hot_b",
                "main;std::vec::Vec<[u8; 8]>::push",
                "main;write;entry_SYSCALL_64;ksys_write;vfs_write"
            ]
        );
        assert_eq!(stacks(&doc, 1)[0].0, ["cpu_startup_entry", "do_idle"]);

        // Frames are shared, unique, and only kernel frames name a file.
        let frames = doc["shared"]["frames"].as_array().unwrap();
        let main: Vec<_> = frames.iter().filter(|f| f["name"] == "main").collect();
        assert_eq!(main.len(), 1);
        assert!(main[0].get("file").is_none());
        let idle = frames.iter().find(|f| f["name"] == "do_idle").unwrap();
        assert_eq!(idle["file"], "[kernel.kallsyms]");
        assert!(
            frames
                .iter()
                .all(|f| !f["name"].as_str().unwrap().ends_with(')')),
            "process root frames are profiles, not frames"
        );
    }

    #[test]
    fn mem_profiles_weigh_bytes() {
        let doc = rendered(&testutil::mem_profile());
        assert_valid(&doc);
        let p = &doc["profiles"][0];
        assert_eq!(p["name"], "cache (501)");
        assert_eq!(p["unit"], "bytes");
        assert_eq!(p["endValue"], 65_536);
        assert_eq!(p["weights"], json!([65_536]));
        let leaky = stacks(&doc, 1);
        assert_eq!(
            leaky,
            [
                (
                    vec!["main".to_string(), "alloc_buffers".into(), "malloc".into()],
                    json!(12_288)
                ),
                (
                    vec!["main".to_string(), "parse_config".into(), "calloc".into()],
                    json!(1024)
                ),
            ]
        );
        assert_eq!(doc["profiles"][1]["endValue"], 13_312);
    }

    #[test]
    fn without_frequency_cpu_weights_are_counts() {
        let mut p = testutil::cpu_profile();
        p.metadata.frequency_hz = None;
        let doc = rendered(&p);
        assert_valid(&doc);
        assert_eq!(doc["profiles"][0]["unit"], "none");
        assert_eq!(doc["profiles"][0]["endValue"], 83);
        assert_eq!(doc["profiles"][0]["weights"][0], 50);
    }

    #[test]
    fn an_empty_profile_is_still_a_valid_file() {
        let mut p = testutil::cpu_profile();
        p.samples.clear();
        let doc = rendered(&p);
        assert_valid(&doc);
        assert_eq!(doc["profiles"].as_array().unwrap().len(), 1);
        assert_eq!(doc["profiles"][0]["name"], "(no samples)");
        assert_eq!(doc["shared"]["frames"], json!([]));
    }
}
