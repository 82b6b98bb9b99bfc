//! Posting protobuf bodies over `http://` or `https://`, one fresh HTTP/1.1 connection a post:
//! OTLP to a collector (the metrics push, the uprobe capture export, recorder flushes) and OpAMP
//! to its server.
//!
//! `https://` is TLS (rustls, its `ring` provider) with the server's certificate checked against
//! the system's CA certificates, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (as
//! OpenSSL reads them; rustls-native-certs), and its name or IP address against the URL's host.
//! No client certificate, except where a post is given a setup of its own ([`tls_config_with`]:
//! OpAMP's `ca_file`, `client_cert` and `client_key`).

use std::path::Path;
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
    Ok(Arc::new(builder(native_roots()?)?.with_no_client_auth()))
}

/// The system's CA certificates (or `SSL_CERT_FILE` / `SSL_CERT_DIR`'s).
fn native_roots() -> Result<rustls::RootCertStore, String> {
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
    Ok(roots)
}

type WantsClientCert = rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>;

/// rustls's builder, checking servers against `roots`.
fn builder(roots: rustls::RootCertStore) -> Result<WantsClientCert, String> {
    // ring rather than rustls's default aws-lc-rs: a much smaller C build. rustls
    // deprecates it for lacking post-quantum key exchange; the classical groups it
    // offers (X25519, P-256, P-384) are what OTLP and OpAMP servers take today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots))
        .map_err(|e| format!("setting up TLS: {e}"))
}

/// A TLS client setup of its own, read now: servers checked against the CA certificates of
/// `ca_file` (PEM) instead of the system's, and, with `client` (a PEM certificate chain and its
/// PEM private key), that certificate presented when a server asks for one. `what` names the
/// settings in errors, which name the file too.
pub(crate) fn tls_config_with(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
    what: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = |path: &Path, kind: &str| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("{what}: {kind} {}: {e}", path.display()))?;
        if certs.is_empty() {
            bail!(
                "{what}: {kind} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                path.display()
            );
        }
        Ok(certs)
    };
    // The client's files first: their errors do not depend on the system's certificates.
    let client = match client {
        None => None,
        Some((cert, key_path)) => {
            let chain = certs(cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                anyhow!(
                    "{what}: client key {}: {e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                    key_path.display()
                )
            })?;
            Some((cert, key_path, chain, key))
        }
    };
    let roots = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(path, "CA file")? {
                roots.add(cert).map_err(|e| {
                    anyhow!(
                        "{what}: CA file {}: a certificate in it: {e}",
                        path.display()
                    )
                })?;
            }
            roots
        }
        None => native_roots().map_err(|e| anyhow!("{what}: {e}"))?,
    };
    let b = builder(roots).map_err(|e| anyhow!(e))?;
    let config = match client {
        None => b.with_no_client_auth(),
        Some((cert, key_path, chain, key)) => b.with_client_auth_cert(chain, key).map_err(|e| {
            anyhow!(
                "{what}: client certificate {} with key {}: {e}",
                cert.display(),
                key_path.display()
            )
        })?,
    };
    Ok(Arc::new(config))
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
    let reply = post(endpoint, body, what, &[], MAX_RESPONSE, None).await?;
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
/// reads at most `max_response` bytes of the answer (a longer one is an error). Over
/// `https://`, `tls` is the TLS setup, or the common one when `None`.
pub(crate) async fn post(
    endpoint: &Uri,
    body: Vec<u8>,
    what: &str,
    headers: &[(String, String)],
    max_response: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
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
        let config = match tls {
            Some(c) => c.clone(),
            None => tls_config()?,
        };
        let tls = tokio_rustls::TlsConnector::from(config)
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
    headers: &'a [(String, String)],
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
        req = req.header(name.as_str(), value.as_str());
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
        .and_then(|v| retry_after(v, std::time::SystemTime::now()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn error(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> String {
        format!(
            "{:#}",
            tls_config_with(ca, client, "OpAMP TLS").unwrap_err()
        )
    }

    #[test]
    fn tls_files_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = error(Some(&missing), None);
        assert!(
            e.starts_with(&format!("OpAMP TLS: CA file {}: ", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = error(Some(&empty), None);
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = error(None, Some((&empty, &missing)));
        assert!(
            e.contains(&format!("client certificate {}", empty.display())),
            "{e}"
        );
    }
}

/// A `Retry-After` value (RFC 9110 10.2.3): seconds, or an HTTP date (then the time from `now`
/// until it, 0 when past).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod retry_after_tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn seconds_or_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            super::retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777 s after the epoch.
        assert_eq!(
            super::retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            super::retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(super::retry_after("soon", SystemTime::now()), None);
        assert_eq!(super::retry_after("-1", SystemTime::now()), None);
    }
}
