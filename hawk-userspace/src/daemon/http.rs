//! The daemon's HTTP endpoints (axum):
//!
//! - `GET /debug/prof/cpu/ebpf/?seconds=N&pid=P&format=F`: profiles the next
//!   N seconds (default 30, at most `--max-seconds`), as Go's
//!   `/debug/pprof/profile` does, for the whole node or the given pids
//!   (repeatable or comma separated), in one format (default svg);
//! - `GET /debug/prof/mem/ebpf/?seconds=N&pid=P&format=F&min_age=D&view=V`:
//!   traces the allocations of pid P (required: allocator probes slow the
//!   processes they are on) for the next N seconds, or until P exits, and
//!   returns the outstanding (default) or allocated bytes by stack (see
//!   [`super::mem`]);
//! - `GET /debug/prof/trace/<trace_id>?format=F`: the samples held of that
//!   trace (default json), 404 when none are held;
//! - `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! Bad parameters get 400 with a one-line reason; more than
//! `--max-concurrent` profiles at once get 429, more than [`MAX_IN_FLIGHT`]
//! requests of any kind 503, and a request that outlives its `seconds` by
//! two minutes 504. [`serve`] runs HTTP/1 connections with hyper itself, so
//! that a client that does not send complete request headers within
//! `--header-timeout` (a slow or idle client) loses its connection. With `--auth-token`, every
//! endpoint but `/healthz` wants `Authorization: Bearer <token>`, compared
//! in constant time; a non-loopback `--listen` without a token is refused at
//! start. Each profile request is a server span (child of an incoming W3C
//! `traceparent`) whose child is the profile's `hawk.profile.cpu` or
//! `hawk.profile.mem` span; a window profile's file name and JSON carry that
//! span's ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::mem::{self, MemError, MemWindow};
use super::metrics::{self, HttpCounters};
use super::{DaemonConfig, Shared, kernel_delta};
use crate::collector::procs;
use crate::commands::record::ALLOC_SUFFIX;
use crate::output;
use crate::profile::{MemView, Profile, TraceId};
use crate::render::{self, Format};
use crate::telemetry::{self, ProfileSpan};

/// Default length of a window profile, as Go's pprof.
pub const DEFAULT_SECONDS: u64 = 30;
/// Requests of any kind in flight at once; more get 503.
pub const MAX_IN_FLIGHT: usize = 64;
/// What a request may take beyond the `seconds` it asked for (two drains,
/// symbolization, rendering); past it the request ends with 504.
const REQUEST_SLACK: Duration = Duration::from_secs(120);

struct App {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    counters: HttpCounters,
    stop: watch::Receiver<bool>,
}

/// The request's server span, for the handlers.
#[derive(Clone)]
struct RequestSpan(opentelemetry::Context);

/// Refuses a non-loopback listen address without an auth token.
pub fn check_listen(config: &DaemonConfig) -> anyhow::Result<()> {
    if !config.listen.ip().is_loopback() && config.auth_token.is_none() {
        anyhow::bail!(
            "--listen {} is not a loopback address: set --auth-token (or --auth-token-file) so that only holders of the token can read profiles",
            config.listen
        );
    }
    Ok(())
}

/// Serves `app` on `listener`, HTTP/1, until `stop` turns true; then each
/// connection finishes the request it is serving (in-flight profiles end
/// early on `stop` too) and closes, and `serve` returns once all have.
///
/// A connection must deliver each request's complete headers within
/// `header_timeout` of starting to wait for them (from the accept, or from
/// the end of the previous response), or hyper closes it: a client that
/// trickles its headers, or opens connections and sends nothing, holds
/// nothing for longer than that.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    // Each connection task holds a receiver; `closed()` resolves when all
    // are gone.
    let (open_tx, open_rx) = watch::channel(());
    let stopping = stopped(stop.clone());
    tokio::pin!(stopping);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    tracing::debug!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stopping = stopped(stop.clone());
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                // A header timeout, a client gone mid-request: its business.
                tracing::debug!("HTTP connection: {e}");
            }
            drop(open);
        });
    }
    drop(open_rx);
    open_tx.closed().await;
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The router of every endpoint.
pub fn router(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Router {
    let app = Arc::new(App {
        permits: Arc::new(Semaphore::new(shared.config.max_concurrent.max(1))),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        shared,
        counters: HttpCounters::default(),
        stop,
    });
    Router::new()
        .route("/debug/prof/cpu/ebpf/", get(cpu))
        .route("/debug/prof/cpu/ebpf", get(cpu))
        .route("/debug/prof/mem/ebpf/", get(mem))
        .route("/debug/prof/mem/ebpf", get(mem))
        .route("/debug/prof/trace/{trace_id}", get(trace))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn(server_span))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(middleware::from_fn_with_state(app.clone(), limits))
        .with_state(app)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn bad_request(app: &App, reason: impl Into<String>) -> Response {
    app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    text(StatusCode::BAD_REQUEST, reason)
}

/// Byte-wise comparison whose time does not depend on where the inputs
/// differ (only on their lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// True when `headers` carry `Authorization: Bearer <token>`.
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        })
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.as_bytes())
}

/// Bounds the requests in flight and how long each may take.
async fn limits(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Ok(_slot) = app.in_flight.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_IN_FLIGHT} requests in flight already"),
        );
    };
    let limit = Duration::from_secs(app.shared.config.max_seconds) + REQUEST_SLACK;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the request took longer than {} s", limit.as_secs()),
        ),
    }
}

async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.shared.config.auth_token
        && request.uri().path() != "/healthz"
        && !authorized(request.headers(), token)
    {
        app.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// Wraps profile requests in a server span, child of the incoming
/// `traceparent`.
async fn server_span(mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/debug/prof/") {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let parent = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        telemetry::extract_traceparent(
            header("traceparent").as_deref(),
            header("tracestate").as_deref(),
        )
    };
    let cx = telemetry::server_span(request.method().as_str(), &route, &path, &parent);
    request.extensions_mut().insert(RequestSpan(cx.clone()));
    let response = next.run(request).await;
    telemetry::end_server_span(&cx, response.status().as_u16());
    response
}

/// Query parameters as (name, value) pairs.
fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Parameters of `/debug/prof/cpu/ebpf/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuParams {
    pub seconds: u64,
    pub pids: Vec<u32>,
    pub format: Format,
}

fn parse_format(value: &str) -> Result<Format, String> {
    value.parse::<Format>().map_err(|e| e.to_string())
}

/// Parses the query of a window profile; the error is the one-line reason.
pub fn parse_cpu_query(query: Option<&str>, max_seconds: u64) -> Result<CpuParams, String> {
    let mut params = CpuParams {
        seconds: DEFAULT_SECONDS.min(max_seconds),
        pids: Vec::new(),
        format: Format::Svg,
    };
    for (name, value) in pairs(query) {
        match name {
            "seconds" => params.seconds = parse_seconds(value, max_seconds)?,
            "pid" => parse_pids(value, &mut params.pids)?,
            "format" => params.format = parse_format(value)?,
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: expected seconds, pid, format"
                ));
            }
        }
    }
    Ok(params)
}

fn parse_seconds(value: &str, max_seconds: u64) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=max_seconds).contains(s))
        .ok_or_else(|| format!("invalid seconds {value:?}: expected 1 to {max_seconds}"))
}

/// Adds the pids of a `pid` value (`1` or `1,2`) to `pids`, each once.
fn parse_pids(value: &str, pids: &mut Vec<u32>) -> Result<(), String> {
    for p in value.split(',') {
        let pid = p
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid pid {p:?}: expected a positive process id"))?;
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    Ok(())
}

/// Parameters of `/debug/prof/mem/ebpf/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemParams {
    pub window: MemWindow,
    pub format: Format,
}

/// Parses the query of a memory profile; the error is the one-line reason.
pub fn parse_mem_query(query: Option<&str>, max_seconds: u64) -> Result<MemParams, String> {
    let mut seconds = DEFAULT_SECONDS.min(max_seconds);
    let mut params = MemParams {
        window: MemWindow {
            pids: Vec::new(),
            duration: Duration::ZERO,
            min_age: Duration::ZERO,
            frames: hawk_common::MAX_STACK_DEPTH,
            view: MemView::Outstanding,
        },
        format: Format::Svg,
    };
    let window = &mut params.window;
    for (name, value) in pairs(query) {
        match name {
            "seconds" => seconds = parse_seconds(value, max_seconds)?,
            "pid" => parse_pids(value, &mut window.pids)?,
            "format" => params.format = parse_format(value)?,
            "min_age" => {
                window.min_age = crate::cli::parse_age(value).map_err(|_| {
                    format!("invalid min_age {value:?}: expected a duration such as 0, 30s, 5m")
                })?
            }
            "view" => {
                window.view = match value {
                    "outstanding" => MemView::Outstanding,
                    "allocated" => MemView::Allocated,
                    _ => {
                        return Err(format!(
                            "invalid view {value:?}: expected outstanding or allocated"
                        ));
                    }
                }
            }
            "frames" => {
                let max = hawk_common::MAX_STACK_DEPTH;
                window.frames = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| format!("invalid frames {value:?}: expected 1 to {max}"))?
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: expected seconds, pid, format, min_age, view, frames"
                ));
            }
        }
    }
    if window.pids.is_empty() {
        return Err(
            "pid is required: memory profiles trace the allocator of the processes named (pid=P), never the whole node"
                .to_string(),
        );
    }
    window.duration = Duration::from_secs(seconds);
    Ok(params)
}

/// Parses the query of a trace profile (`format`, default json).
pub fn parse_trace_query(query: Option<&str>) -> Result<Format, String> {
    let mut format = Format::Json;
    for (name, value) in pairs(query) {
        match name {
            "format" => format = parse_format(value)?,
            other => return Err(format!("unknown parameter {other:?}: expected format")),
        }
    }
    Ok(format)
}

/// Renders `profile` inside its `hawk.profile.*` span, child of the request
/// span. A profile that is not about one trace takes the profiling span's
/// ids (file name and JSON), as the seed's handler does.
fn render_response(
    mut profile: Profile,
    format: Format,
    target: Option<TraceId>,
    parent: &opentelemetry::Context,
) -> Response {
    let span = ProfileSpan::start(&profile, &[format], target, parent);
    if target.is_none()
        && let Some(ids) = span.ids()
    {
        profile.metadata.trace = Some(ids);
    }
    match render::render(&profile, format) {
        Ok(bytes) => {
            let mut name = output::file_name(&profile, format);
            if profile
                .metadata
                .mem
                .as_ref()
                .is_some_and(|m| m.view == MemView::Allocated)
            {
                // As `record --mem` names the allocated view's files.
                let stem_len = name.len() - format.extension().len() - 1;
                name.insert_str(stem_len, ALLOC_SUFFIX);
            }
            let mut response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, format.content_type())],
                Body::from(bytes),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&profile.total_weight().to_string()) {
                response.headers_mut().insert("x-hawk-samples", v);
            }
            response
        }
        Err(e) => {
            span.error(e.to_string());
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering the {format} profile failed: {e}"),
            )
        }
    }
}

fn busy(app: &App) -> Response {
    app.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
    let mut response = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "{} profile requests are running already; try again later",
            app.shared.config.max_concurrent
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn unavailable() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "the collector did not answer (stopped, or busy for 30 s)",
    )
}

async fn cpu(
    State(app): State<Arc<App>>,
    span: Option<axum::Extension<RequestSpan>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match parse_cpu_query(query.as_deref(), app.shared.config.max_seconds) {
        Ok(p) => p,
        Err(e) => return bad_request(&app, e),
    };
    if let Some(pid) = params.pids.iter().find(|p| !procs::exists(**p)) {
        return bad_request(&app, format!("no such process: {pid}"));
    }
    let Ok(_permit) = app.permits.clone().try_acquire_owned() else {
        return busy(&app);
    };
    let Some(before) = app.shared.flush().await else {
        return unavailable();
    };
    let start = SystemTime::now();
    let mut stop = app.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(params.seconds)) => {}
        // Shutting down: answer with what was collected so far.
        _ = stop.wait_for(|s| *s) => {}
    }
    let Some(after) = app.shared.flush().await else {
        return unavailable();
    };
    let end = SystemTime::now();
    let Some(profile) = app
        .shared
        .window_profile(start, end, &params.pids, kernel_delta(before, after))
        .await
    else {
        return unavailable();
    };
    let parent = span.map(|s| s.0.0.clone()).unwrap_or_default();
    let response =
        tokio::task::spawn_blocking(move || render_response(profile, params.format, None, &parent))
            .await
            .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")));
    app.counters.profiles_served.fetch_add(1, Ordering::Relaxed);
    response
}

/// Sets its flag when dropped: the handler's future is dropped when the
/// client goes away, and the window it started should end then too.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts a memory window as active while it lives.
struct Active(Arc<App>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0
            .counters
            .mem_windows_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn mem(
    State(app): State<Arc<App>>,
    span: Option<axum::Extension<RequestSpan>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match parse_mem_query(query.as_deref(), app.shared.config.max_seconds) {
        Ok(p) => p,
        Err(e) => return bad_request(&app, e),
    };
    if let Some(pid) = params.window.pids.iter().find(|p| !procs::exists(**p)) {
        return bad_request(&app, format!("no such process: {pid}"));
    }
    if params.window.pids.contains(&std::process::id()) {
        return bad_request(
            &app,
            "pid is the daemon itself: its allocations are not traced",
        );
    }
    let Ok(permit) = app.permits.clone().try_acquire_owned() else {
        return busy(&app);
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let stop = app.stop.clone();
    let window = params.window;
    let app2 = app.clone();
    let traced = tokio::task::spawn_blocking(move || {
        // Held until the probes are gone, even if the client left: the bound
        // is on windows running, not on requests waiting.
        let _permit = permit;
        let mut active = None;
        mem::run(
            &window,
            || {
                app2.counters
                    .mem_windows_active
                    .fetch_add(1, Ordering::Relaxed);
                active = Some(Active(app2.clone()));
            },
            || cancel.load(Ordering::Relaxed) || *stop.borrow(),
        )
    })
    .await;
    let profile = match traced {
        Ok(Ok(profile)) => profile,
        Ok(Err(MemError::Target(e))) => return bad_request(&app, e),
        Ok(Err(MemError::Collector(e))) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("tracing allocations failed: {e}"),
            );
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
    };
    let parent = span.map(|s| s.0.0.clone()).unwrap_or_default();
    let response =
        tokio::task::spawn_blocking(move || render_response(profile, params.format, None, &parent))
            .await
            .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")));
    app.counters.profiles_served.fetch_add(1, Ordering::Relaxed);
    response
}

async fn trace(
    State(app): State<Arc<App>>,
    span: Option<axum::Extension<RequestSpan>>,
    Path(trace_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let id: TraceId = match trace_id.parse() {
        Ok(id) => id,
        Err(e) => return bad_request(&app, format!("{e}")),
    };
    let format = match parse_trace_query(query.as_deref()) {
        Ok(f) => f,
        Err(e) => return bad_request(&app, e),
    };
    let Ok(_permit) = app.permits.clone().try_acquire_owned() else {
        return busy(&app);
    };
    // Samples still in the kernel map belong to the answer too.
    if app.shared.flush().await.is_none() {
        return unavailable();
    }
    let profile = match app.shared.trace_profile(id).await {
        Ok(p) => p,
        Err(()) => return unavailable(),
    };
    let parent = span.map(|s| s.0.0.clone()).unwrap_or_default();
    let response = match profile {
        None => None,
        Some(profile) => Some(
            tokio::task::spawn_blocking(move || {
                render_response(profile, format, Some(id), &parent)
            })
            .await
            .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"))),
        ),
    };
    match response {
        Some(r) => {
            app.counters.profiles_served.fetch_add(1, Ordering::Relaxed);
            r
        }
        None => text(
            StatusCode::NOT_FOUND,
            format!(
                "no samples of trace {id} are held: unknown, not sampled on a CPU, or older than the retention"
            ),
        ),
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    // Healthy while the collector drains: a stuck collector shows here.
    let last = super::lock(&app.shared.stats).last_drain;
    let limit = Duration::from_secs(30);
    match last {
        Some(at) if at.elapsed() > limit => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the last drain was {} s ago", at.elapsed().as_secs()),
        ),
        None if app.shared.started.elapsed().unwrap_or_default() > limit => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no drain has completed yet",
        ),
        _ => text(StatusCode::OK, "ok"),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let shared = app.shared.clone();
    let app2 = app.clone();
    let body = tokio::task::spawn_blocking(move || metrics::render(&shared, &app2.counters))
        .await
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint {}: try /debug/prof/cpu/ebpf/, /debug/prof/mem/ebpf/?pid=P, /debug/prof/trace/<trace_id>, /healthz, /metrics",
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_query() {
        assert_eq!(
            parse_cpu_query(None, 300).unwrap(),
            CpuParams {
                seconds: 30,
                pids: vec![],
                format: Format::Svg
            }
        );
        assert_eq!(
            parse_cpu_query(Some("seconds=5&pid=1,2&pid=2&format=json"), 300).unwrap(),
            CpuParams {
                seconds: 5,
                pids: vec![1, 2],
                format: Format::Json
            }
        );
        for (q, needle) in [
            ("seconds=0", "invalid seconds"),
            ("seconds=301", "1 to 300"),
            ("seconds=x", "invalid seconds"),
            ("pid=abc", "invalid pid"),
            ("pid=0", "invalid pid"),
            ("format=png", "unknown format"),
            ("colour=red", "unknown parameter"),
        ] {
            let err = parse_cpu_query(Some(q), 300).unwrap_err();
            assert!(err.contains(needle), "{q}: {err}");
            assert!(!err.contains('\n'));
        }
        assert_eq!(
            parse_trace_query(Some("format=folded")).unwrap(),
            Format::Folded
        );
        assert!(parse_trace_query(Some("seconds=1")).is_err());
    }

    #[test]
    fn mem_query() {
        let p = parse_mem_query(Some("pid=7"), 300).unwrap();
        assert_eq!(
            p,
            MemParams {
                window: MemWindow {
                    pids: vec![7],
                    duration: Duration::from_secs(30),
                    min_age: Duration::ZERO,
                    frames: hawk_common::MAX_STACK_DEPTH,
                    view: MemView::Outstanding,
                },
                format: Format::Svg,
            }
        );
        let p = parse_mem_query(
            Some("seconds=5&pid=1,2&format=json&min_age=30s&view=allocated&frames=8"),
            300,
        )
        .unwrap();
        assert_eq!(p.window.pids, vec![1, 2]);
        assert_eq!(p.window.duration, Duration::from_secs(5));
        assert_eq!(p.window.min_age, Duration::from_secs(30));
        assert_eq!((p.window.frames, p.window.view), (8, MemView::Allocated));
        assert_eq!(p.format, Format::Json);
        assert_eq!(
            parse_mem_query(Some("pid=1&min_age=0"), 300)
                .unwrap()
                .window
                .min_age,
            Duration::ZERO
        );
        for (q, needle) in [
            ("", "pid is required"),
            ("seconds=5&format=json", "pid is required"),
            ("pid=1&seconds=301", "1 to 300"),
            ("pid=x", "invalid pid"),
            ("pid=1&view=live", "invalid view"),
            ("pid=1&min_age=soon", "invalid min_age"),
            ("pid=1&frames=0", "invalid frames"),
            ("pid=1&frames=128", "invalid frames"),
            ("pid=1&format=png", "unknown format"),
            ("pid=1&freq=99", "unknown parameter"),
        ] {
            let err = parse_mem_query(Some(q), 300).unwrap_err();
            assert!(err.contains(needle), "{q}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "t0k"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(authorized(&headers, "t0k"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic t0k"));
        assert!(!authorized(&headers, "t0k"));
    }
}
