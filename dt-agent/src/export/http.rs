//! Posting protobuf bodies over `http://` or `https://`, one fresh HTTP/1.1 connection a post:
//! OTLP to a collector (the metrics push, the uprobe capture export, recorder flushes) and OpAMP
//! to its server.
//!
//! `https://` is TLS (rustls, its `ring` provider) with the server's certificate checked against
//! the system's CA certificates, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (as
//! OpenSSL reads them; rustls-native-certs), and its name or IP address against the URL's host.
//! No client certificate.

use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Uri,
    header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER, USER_AGENT},
};
use hyper_util::rt::TokioIo;

/// The most of a collector's answer that is read.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

/// Where a post goes: from an `http://` or `https://` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host to connect to (brackets of an IPv6 address removed).
    pub host: String,
    pub port: u16,
    /// For `Host:`.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// `https://`.
    pub tls: bool,
}

/// The [`Target`] of `endpoint`; `what` names the setting in errors ("OTLP metrics endpoint").
pub(crate) fn target(endpoint: &Uri, what: &str) -> anyhow::Result<Target> {
    let tls = match endpoint.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            bail!("{what} {endpoint}: unsupported scheme {other}, use http:// or https://")
        }
        None => bail!(
            "{what} {endpoint} must be an absolute http:// or https:// URI, such as http://127.0.0.1:4318/v1/metrics"
        ),
    };
    let authority = endpoint
        .authority()
        .ok_or_else(|| anyhow!("{what} {endpoint} has no host"))?;
    let host = authority.host();
    if host.is_empty() {
        bail!("{what} {endpoint} has no host");
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = endpoint
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(Target {
        host,
        port,
        authority: authority.as_str().to_string(),
        path,
        tls,
    })
}

/// The TLS client setup of every `https://` post, made once it can be: the CA certificates are
/// read at the first post that finds some (a change to them takes a restart); a post that finds
/// none fails, and the next one reads them again.
fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let config = load_tls_config().map_err(|e| anyhow!(e))?;
    Ok(CONFIG.get_or_init(|| config).clone())
}

/// The TLS client setup with the CA certificates found now.
fn load_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let why: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no CA certificates to check https servers against (the system's, or \
             SSL_CERT_FILE / SSL_CERT_DIR when set){}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        ));
    }
    // ring rather than rustls's default aws-lc-rs: a much smaller C build. rustls
    // deprecates it for lacking post-quantum key exchange; the classical groups it
    // offers (X25519, P-256, P-384) are what OTLP and OpAMP servers take today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("setting up TLS: {e}"))
}

/// A collector's 2xx answer.
pub(crate) struct Answer {
    /// Whether it says it is protobuf (then it may carry a partial-success report).
    pub protobuf: bool,
    pub body: Bytes,
}

/// Posts one protobuf body on a fresh connection; errors unless the answer is 2xx.
pub(crate) async fn post_protobuf(
    endpoint: &Uri,
    body: Vec<u8>,
    what: &str,
) -> anyhow::Result<Answer> {
    let reply = post(endpoint, body, what, &[], MAX_RESPONSE).await?;
    if !reply.status.is_success() {
        let text = String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]).into_owned();
        bail!("POST {endpoint}: {}: {text:?}", reply.status);
    }
    Ok(Answer {
        protobuf: reply.protobuf,
        body: reply.body,
    })
}

/// Any answer to a post.
pub(crate) struct Reply {
    pub status: hyper::StatusCode,
    /// `Retry-After` in seconds, when given so.
    pub retry_after: Option<std::time::Duration>,
    pub protobuf: bool,
    pub body: Bytes,
}

/// Posts one protobuf body on a fresh connection, with `headers` besides the usual ones, and
/// reads at most `max_response` bytes of the answer (a longer one is an error).
pub(crate) async fn post(
    endpoint: &Uri,
    body: Vec<u8>,
    what: &str,
    headers: &[(&'static str, String)],
    max_response: usize,
) -> anyhow::Result<Reply> {
    let t = target(endpoint, what)?;
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .with_context(|| format!("connecting to {}", t.authority))?;
    // Never through the agent's own rules.
    super::own::exclude(&stream);
    let _ = stream.set_nodelay(true);
    let post = Post {
        t: &t,
        endpoint,
        what,
        body,
        headers,
        max_response,
    };
    if t.tls {
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .with_context(|| format!("{what} {endpoint}: {:?} is not a server name", t.host))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS with {}", t.authority))?;
        exchange(TokioIo::new(tls), post).await
    } else {
        exchange(TokioIo::new(stream), post).await
    }
}

/// One post's request, and what it is for.
struct Post<'a> {
    t: &'a Target,
    endpoint: &'a Uri,
    what: &'a str,
    body: Vec<u8>,
    headers: &'a [(&'static str, String)],
    max_response: usize,
}

/// The post itself, over a connected stream (plain or TLS).
async fn exchange<I>(io: I, post: Post<'_>) -> anyhow::Result<Reply>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Post {
        t,
        endpoint,
        what,
        body,
        headers,
        max_response,
    } = post;
    let authority = &t.authority;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .with_context(|| format!("HTTP handshake with {authority}"))?;
    // The connection task goes when the post is done or abandoned (a caller's timeout).
    let label = what.to_string();
    let _conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("{label} connection: {e}");
        }
    }));
    let len = body.len();
    let mut req = hyper::Request::post(t.path.as_str())
        .header(HOST, authority.as_str())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        )
        .header(CONTENT_LENGTH, len)
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!("dt-agent/", env!("CARGO_PKG_VERSION"))),
        );
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let status = resp.status();
    let protobuf = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let body = Limited::new(resp.into_body(), max_response)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| anyhow!("reading the answer of {endpoint}: {e}"))?;
    Ok(Reply {
        status,
        retry_after,
        protobuf,
        body,
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
