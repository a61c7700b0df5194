//! The library API, after the seed's `ProfileHandler`: profile the calling
//! process while a future runs, then render the profile with the caller's
//! OpenTelemetry trace context in its metadata.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hawk_userspace::handler::HandlerError> {
//! use hawk_userspace::handler::{ProfileHandler, ProfileOptions};
//!
//! let options = ProfileOptions::from_pairs([("format", "json"), ("duration", "5")])?;
//! let mut handler = ProfileHandler::new(options);
//! let answer = handler.profile(async { 6 * 7 }).await?;
//! let rendered = handler.render_profile()?;
//! println!("{} ({} bytes), trace {:?}", rendered.file_name, rendered.bytes.len(),
//!          rendered.metadata.trace_id);
//! # let _ = answer;
//! # Ok(()) }
//! ```
//!
//! Profiling needs the privileges `record` needs (CAP_BPF and CAP_PERFMON).

use std::future::Future;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::TraceContextExt as _;

use crate::collector::CollectorError;
use crate::collector::cpu::{CpuConfig, CpuSampler};
use crate::collector::procs::ProcessTable;
use crate::correlate::build_profile;
use crate::output;
use crate::profile::{Metadata, Profile, ProfileKind, SpanId, TraceId, TraceIds};
use crate::render::{self, Format};
use crate::symbolize::Symbolizer;

/// What can go wrong in the library API.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("unknown option {0:?}: expected format, duration or frequency")]
    UnknownOption(String),
    #[error("invalid option {name}: {reason}")]
    InvalidOption { name: String, reason: String },
    #[error("no profile yet: call profile() first")]
    NoProfile,
    #[error(transparent)]
    Collector(#[from] CollectorError),
    #[error(transparent)]
    Render(#[from] render::RenderError),
}

/// How to profile and render.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileOptions {
    pub format: Format,
    /// Longest window: sampling stops then even if the future still runs.
    pub duration: Option<Duration>,
    pub frequency_hz: u64,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            format: Format::Json,
            duration: None,
            frequency_hz: 99,
        }
    }
}

impl ProfileOptions {
    /// Options from string pairs, as the seed's dictionary:
    /// `format` (svg, speedscope, json, folded), `duration` (`5`, `5s`,
    /// `500ms`), `frequency` (Hz).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, HandlerError> {
        let mut options = Self::default();
        for (name, value) in pairs {
            let invalid = |reason: String| HandlerError::InvalidOption {
                name: name.to_string(),
                reason,
            };
            match name {
                "format" => options.format = value.parse().map_err(|e| invalid(format!("{e}")))?,
                "duration" => {
                    options.duration = Some(
                        crate::util::parse_duration(value).map_err(|e| invalid(e.to_string()))?,
                    )
                }
                "frequency" => {
                    options.frequency_hz = value
                        .parse()
                        .ok()
                        .filter(|hz| (1..=100_000).contains(hz))
                        .ok_or_else(|| invalid(format!("{value:?} is not 1 to 100000 Hz")))?
                }
                other => return Err(HandlerError::UnknownOption(other.to_string())),
            }
        }
        Ok(options)
    }
}

/// What [`ProfileHandler::render_profile`] returns to the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileMetadata {
    /// The caller's trace and span when it rendered the profile (hex).
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub format: Format,
    pub samples: u64,
    pub frequency_hz: u64,
    pub duration: Duration,
    pub pid: u32,
}

/// A rendered profile: bytes, the file name they would be saved under, and
/// what they are about.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedProfile {
    pub bytes: Vec<u8>,
    pub file_name: String,
    pub content_type: &'static str,
    pub metadata: ProfileMetadata,
}

/// Profiles the calling process while futures run.
pub struct ProfileHandler {
    options: ProfileOptions,
    profile: Option<Profile>,
}

impl ProfileHandler {
    pub fn new(options: ProfileOptions) -> Self {
        Self {
            options,
            profile: None,
        }
    }

    pub fn options(&self) -> &ProfileOptions {
        &self.options
    }

    /// Runs `future` while sampling the on-CPU stacks of this process (all
    /// its threads), and keeps the profile for [`Self::render_profile`].
    pub async fn profile<F: Future>(&mut self, future: F) -> Result<F::Output, HandlerError> {
        let pid = std::process::id();
        let mut sampler = CpuSampler::start(&CpuConfig {
            frequency_hz: self.options.frequency_hz,
            pids: vec![pid],
            user_stacks: true,
            kernel_stacks: true,
            traced_only: false,
        })?;
        let mut symbolizer = Symbolizer::new();
        let mut procs = ProcessTable::default();
        let mut future = std::pin::pin!(future);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let limit = self.options.duration.unwrap_or(Duration::MAX / 4);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut end = None;
        let output = loop {
            tokio::select! {
                output = &mut future => break output,
                _ = &mut deadline, if end.is_none() => {
                    sampler.stop();
                    end = Some(SystemTime::now());
                }
                _ = tick.tick(), if end.is_none() => {
                    sampler.poll(&mut procs, &mut symbolizer, |_| true)?;
                }
            }
        };
        let end = end.unwrap_or_else(SystemTime::now);
        sampler.stop();
        sampler.poll(&mut procs, &mut symbolizer, |_| true)?;
        let raw = sampler.read_samples()?;
        let kstats = sampler.kernel_stats()?;
        let mut metadata = Metadata::new(ProfileKind::Cpu, sampler.started(), end);
        metadata.frequency_hz = Some(sampler.frequency_hz());
        metadata.target_pids = vec![pid];
        metadata.stats.samples = kstats.samples;
        metadata.stats.lost_stacks = kstats.stack_errors;
        metadata.stats.dropped_samples = kstats.counts_full;
        self.profile = Some(build_profile(
            &raw,
            &mut symbolizer,
            &procs,
            metadata,
            |_| true,
        ));
        Ok(output)
    }

    /// The last profile, as collected.
    pub fn last_profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// Renders the last profile in the configured format, with the trace
    /// context current in the caller ([`opentelemetry::Context::current`]).
    pub fn render_profile(&self) -> Result<RenderedProfile, HandlerError> {
        self.render_profile_in(&opentelemetry::Context::current())
    }

    /// Renders the last profile with the trace context of `cx`.
    pub fn render_profile_in(
        &self,
        cx: &opentelemetry::Context,
    ) -> Result<RenderedProfile, HandlerError> {
        let mut profile = self.profile.clone().ok_or(HandlerError::NoProfile)?;
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            profile.metadata.trace = Some(TraceIds {
                trace_id: TraceId(sc.trace_id().to_bytes()),
                span_id: SpanId(sc.span_id().to_bytes()),
            });
        }
        let format = self.options.format;
        let bytes = render::render(&profile, format)?;
        let ids = profile.metadata.trace;
        Ok(RenderedProfile {
            bytes,
            file_name: output::file_name(&profile, format),
            content_type: format.content_type(),
            metadata: ProfileMetadata {
                trace_id: ids.map(|t| t.trace_id.to_string()),
                span_id: ids.map(|t| t.span_id.to_string()),
                format,
                samples: profile.total_weight(),
                frequency_hz: profile.metadata.frequency_hz.unwrap_or(0),
                duration: profile.metadata.duration(),
                pid: std::process::id(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_the_seeds_pairs() {
        let o = ProfileOptions::from_pairs([("format", "json"), ("duration", "5")]).unwrap();
        assert_eq!(o.format, Format::Json);
        assert_eq!(o.duration, Some(Duration::from_secs(5)));
        assert_eq!(o.frequency_hz, 99);
        let o = ProfileOptions::from_pairs([("format", "svg"), ("frequency", "499")]).unwrap();
        assert_eq!(
            (o.format, o.frequency_hz, o.duration),
            (Format::Svg, 499, None)
        );
        for (pairs, needle) in [
            (vec![("format", "png")], "format"),
            (vec![("duration", "soon")], "duration"),
            (vec![("frequency", "0")], "frequency"),
            (vec![("colour", "red")], "unknown option \"colour\""),
        ] {
            let err = ProfileOptions::from_pairs(pairs).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn render_before_profile_is_an_error() {
        let handler = ProfileHandler::new(ProfileOptions::default());
        assert!(matches!(
            handler.render_profile(),
            Err(HandlerError::NoProfile)
        ));
    }
}
