//! OpenTelemetry: Hawk announces every profile it renders as a span.
//!
//! - [`init`] installs the global tracer provider with an OTLP/gRPC exporter
//!   when an endpoint is configured (the `--otlp-endpoint` flag, else the
//!   standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` variables; `OTEL_SERVICE_NAME` names the
//!   service, `hawk-ebpf` by default). With none configured it installs
//!   nothing: the global no-op provider stays, no exporter exists, nothing is
//!   exported and nothing is logged.
//! - [`ProfileSpan`] is the span `hawk.profile.cpu` / `hawk.profile.mem` of
//!   tracer `hawk.profiling` with the attributes of DESIGN.md, started as a
//!   child of a given context (the HTTP request's server span, or whatever
//!   is current for the CLI).
//! - [`extract_traceparent`] reads an incoming W3C `traceparent`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::global::{self, BoxedSpan, BoxedTracer};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::profile::{Profile, ProfileKind, SpanId, TraceId, TraceIds};
use crate::render::Format;

/// The tracer every profiling span comes from.
pub const TRACER_NAME: &str = "hawk.profiling";
/// The service name when `OTEL_SERVICE_NAME` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "hawk-ebpf";

/// The environment variables that configure an endpoint, most specific first.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The installed exporter, if any. Call [`Telemetry::shutdown`] before
/// exiting so the last spans leave.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The endpoint to export to: the flag, else the environment.
pub fn configured_endpoint(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| ENDPOINT_VARS.iter().find_map(|var| std::env::var(var).ok()))
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
}

/// Installs the OTLP/gRPC exporter when an endpoint is configured. Must be
/// called inside a tokio runtime (the gRPC client lives on it).
pub fn init(endpoint_flag: Option<&str>) -> anyhow::Result<Telemetry> {
    let Some(endpoint) = configured_endpoint(endpoint_flag) else {
        return Ok(Telemetry::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint}: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    global::set_tracer_provider(provider.clone());
    tracing::info!("exporting profiling spans over OTLP to {endpoint}");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the spans still queued and stops the exporter. Blocks (up to
    /// a few seconds): call it from a blocking thread.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!("flushing OTLP spans: {e}");
        }
    }
}

/// Hawk's tracer.
pub fn tracer() -> BoxedTracer {
    global::tracer(TRACER_NAME)
}

/// Header access for the W3C propagator.
struct Headers<'a>(&'a HashMap<String, String>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The context of an incoming W3C `traceparent` (and `tracestate`), or the
/// empty context when there is none or it is malformed.
pub fn extract_traceparent(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let mut headers = HashMap::new();
    if let Some(tp) = traceparent {
        headers.insert("traceparent".to_string(), tp.to_string());
    }
    if let Some(ts) = tracestate {
        headers.insert("tracestate".to_string(), ts.to_string());
    }
    TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(&headers))
}

/// The (trace, span) of the span in `cx`, when it is valid.
pub fn ids_of(cx: &Context) -> Option<TraceIds> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| TraceIds {
        trace_id: TraceId(sc.trace_id().to_bytes()),
        span_id: SpanId(sc.span_id().to_bytes()),
    })
}

/// A server span for an HTTP request (`GET /debug/prof/cpu/ebpf/`), child
/// of the incoming `traceparent` context.
pub fn server_span(method: &str, route: &str, path: &str, parent: &Context) -> Context {
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("url.path", path.to_string()),
        ])
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Ends the server span in `cx` with the response status.
pub fn end_server_span(cx: &Context, status: u16) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(opentelemetry::trace::Status::error(format!(
            "HTTP {status}"
        )));
    }
    span.end();
}

/// The span of one rendered profile. Ends when dropped (or [`Self::end`]).
pub struct ProfileSpan {
    cx: Context,
}

/// The span name for a profile kind.
pub fn span_name(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Cpu => "hawk.profile.cpu",
        ProfileKind::Mem => "hawk.profile.mem",
    }
}

/// The attributes of the span of `profile` rendered in `formats`.
pub fn profile_attributes(profile: &Profile, formats: &[Format]) -> Vec<KeyValue> {
    let m = &profile.metadata;
    let formats: Vec<&str> = formats.iter().map(|f| f.name()).collect();
    let pids: Vec<i64> = profile.pids().into_iter().map(i64::from).collect();
    let mut attrs = vec![
        KeyValue::new("hawk.profiler", "ebpf"),
        KeyValue::new("hawk.profiler.type", m.kind.as_str()),
        KeyValue::new("hawk.format", formats.join(",")),
        KeyValue::new("hawk.samples", profile.total_weight() as i64),
        KeyValue::new("hawk.pids", Value::Array(Array::I64(pids))),
        KeyValue::new("hawk.duration", m.duration().as_secs_f64()),
    ];
    if let Some(interval) = m.interval_secs() {
        attrs.push(KeyValue::new("hawk.interval", interval));
    }
    if let Some(hz) = m.frequency_hz {
        attrs.push(KeyValue::new("hawk.frequency", hz as i64));
    }
    if let Some(mem) = &m.mem {
        attrs.push(KeyValue::new("hawk.frames", mem.max_frames as i64));
        attrs.push(KeyValue::new("hawk.mem.source", mem.source.as_str()));
        attrs.push(KeyValue::new("hawk.mem.view", mem.view.as_str()));
        attrs.push(KeyValue::new(
            "hawk.mem.allocations",
            mem.allocations as i64,
        ));
        attrs.push(KeyValue::new("hawk.mem.frees", mem.frees as i64));
    }
    if !m.target_pids.is_empty() {
        let targets: Vec<StringValue> = m
            .target_pids
            .iter()
            .map(|p| StringValue::from(p.to_string()))
            .collect();
        attrs.push(KeyValue::new(
            "hawk.target.pids",
            Value::Array(Array::String(targets)),
        ));
    }
    attrs
}

impl ProfileSpan {
    /// Starts the span of `profile`, rendered in `formats`, as a child of
    /// `parent`. `target_trace` is the trace the profile is about (trace
    /// captures), recorded as `hawk.target.trace_id`.
    pub fn start(
        profile: &Profile,
        formats: &[Format],
        target_trace: Option<TraceId>,
        parent: &Context,
    ) -> Self {
        let tracer = tracer();
        let mut attrs = profile_attributes(profile, formats);
        if let Some(t) = target_trace {
            attrs.push(KeyValue::new("hawk.target.trace_id", t.to_string()));
        }
        let span: BoxedSpan = tracer
            .span_builder(Cow::Borrowed(span_name(profile.metadata.kind)))
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs)
            .start_with_context(&tracer, parent);
        Self {
            cx: parent.with_span(span),
        }
    }

    /// The span's own ids, when it has valid ones (an exporter is installed,
    /// or the parent came from a `traceparent`).
    pub fn ids(&self) -> Option<TraceIds> {
        ids_of(&self.cx)
    }

    /// The context holding the span.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Records a failure to render.
    pub fn error(&self, message: impl Into<Cow<'static, str>>) {
        self.cx
            .span()
            .set_status(opentelemetry::trace::Status::error(message));
    }

    /// Ends the span.
    pub fn end(self) {}
}

impl Drop for ProfileSpan {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// [`crate::output::write_profile`] inside the profile's span, child of
/// the current context: what the CLI commands call.
pub fn write_profile(
    dir: &std::path::Path,
    profile: &Profile,
    formats: &[Format],
) -> Result<Vec<std::path::PathBuf>, crate::output::OutputError> {
    let target = profile.metadata.trace.map(|t| t.trace_id);
    let span = ProfileSpan::start(profile, formats, target, &Context::current());
    let written = crate::output::write_profile(dir, profile, formats);
    if let Err(e) = &written {
        span.error(e.to_string());
    }
    written
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::profile::Metadata;

    #[test]
    fn traceparent_is_honoured_and_garbage_ignored() {
        let cx = extract_traceparent(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        let ids = ids_of(&cx).expect("valid");
        assert_eq!(ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.span_id.to_string(), "00f067aa0ba902b7");
        assert!(ids_of(&extract_traceparent(Some("garbage"), None)).is_none());
        assert!(ids_of(&extract_traceparent(None, None)).is_none());
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        // Meaningful only where the environment configures no endpoint.
        if ENDPOINT_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        assert_eq!(configured_endpoint(None), None);
        assert_eq!(
            configured_endpoint(Some("http://127.0.0.1:4317")).as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(configured_endpoint(Some("  ")), None);
    }

    #[test]
    fn attributes_follow_the_design() {
        let mut m = Metadata::new(
            ProfileKind::Cpu,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
        );
        m.frequency_hz = Some(20);
        let p = Profile::new(m);
        let attrs = profile_attributes(&p, &[Format::Svg, Format::Json]);
        let get = |k: &str| {
            attrs
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(get("hawk.profiler").as_deref(), Some("ebpf"));
        assert_eq!(get("hawk.profiler.type").as_deref(), Some("cpu"));
        assert_eq!(get("hawk.format").as_deref(), Some("svg,json"));
        assert_eq!(get("hawk.interval").as_deref(), Some("0.05"));
        assert_eq!(get("hawk.samples").as_deref(), Some("0"));
        assert_eq!(span_name(ProfileKind::Mem), "hawk.profile.mem");
    }
}
