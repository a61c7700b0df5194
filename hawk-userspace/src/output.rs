//! Output file names (`hwk_cpu_ebpf_profile_<date>_<time>[_trace-…_span-…].<ext>`) and atomic writes.
//!
//! This module owns everything between a rendered profile and a file on disk:
//!
//! - [`file_stem`]: the name every output shares, from the profile kind, the
//!   window start (UTC) and, for trace captures, the trace and span ids;
//! - [`write_atomic`]: temp file in the same directory, fsync, rename, so a
//!   reader never sees a partial file under the final name;
//! - [`check_writable`]: the up-front check that the output directory exists
//!   and can be written, done before any sampling starts;
//! - [`write_profile`]: renders a [`Profile`] in each requested [`Format`]
//!   and writes the files;
//! - [`utc_parts`] / [`UtcTime`]: the one place that turns a wall-clock
//!   instant into UTC calendar fields (file names and Hawk JSON use it).

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::profile::{Profile, ProfileKind, TraceIds};
use crate::render::{self, Format, RenderError};

/// The profiler name in file names and Hawk JSON.
pub const PROFILER_NAME: &str = "ebpf";

/// Why profile files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output directory does not exist.
    #[error("output directory {} does not exist", .0.display())]
    MissingDir(PathBuf),
    /// The output path exists but is not a directory.
    #[error("output path {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The output directory cannot be written (or even looked at).
    #[error("output directory {} is not writable", .path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Rendering one of the formats failed.
    #[error("cannot render the {format} output")]
    Render {
        format: Format,
        #[source]
        source: RenderError,
    },
    /// Writing one of the files failed.
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A wall-clock instant as UTC calendar fields (proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 to 999 (the instant is truncated to the millisecond).
    pub millis: u32,
}

const MS_PER_DAY: i128 = 86_400_000;

/// Breaks `at` into UTC calendar fields, truncated to the millisecond
/// (instants before 1970 are rounded down too).
pub fn utc_parts(at: SystemTime) -> UtcTime {
    let nanos: i128 = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let ms = nanos.div_euclid(1_000_000);
    let days = ms.div_euclid(MS_PER_DAY) as i64;
    let ms_of_day = ms.rem_euclid(MS_PER_DAY) as u32;
    let (year, month, day) = civil_from_days(days);
    UtcTime {
        year,
        month,
        day,
        hour: ms_of_day / 3_600_000,
        minute: ms_of_day / 60_000 % 60,
        second: ms_of_day / 1000 % 60,
        millis: ms_of_day % 1000,
    }
}

impl UtcTime {
    /// `2024-01-09_12-30-45`: the date and time part of Hawk's file names.
    pub fn file_stamp(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}_{:02}-{:02}-{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// The instant these fields name, or `None` when a field is out of range.
    pub fn to_system_time(self) -> Option<SystemTime> {
        if !(-1_000_000..=1_000_000).contains(&self.year) {
            return None;
        }
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if self.year % 4 == 0 && (self.year % 100 != 0 || self.year % 400 == 0) => 29,
            2 => 28,
            _ => return None,
        };
        if self.day == 0
            || self.day > days_in_month
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
            || self.millis > 999
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day) as i128;
        let ms = days * MS_PER_DAY
            + i128::from(self.hour) * 3_600_000
            + i128::from(self.minute) * 60_000
            + i128::from(self.second) * 1000
            + i128::from(self.millis);
        let magnitude = Duration::from_millis(u64::try_from(ms.unsigned_abs()).ok()?);
        if ms >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(magnitude)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// RFC 3339 with milliseconds, e.g. `2024-01-09T12:30:45.123Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

/// Days since 1970-01-01 → (year, month, day). Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The file name of a profile without its extension, e.g.
/// `hwk_cpu_ebpf_profile_2024-01-09_12-30-45` or, for a trace,
/// `hwk_cpu_ebpf_profile_2024-01-09_12-30-45_trace-<32 hex>_span-<16 hex>`.
/// `at` is the window start and is written in UTC.
pub fn file_stem(kind: ProfileKind, at: SystemTime, trace: Option<&TraceIds>) -> String {
    let mut stem = format!(
        "hwk_{}_{PROFILER_NAME}_profile_{}",
        kind.as_str(),
        utc_parts(at).file_stamp()
    );
    if let Some(ids) = trace {
        stem.push_str(&format!("_trace-{}_span-{}", ids.trace_id, ids.span_id));
    }
    stem
}

/// The full file name of `profile` in `format`: [`file_stem`] + `.` + extension.
pub fn file_name(profile: &Profile, format: Format) -> String {
    let m = &profile.metadata;
    format!(
        "{}.{}",
        file_stem(m.kind, m.start, m.trace.as_ref()),
        format.extension()
    )
}

/// Distinguishes temp files of concurrent writes within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A hidden name in `dir` that no other writer uses.
fn temp_path(dir: &Path, file_name: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `dir/file_name` atomically: into a temp file in the same
/// directory, fsynced, then renamed over the final name (and the directory
/// fsynced, best effort). On error the temp file is removed and nothing
/// appears under the final name; an existing file there is left as it was.
pub fn write_atomic(dir: &Path, file_name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let final_path = dir.join(file_name);
    let tmp = temp_path(dir, file_name);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &final_path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Makes the rename itself durable. Some file systems refuse to fsync a
    // directory; the file is complete either way.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(final_path)
}

/// Fails with a clear error when `dir` does not exist, is not a directory,
/// or cannot be written. Probes by creating and removing a temp file, so it
/// also catches read-only file systems and ACLs that permission bits hide.
pub fn check_writable(dir: &Path) -> Result<(), OutputError> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OutputError::MissingDir(dir.to_path_buf()));
        }
        Err(source) => {
            return Err(OutputError::NotWritable {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(OutputError::NotADirectory(dir.to_path_buf()));
    }
    let probe = temp_path(dir, "hawk-write-check");
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(file) => {
            drop(file);
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(OutputError::NotWritable {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Renders `profile` in each of `formats` and writes the files into `dir`
/// (named by [`file_name`]), returning their paths in the order of `formats`.
/// Every format is rendered before the first file is written, so a render
/// error writes nothing.
pub fn write_profile(
    dir: &Path,
    profile: &Profile,
    formats: &[Format],
) -> Result<Vec<PathBuf>, OutputError> {
    let rendered = formats
        .iter()
        .map(|&format| {
            render::render(profile, format)
                .map(|bytes| (format, bytes))
                .map_err(|source| OutputError::Render { format, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    rendered
        .into_iter()
        .map(|(format, bytes)| {
            let name = file_name(profile, format);
            write_atomic(dir, &name, &bytes).map_err(|source| OutputError::Write {
                path: dir.join(&name),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testutil::{self, trace};

    /// 2024-01-09T12:30:45.123Z, the DESIGN example.
    fn design_time() -> SystemTime {
        testutil::start()
    }

    /// A fresh empty directory under the system temp dir.
    fn scratch_dir(tag: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hawk-output-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn file_stems_follow_the_design_convention() {
        assert_eq!(
            file_stem(ProfileKind::Cpu, design_time(), None),
            "hwk_cpu_ebpf_profile_2024-01-09_12-30-45"
        );
        assert_eq!(
            file_stem(ProfileKind::Cpu, design_time(), Some(&trace())),
            "hwk_cpu_ebpf_profile_2024-01-09_12-30-45\
             _trace-4bf92f3577b34da6a3ce929d0e0e4736_span-00f067aa0ba902b7"
        );
        assert_eq!(
            file_stem(ProfileKind::Mem, SystemTime::UNIX_EPOCH, None),
            "hwk_mem_ebpf_profile_1970-01-01_00-00-00"
        );
    }

    #[test]
    fn utc_parts_and_back() {
        let t = utc_parts(design_time());
        assert_eq!(
            t,
            UtcTime {
                year: 2024,
                month: 1,
                day: 9,
                hour: 12,
                minute: 30,
                second: 45,
                millis: 123
            }
        );
        assert_eq!(t.rfc3339(), "2024-01-09T12:30:45.123Z");
        assert_eq!(t.to_system_time(), Some(design_time()));
        // Leap days, century rules, and instants before the epoch.
        for (ms, text) in [
            (951_782_400_000_i64, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-2_208_988_800_000, "1900-01-01T00:00:00.000Z"),
        ] {
            let at = if ms >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
            };
            let parts = utc_parts(at);
            assert_eq!(parts.rfc3339(), text);
            assert_eq!(parts.to_system_time(), Some(at), "{text}");
        }
        // Every day for 800 years round-trips through the calendar.
        for days in -146_097..146_097 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let bad = UtcTime {
            month: 2,
            day: 30,
            ..t
        };
        assert_eq!(bad.to_system_time(), None);
        let far = UtcTime {
            year: i64::MAX,
            ..t
        };
        assert_eq!(far.to_system_time(), None);
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp_files() {
        let dir = scratch_dir("atomic");
        let path = write_atomic(&dir, "a.txt", b"first").unwrap();
        assert_eq!(path, dir.join("a.txt"));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_atomic(&dir, "a.txt", b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(listing(&dir), vec!["a.txt"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_into_a_missing_dir_fails_without_leftovers() {
        let dir = scratch_dir("atomic-missing");
        let missing = dir.join("nope");
        let err = write_atomic(&missing, "a.txt", b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // A file name that is a directory: the rename fails, the temp file goes.
        fs::create_dir(dir.join("taken")).unwrap();
        fs::write(dir.join("taken/inner"), b"keep").unwrap();
        assert!(write_atomic(&dir, "taken", b"x").is_err());
        assert_eq!(listing(&dir), vec!["taken"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_writable_explains_what_is_wrong() {
        let dir = scratch_dir("check");
        check_writable(&dir).unwrap();
        assert!(listing(&dir).is_empty(), "the probe file must be removed");

        let missing = dir.join("missing");
        let err = check_writable(&missing).unwrap_err();
        assert!(matches!(err, OutputError::MissingDir(_)));
        assert_eq!(
            err.to_string(),
            format!("output directory {} does not exist", missing.display())
        );

        let file = dir.join("file");
        fs::write(&file, b"").unwrap();
        let err = check_writable(&file).unwrap_err();
        assert!(matches!(err, OutputError::NotADirectory(_)), "{err}");
        assert!(err.to_string().contains("is not a directory"));

        // Tests run as root, whom permission bits do not stop; /proc refuses
        // new files to everyone.
        let err = check_writable(Path::new("/proc")).unwrap_err();
        assert!(matches!(err, OutputError::NotWritable { .. }), "{err}");
        assert_eq!(err.to_string(), "output directory /proc is not writable");
        assert!(std::error::Error::source(&err).is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_profile_writes_every_format_under_the_stem() {
        let dir = scratch_dir("profile");
        let profile = testutil::cpu_profile();
        let written = write_profile(&dir, &profile, &Format::ALL).unwrap();
        let stem = "hwk_cpu_ebpf_profile_2024-01-09_12-30-45\
                    _trace-4bf92f3577b34da6a3ce929d0e0e4736_span-00f067aa0ba902b7";
        let expected: Vec<PathBuf> = ["svg", "speedscope.json", "json", "folded"]
            .iter()
            .map(|ext| dir.join(format!("{stem}.{ext}")))
            .collect();
        assert_eq!(written, expected);
        for (path, format) in written.iter().zip(Format::ALL) {
            let bytes = fs::read(path).unwrap();
            assert_eq!(bytes, render::render(&profile, format).unwrap(), "{format}");
        }
        assert_eq!(listing(&dir).len(), 4);
        fs::remove_dir_all(&dir).unwrap();
    }
}
