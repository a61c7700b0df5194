//! Workload: a small HTTP service instrumented with tokio + tracing +
//! OpenTelemetry + Hawk's shim, for the trace-capture tests.
//!
//! `traced_service [PORT]` listens on 127.0.0.1:PORT (default 0: any free
//! port) and prints `ready <pid> <port>` as its first line on stdout. It
//! speaks just enough HTTP/1.1 (one request per connection):
//!
//! - `GET /alpha?ms=N` (default 300): burns about N ms of CPU, 2/3 of it in
//!   `alpha_work` on the tokio worker serving the request and 1/3 in
//!   `alpha_helper_work` on a blocking-pool thread, inside a child span
//!   (`alpha_helper`) entered on that thread.
//! - `GET /beta?ms=N` (default 300): burns about N ms in `beta_work`.
//! - `GET /alloc?kb=N` (default 1024): allocates N KiB in 64 KiB blocks in
//!   `alloc_work` (through the C library's malloc), frees every other block
//!   and leaks the rest; the reply adds `allocated=<bytes> leaked=<bytes>`.
//!
//! Each request's span (`GET /alpha`, `GET /beta`) is a child of the W3C
//! `traceparent` header's context when there is one (a new trace otherwise),
//! and is sampled whatever the header's flag says. The reply, sent after the
//! work, is `200 OK` with a body naming the ids:
//! `trace_id=<32 hex> span_id=<16 hex> work=alpha ms=N`.
//!
//! `HawkLayer` publishes the entered span of each thread through the
//! `hawk_trace_context_set` marker, so Hawk tags the samples of both threads
//! with the request's trace. The CPU work is real (no sleeping), in
//! `#[inline(never)]`, unmangled functions; frame pointers are on for the
//! whole workspace (.cargo/config.toml), so the functions show in stacks.
//! The tokio runtime has 2 worker threads.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use hawk_common::shim::HawkLayer;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Default CPU time of a request, in milliseconds.
const DEFAULT_MS: u64 = 300;
/// Longest request we burn for.
const MAX_MS: u64 = 60_000;
/// Bound on the request head (request line + headers).
const MAX_HEAD: u64 = 16 * 1024;
/// Bound on reading the request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Dependent multiply-adds until `ms` milliseconds of wall time have passed.
/// Inlined into each named work function, so the samples land in them; the
/// `salt` differs per function so that the optimizer cannot merge them into
/// one symbol (identical code folding).
#[inline(always)]
fn burn(ms: u64, salt: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    loop {
        for _ in 0..20_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(salt));
        }
        if Instant::now() >= end {
            return x;
        }
    }
}

/// The `/alpha` work on the request's own thread.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn alpha_work(ms: u64) -> u64 {
    burn(ms, 0xa1)
}

/// The `/alpha` work handed to a second thread.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn alpha_helper_work(ms: u64) -> u64 {
    burn(ms, 0xa2)
}

/// The `/beta` work.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn beta_work(ms: u64) -> u64 {
    burn(ms, 0xb1)
}

/// The bytes of one `/alloc` block.
const ALLOC_BLOCK: usize = 64 * 1024;

/// Allocates `kb` KiB in blocks, frees every other one and leaks the rest;
/// returns (bytes allocated, bytes leaked).
#[inline(never)]
#[unsafe(no_mangle)]
pub fn alloc_work(kb: u64) -> (usize, usize) {
    let blocks = (kb as usize * 1024).div_ceil(ALLOC_BLOCK);
    let mut leaked = 0;
    for i in 0..blocks {
        let block = vec![i as u8; ALLOC_BLOCK];
        if i % 2 == 1 {
            leaked += block.len();
            std::mem::forget(black_box(block));
        } else {
            drop(black_box(block));
        }
    }
    (blocks * ALLOC_BLOCK, leaked)
}

/// `/alpha`: 1/3 of the time on a blocking-pool thread in a child span, 2/3
/// here, concurrently.
async fn alpha(ms: u64) -> u64 {
    let helper_ms = ms / 3;
    // Created here, so its parent is the request span (entered while this
    // future is polled); entered on the blocking thread, so HawkLayer
    // publishes it there.
    let helper_span = tracing::info_span!("alpha_helper", ms = helper_ms);
    let helper =
        tokio::task::spawn_blocking(move || helper_span.in_scope(|| alpha_helper_work(helper_ms)));
    let mine = alpha_work(ms - helper_ms);
    mine ^ helper.await.unwrap_or(0)
}

async fn beta(ms: u64) -> u64 {
    beta_work(ms)
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    query: String,
    /// Lower-case header names.
    headers: HashMap<String, String>,
}

async fn read_head(stream: &mut TcpStream) -> Result<Request, String> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err("malformed request line".into());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: HashMap::new(),
    };
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if n == 0 || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            request
                .headers
                .insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok(request)
}

/// The number after `key=` in the query, at most `max`, else `default`.
fn query_number(query: &str, key: &str, default: u64, max: u64) -> Result<u64, String> {
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix(key).and_then(|v| v.strip_prefix('=')) {
            let n: u64 = v.parse().map_err(|_| format!("bad {key}: {v}"))?;
            return Ok(n.min(max));
        }
    }
    Ok(default)
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve(mut stream: TcpStream) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return respond(&mut stream, "400 Bad Request", &format!("{e}\n")).await,
        Err(_) => return respond(&mut stream, "408 Request Timeout", "timeout\n").await,
    };
    let kind = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/alpha") => "alpha",
        ("GET", "/beta") => "beta",
        ("GET", "/alloc") => "alloc",
        _ => {
            return respond(
                &mut stream,
                "404 Not Found",
                "try /alpha, /beta or /alloc\n",
            )
            .await;
        }
    };
    let (key, default, max) = match kind {
        "alloc" => ("kb", 1024, 1024 * 1024),
        _ => ("ms", DEFAULT_MS, MAX_MS),
    };
    let ms = match query_number(&request.query, key, default, max) {
        Ok(ms) => ms,
        Err(e) => return respond(&mut stream, "400 Bad Request", &format!("{e}\n")).await,
    };

    let parent = TraceContextPropagator::new().extract(&request.headers);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("GET /{kind}"),
        otel.kind = "server",
        url.path = request.path.as_str(),
        ms,
    );
    let _ = span.set_parent(parent);
    let ids: SpanContext = span.context().span().span_context().clone();

    let work = async {
        match kind {
            "alpha" => (alpha(ms).await, String::new()),
            "alloc" => {
                let (allocated, leaked) = alloc_work(ms);
                (0, format!(" allocated={allocated} leaked={leaked}"))
            }
            _ => (beta(ms).await, String::new()),
        }
    };
    let (result, extra) = work.instrument(span).await;
    black_box(result);

    let body = format!(
        "trace_id={} span_id={} work={kind} {key}={ms}{extra}\n",
        ids.trace_id(),
        ids.span_id()
    );
    respond(&mut stream, "200 OK", &body).await;
}

async fn run(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    println!("ready {} {port}", std::process::id());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream));
    }
}

fn main() {
    let port: u16 = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 0,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            eprintln!("usage: traced_service [PORT]");
            std::process::exit(2);
        }
    };

    // Spans are recorded (sampled) but exported nowhere.
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("traced_service")))
        // After the OpenTelemetry layer.
        .with(HawkLayer::new());
    tracing::subscriber::set_global_default(subscriber).expect("set subscriber");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(port)) {
        eprintln!("traced_service: {e}");
        std::process::exit(1);
    }
}
