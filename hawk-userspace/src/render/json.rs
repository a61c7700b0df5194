//! Hawk JSON: the profile's metadata and its merged stacks, and reading it back.
//!
//! ```json
//! {
//!   "profiler": "ebpf",
//!   "type": "cpu",
//!   "trace_context": {"trace_id": "<32 hex>", "span_id": "<16 hex>"},
//!   "metadata": {"frequency_hz": 99, "interval_secs": 0.0101…, "start": "2024-01-09T12:30:45.123Z",
//!                "end": …, "duration_secs": 10.0, "samples": …, "total_weight": …,
//!                "lost_stacks": …, "dropped_samples": …, "unsymbolized_frames": …,
//!                "unmapped_processes": …, "pids": […], "target_pids": […], "unit": "samples",
//!                "mem": {"source": "libc"|"sampled", "view": "outstanding"|"allocated",
//!                        "allocations": …, "frees": …, "unknown_frees": …,
//!                        "live_allocations": …, "frames": 127, "min_age_secs": 0.0}},
//!   "stats": [{"frames": ["comm (pid)", "main", …], "samples": 50, "pid": 4242, "comm": "comm"}, …],
//!   "heap_current_bytes": 70000
//! }
//! ```
//!
//! `trace_context` is present only for a trace's profile; `heap_current_bytes`
//! only for a memory profile whose live heap size is known, and
//! `metadata.mem` only for a memory profile. `frequency_hz`
//! and `interval_secs` are `null` when there is no sampling frequency. Each
//! stats entry carries `samples` (cpu) or `bytes` (mem), heaviest first.
//! Frames are plain names, root first, starting with the process frame;
//! kernel frames carry no marker. Times are RFC 3339 UTC with milliseconds.

use serde::{Deserialize, Serialize};

use crate::output::{PROFILER_NAME, UtcTime, utc_parts};
use crate::profile::{
    Frame, FrameKind, MemInfo, MemSource, MemView, Metadata, Profile, ProfileKind, Sample, Stats,
    TraceIds,
};

use super::RenderError;

#[derive(Serialize, Deserialize)]
struct HawkJson {
    profiler: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_context: Option<TraceContextJson>,
    metadata: MetadataJson,
    stats: Vec<StackJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heap_current_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct TraceContextJson {
    trace_id: String,
    span_id: String,
}

#[derive(Serialize, Deserialize)]
struct MetadataJson {
    #[serde(default)]
    frequency_hz: Option<u64>,
    #[serde(default)]
    interval_secs: Option<f64>,
    start: String,
    end: String,
    #[serde(default)]
    duration_secs: f64,
    #[serde(default)]
    samples: u64,
    #[serde(default)]
    total_weight: u64,
    #[serde(default)]
    lost_stacks: u64,
    #[serde(default)]
    dropped_samples: u64,
    #[serde(default)]
    unsymbolized_frames: u64,
    #[serde(default)]
    unmapped_processes: u64,
    #[serde(default)]
    pids: Vec<u32>,
    #[serde(default)]
    target_pids: Vec<u32>,
    #[serde(default)]
    unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mem: Option<MemJson>,
}

#[derive(Serialize, Deserialize)]
struct MemJson {
    source: String,
    view: String,
    allocations: u64,
    frees: u64,
    unknown_frees: u64,
    live_allocations: u64,
    frames: usize,
    min_age_secs: f64,
}

#[derive(Serialize, Deserialize)]
struct StackJson {
    frames: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    pid: u32,
    comm: String,
}

/// Renders `profile` as Hawk JSON (pretty-printed, ending in a newline).
pub fn render(profile: &Profile) -> Result<Vec<u8>, RenderError> {
    let mut out = serde_json::to_vec_pretty(&to_json(profile))?;
    out.push(b'\n');
    Ok(out)
}

/// Builds the value [`render`] writes, for callers that embed Hawk JSON in
/// another document (an HTTP answer, a library return value).
pub fn to_value(profile: &Profile) -> Result<serde_json::Value, RenderError> {
    Ok(serde_json::to_value(to_json(profile))?)
}

fn to_json(profile: &Profile) -> HawkJson {
    let m = &profile.metadata;
    let stats = super::stacks(profile)
        .into_iter()
        .map(|(pid, comm, frames, weight)| StackJson {
            frames: frames.iter().map(|f| f.name.clone()).collect(),
            samples: (m.kind == ProfileKind::Cpu).then_some(weight),
            bytes: (m.kind == ProfileKind::Mem).then_some(weight),
            pid,
            comm: comm.to_string(),
        })
        .collect();
    HawkJson {
        profiler: PROFILER_NAME.to_string(),
        kind: m.kind.as_str().to_string(),
        trace_context: m.trace.map(|ids| TraceContextJson {
            trace_id: ids.trace_id.to_string(),
            span_id: ids.span_id.to_string(),
        }),
        metadata: MetadataJson {
            frequency_hz: m.frequency_hz,
            interval_secs: m.interval_secs(),
            start: utc_parts(m.start).rfc3339(),
            end: utc_parts(m.end).rfc3339(),
            duration_secs: m.duration().as_secs_f64(),
            samples: m.stats.samples,
            total_weight: profile.total_weight(),
            lost_stacks: m.stats.lost_stacks,
            dropped_samples: m.stats.dropped_samples,
            unsymbolized_frames: m.stats.unsymbolized_frames,
            unmapped_processes: m.stats.unmapped_processes,
            pids: profile.pids(),
            target_pids: m.target_pids.clone(),
            unit: m.kind.unit().to_string(),
            mem: m.mem.as_ref().map(|mem| MemJson {
                source: mem.source.as_str().to_string(),
                view: mem.view.as_str().to_string(),
                allocations: mem.allocations,
                frees: mem.frees,
                unknown_frees: mem.unknown_frees,
                live_allocations: mem.live_allocations,
                frames: mem.max_frames,
                min_age_secs: mem.min_age.as_secs_f64(),
            }),
        },
        stats,
        heap_current_bytes: m.heap_current_bytes.filter(|_| m.kind == ProfileKind::Mem),
    }
}

/// Parses an RFC 3339 UTC time: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`.
/// Digits of the fraction past milliseconds are ignored.
pub fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let s = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (time, ""),
    };
    let digits = |part: &str, len: usize| -> Option<u32> {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let mut d = date.splitn(3, '-');
    let year = digits(d.next()?, 4)?;
    let month = digits(d.next()?, 2)?;
    let day = digits(d.next()?, 2)?;
    let mut t = hms.splitn(3, ':');
    let hour = digits(t.next()?, 2)?;
    let minute = digits(t.next()?, 2)?;
    let second = digits(t.next()?, 2)?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || (time.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let millis = format!("{:0<3}", &fraction[..fraction.len().min(3)])
        .parse()
        .ok()?;
    UtcTime {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
        millis,
    }
    .to_system_time()
}

/// Reads Hawk JSON back into a profile (for `diff`).
///
/// What the JSON does not hold comes back as follows: the first frame of
/// each stack is the process frame ([`FrameKind::Process`]) and every other
/// frame is [`FrameKind::User`], since Hawk JSON does not mark kernel
/// frames; thread ids are 0 (unknown); samples carry no trace ids (the
/// profile's `trace_context` goes to the metadata). Each stats entry
/// becomes one sample. The derived fields (`total_weight`, `pids`,
/// `interval_secs`, `duration_secs`, `unit`) are not read.
pub fn parse(bytes: &[u8]) -> Result<Profile, RenderError> {
    let json: HawkJson = serde_json::from_slice(bytes)?;
    let invalid = |what: String| RenderError::InvalidJson(what);
    let kind = match json.kind.as_str() {
        "cpu" => ProfileKind::Cpu,
        "mem" => ProfileKind::Mem,
        other => {
            return Err(invalid(format!(
                "type {other:?} is neither \"cpu\" nor \"mem\""
            )));
        }
    };
    let time = |text: &str, field: &str| {
        parse_rfc3339(text).ok_or_else(|| {
            invalid(format!(
                "metadata.{field} {text:?} is not an RFC 3339 UTC time such as 2024-01-09T12:30:45.123Z"
            ))
        })
    };
    let trace = json
        .trace_context
        .map(|t| -> Result<TraceIds, RenderError> {
            Ok(TraceIds {
                trace_id: t
                    .trace_id
                    .parse()
                    .map_err(|e| invalid(format!("trace_context: {e}")))?,
                span_id: t
                    .span_id
                    .parse()
                    .map_err(|e| invalid(format!("trace_context: {e}")))?,
            })
        })
        .transpose()?;
    let md = json.metadata;
    let metadata = Metadata {
        kind,
        frequency_hz: md.frequency_hz,
        start: time(&md.start, "start")?,
        end: time(&md.end, "end")?,
        target_pids: md.target_pids,
        trace,
        stats: Stats {
            samples: md.samples,
            lost_stacks: md.lost_stacks,
            dropped_samples: md.dropped_samples,
            unsymbolized_frames: md.unsymbolized_frames,
            unmapped_processes: md.unmapped_processes,
        },
        heap_current_bytes: json.heap_current_bytes,
        mem: md.mem.map(|mem| MemInfo {
            source: if mem.source == "sampled" {
                MemSource::Sampled
            } else {
                MemSource::Libc
            },
            view: if mem.view == "allocated" {
                MemView::Allocated
            } else {
                MemView::Outstanding
            },
            allocations: mem.allocations,
            frees: mem.frees,
            unknown_frees: mem.unknown_frees,
            live_allocations: mem.live_allocations,
            max_frames: mem.frames,
            min_age: std::time::Duration::try_from_secs_f64(mem.min_age_secs).unwrap_or_default(),
        }),
    };
    let mut profile = Profile::new(metadata);
    for (i, stack) in json.stats.into_iter().enumerate() {
        let weight_key = kind.unit();
        let weight = match kind {
            ProfileKind::Cpu => stack.samples,
            ProfileKind::Mem => stack.bytes,
        }
        .ok_or_else(|| invalid(format!("stats[{i}] has no {weight_key:?}")))?;
        if stack.frames.is_empty() {
            return Err(invalid(format!("stats[{i}] has no frames")));
        }
        let frames = stack
            .frames
            .into_iter()
            .enumerate()
            .map(|(j, name)| {
                let kind = if j == 0 {
                    FrameKind::Process
                } else {
                    FrameKind::User
                };
                Frame::new(name, kind)
            })
            .collect();
        profile.samples.push(Sample {
            pid: stack.pid,
            tid: 0,
            comm: stack.comm,
            frames,
            weight,
            trace: None,
        });
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testutil;
    use serde_json::Value;

    #[test]
    fn renders_the_expected_documents() {
        testutil::assert_expected("cpu.json", &render(&testutil::cpu_profile()).unwrap());
        testutil::assert_expected("mem.json", &render(&testutil::mem_profile()).unwrap());
    }

    #[test]
    fn keys_depend_on_kind_and_trace() {
        let cpu: Value =
            serde_json::from_slice(&render(&testutil::cpu_profile()).unwrap()).unwrap();
        assert_eq!(cpu["profiler"], "ebpf");
        assert_eq!(cpu["type"], "cpu");
        assert_eq!(
            cpu["trace_context"]["trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cpu["trace_context"]["span_id"], "00f067aa0ba902b7");
        assert_eq!(cpu["metadata"]["start"], "2024-01-09T12:30:45.123Z");
        assert_eq!(cpu["metadata"]["end"], "2024-01-09T12:30:55.123Z");
        assert_eq!(cpu["metadata"]["unit"], "samples");
        assert_eq!(cpu["metadata"]["total_weight"], 92);
        assert_eq!(cpu["metadata"]["pids"], serde_json::json!([0, 77, 4242]));
        assert!(cpu.get("heap_current_bytes").is_none());
        let first = &cpu["stats"][0];
        assert_eq!(
            first,
            &serde_json::json!({"frames": ["cpu_split (4242)", "main", "hot_a"],
                                "samples": 50, "pid": 4242, "comm": "cpu_split"})
        );

        let mem: Value =
            serde_json::from_slice(&render(&testutil::mem_profile()).unwrap()).unwrap();
        assert_eq!(mem["type"], "mem");
        assert!(mem.get("trace_context").is_none());
        assert_eq!(mem["heap_current_bytes"], 70_000);
        assert_eq!(mem["metadata"]["unit"], "bytes");
        assert_eq!(mem["metadata"]["frequency_hz"], Value::Null);
        assert_eq!(mem["stats"][0]["bytes"], 65_536);
        assert!(mem["stats"][0].get("samples").is_none());
        assert_eq!(to_value(&testutil::mem_profile()).unwrap(), mem);
    }

    #[test]
    fn parses_what_it_renders() {
        for original in [testutil::cpu_profile(), testutil::mem_profile()] {
            let bytes = render(&original).unwrap();
            let parsed = parse(&bytes).unwrap();
            assert_eq!(parsed.metadata, original.metadata);
            assert_eq!(parsed.total_weight(), original.total_weight());
            assert_eq!(
                String::from_utf8(render(&parsed).unwrap()).unwrap(),
                String::from_utf8(bytes).unwrap()
            );
        }
        let parsed = parse(&render(&testutil::cpu_profile()).unwrap()).unwrap();
        let write = parsed
            .samples
            .iter()
            .find(|s| s.frames.iter().any(|f| f.name == "vfs_write"))
            .unwrap();
        assert_eq!(
            write.frames[0],
            Frame::new("cpu_split (4242)", FrameKind::Process)
        );
        assert_eq!(write.frames[5], Frame::new("vfs_write", FrameKind::User));
    }

    #[test]
    fn rejects_documents_that_are_not_profiles() {
        let good: Value =
            serde_json::from_slice(&render(&testutil::cpu_profile()).unwrap()).unwrap();
        let with = |pointer: &str, value: Value| {
            let mut doc = good.clone();
            *doc.pointer_mut(pointer).unwrap() = value;
            parse(&serde_json::to_vec(&doc).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(with("/type", "gpu".into()).contains("\"gpu\" is neither"));
        assert!(with("/metadata/start", "yesterday".into()).contains("metadata.start"));
        assert!(with("/trace_context/trace_id", "xyz".into()).contains("32 hex digits"));
        assert!(with("/stats/0/frames", serde_json::json!([])).contains("stats[0] has no frames"));
        assert!(with("/type", "mem".into()).contains("stats[0] has no \"bytes\""));
        assert!(parse(b"{\"profiler\": 1").is_err());
    }

    #[test]
    fn parses_rfc3339_times() {
        let t = testutil::start();
        assert_eq!(parse_rfc3339("2024-01-09T12:30:45.123Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2024-01-09T12:30:45.123456789+00:00"),
            Some(t)
        );
        assert_eq!(
            parse_rfc3339("2024-01-09T12:30:45Z"),
            Some(t - std::time::Duration::from_millis(123))
        );
        assert_eq!(
            parse_rfc3339("2024-01-09T12:30:45.1Z"),
            Some(t - std::time::Duration::from_millis(23))
        );
        for bad in [
            "2024-01-09T12:30:45.123",
            "2024-01-09T12:30:45.Z",
            "2024-1-09T12:30:45Z",
            "2024-02-30T12:30:45Z",
            "2024-01-09T24:00:00Z",
            "2024-01-09T12:30:45+02:00",
            "2024-01-09",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
