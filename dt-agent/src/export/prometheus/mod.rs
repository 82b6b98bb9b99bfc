//! The Prometheus text exposition (format 0.0.4) and the loopback `/metrics` endpoint.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::families::{Kind, StatsSource, families, read_stats};
use crate::stats::Stats;

/// The content type of [`render_prometheus`]'s output (what the official client libraries send).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more are closed at accept (the endpoint is for a scraper or two).
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request head, and how long an idle keep-alive
/// connection stays open: longer than the usual scrape intervals, so a scraper's connection
/// survives from one scrape to the next.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The counters in the Prometheus text exposition format 0.0.4: `# HELP` and `# TYPE` for every
/// family (also for those without samples), then its samples. See the module documentation of
/// [`crate::export`] for the families.
pub fn render_prometheus(stats: &Stats) -> String {
    let mut out = String::with_capacity(4096 + 1024 * stats.rules.len());
    for (family, samples) in families(stats) {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "# HELP {} {}",
            family.prometheus,
            escape_help(family.help)
        );
        let _ = writeln!(out, "# TYPE {} {kind}", family.prometheus);
        for sample in samples {
            out.push_str(family.prometheus);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label_value(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    }
    out
}

/// Label values escape `\`, `"` and line feed.
fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes `\` and line feed.
fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\").replace('\n', r"\n")
}

/// Binds the metrics listener. Only loopback addresses are accepted (127.0.0.0/8, `::1`, or
/// `::ffff:127.x.y.z`): the agent exposes its counters to this host only. Must be called inside
/// a tokio runtime (it returns an error otherwise).
pub fn bind_metrics(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().to_canonical().is_loopback() {
        bail!("metrics address must be a loopback address (127.0.0.0/8 or ::1), not {addr}");
    }
    bind_metrics_public(addr)
}

/// Binds the metrics listener on any address: `metrics_public = true`, for a scraper on other
/// hosts (a cluster's Prometheus scraping each node). As [`bind_metrics`] otherwise.
pub fn bind_metrics_public(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if tokio::runtime::Handle::try_current().is_err() {
        bail!("bind_metrics({addr}) must be called inside a tokio runtime");
    }
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("metrics listener on {addr}"))?;
    TcpListener::from_std(std_listener).with_context(|| format!("metrics listener on {addr}"))
}

/// Serves `GET /metrics` on `listener` until the task is dropped: 200 with
/// [`render_prometheus`] of what `source` returns ([`CONTENT_TYPE`]), 500 with the error when
/// `source` fails, 404 for other paths, 405 for methods other than GET (HEAD is answered like
/// GET, without the body). HTTP/1.1 with keep-alive.
pub async fn serve_prometheus(listener: TcpListener, source: StatsSource) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and the like: don't spin.
                log::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            log::debug!("metrics endpoint: {MAX_CONNECTIONS} connections open, closing {peer}");
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(respond(req, &source).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("metrics endpoint: connection from {peer}: {e}");
            }
        });
    }
}

async fn respond(req: Request<Incoming>, source: &StatsSource) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match read_stats(source).await {
        Ok(stats) => {
            let mut resp = Response::new(Full::new(Bytes::from(render_prometheus(&stats))));
            resp.headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        Err(e) if e.is::<crate::stats::Uninstalled>() => text(
            StatusCode::OK,
            &format!("# dt-agent: {e}; idle until stopped\n"),
        ),
        Err(e) => {
            log::warn!("metrics endpoint: reading the counters: {e:#}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading dt's counters failed: {e:#}\n"),
            )
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests;
