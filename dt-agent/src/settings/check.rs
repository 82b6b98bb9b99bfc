//! The validators of the run settings, each written once: the config file's parser, the flags'
//! parsers and [`resolve`](super::resolve) call them.

use std::{net::SocketAddr, time::Duration};

use dt_ebpf_common::MAX_REQUEST_CEILING;

/// Parses a duration: one or more `<integer><unit>` parts with unit `ms`, `s`, `m` or `h`, such
/// as `"10s"`, `"500ms"`, `"1m"`, `"1m30s"`. It must be greater than zero.
///
/// Hand-written rather than `humantime`: the grammar is this small, the workspace has no such
/// crate, and a privileged agent is better off without one more dependency for it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{text}` is not a duration; write e.g. \"10s\", \"500ms\", \"1m\" or \"1m30s\"")
    };
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    if total.is_zero() {
        return Err(format!("`{text}`: the interval must be greater than zero"));
    }
    Ok(total)
}

/// Parses a Prometheus endpoint address such as `"127.0.0.1:9464"` or `"[::1]:9464"`: an IP
/// address (not a host name) and a port other than 0. Whether it must be on loopback depends
/// on `metrics_public`, so [`resolve`](super::resolve) checks that.
pub fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!("`{text}` is not a socket address; write an IP and a port, e.g. \"127.0.0.1:9464\"")
    })?;
    check_metrics_port(addr)?;
    Ok(addr)
}

/// The metrics endpoint's address without `metrics_public`: on loopback, port not 0.
pub fn check_loopback(addr: SocketAddr) -> Result<(), String> {
    if !addr.ip().to_canonical().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; the metrics endpoint is served on loopback only \
             (127.0.0.0/8 or [::1]) unless `metrics_public = true` (--metrics-public) says it may \
             be reached from other hosts"
        ));
    }
    check_metrics_port(addr)
}

pub fn check_metrics_port(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Err(format!("{addr}: the port must not be 0"));
    }
    Ok(())
}

/// Checks an OTLP metrics URL such as `"http://127.0.0.1:4318/v1/metrics"`: as
/// [`check_post_url`].
pub fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    check_post_url(url, "/v1/metrics")
}

/// Checks the URL captured uprobe calls are posted to, such as
/// `"http://127.0.0.1:4318/v1/logs"`: as [`check_post_url`].
pub fn check_capture_endpoint(url: &str) -> Result<(), String> {
    check_post_url(url, "/v1/logs")
}

/// As [`check_http_url`], and with a path: the URL is used as given, path included, so a
/// collector's base URL (`"http://127.0.0.1:4318"`, which SDKs complete with `signal`, such as
/// `/v1/metrics`) would post to `/`.
fn check_post_url(url: &str, signal: &str) -> Result<(), String> {
    let uri = check_http_url(url, &format!("http://127.0.0.1:4318{signal}"))?;
    if uri.path().is_empty() || uri.path() == "/" {
        let base = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str())
        );
        return Err(format!(
            "`{url}` has no path; the URL is used as given (no `{signal}` is added), so write \
             the whole of it, e.g. \"{base}{signal}\""
        ));
    }
    Ok(())
}

/// Headers the agent writes itself, which `[opamp] headers` must not set.
const OWN_HEADERS: [&str; 8] = [
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "user-agent",
    "opamp-instance-uid",
];

/// A problem with an `[opamp] headers` entry, if any: (whether it is the name's, the message).
/// A name is an HTTP token, not one the agent writes itself; a value is visible ASCII, spaces
/// and tabs, without line breaks (which would end the header and start another).
pub fn check_opamp_header(name: &str, value: &str) -> Option<(bool, String)> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Some((
            true,
            format!(
                "`{}` is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                name.escape_debug()
            ),
        ));
    }
    if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Some((
            true,
            format!("`{name}` is a header the agent sets itself; it cannot be given here"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| !(c == ' ' || c == '\t' || c.is_ascii_graphic()))
    {
        return Some((
            false,
            format!(
                "the value of header `{name}` holds {:?}: a header value is printable ASCII, \
                 spaces and tabs",
                c
            ),
        ));
    }
    None
}

/// Checks the OpAMP server's URL, such as `"https://opamp.example:4320/v1/opamp"`: as
/// [`check_http_url`].
pub fn check_opamp_endpoint(url: &str) -> Result<(), String> {
    check_http_url(url, "https://opamp.example:4320/v1/opamp").map(|_| ())
}

/// What follows `scheme` (such as `"https://"`) at the start of `url`, the scheme in any case
/// (RFC 3986; the HTTP client reads it so too).
pub fn after_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    url.get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| &url[scheme.len()..])
}

/// `http://` or `https://`, a URL the HTTP client can parse, with a host and, if it has one, a
/// port in 1..=65535, no credentials, and no `$` in either (a variable the file does not
/// expand); `example` goes in the error messages. Checked when the settings are read, before
/// anything is loaded, so that a typo is not found at the first post.
fn check_http_url(url: &str, example: &str) -> Result<hyper::Uri, String> {
    const NO_EXPANSION: &str = "the config file does not expand environment variables";
    let rest = after_scheme(url, "http://")
        .or_else(|| after_scheme(url, "https://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL, e.g. \"{example}\""))?;
    if url.chars().any(char::is_whitespace) {
        return Err(format!("`{url}` contains whitespace"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains('$') {
        return Err(format!("`{url}`: `$` in the host or port; {NO_EXPANSION}"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}` holds credentials (`user@`): they would not be sent, only shown in errors; \
             write the URL without them"
        ));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| {
        let hint = if url.contains('$') {
            format!("; {NO_EXPANSION}")
        } else {
            String::new()
        };
        format!("`{url}` is not a valid URL ({e}){hint}")
    })?;
    // The port: what follows the host (a bracketed IPv6 address may hold colons).
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => authority.find(':').map_or("", |i| &authority[i..]),
    };
    if let Some(port) = after_host.strip_prefix(':') {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "`{url}`: the port `{port}` is not a number in 1..=65535"
                ));
            }
        }
    }
    Ok(uri)
}

/// `--port N`: one port, 1..=65535 (several are given by repeating the flag).
pub fn parse_port(text: &str) -> Result<u16, String> {
    if text.contains(',') {
        let each: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| format!("--port {p}"))
            .collect();
        return Err(format!(
            "`{text}`: one port per --port; repeat it: {}",
            each.join(" ")
        ));
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{text}` is not a port; a port is 1..=65535")),
    }
}

pub fn check_ports(key: &str, ports: &[u16]) -> Result<(), String> {
    for (i, &port) in ports.iter().enumerate() {
        if port == 0 {
            return Err(format!("{key}: 0 is not a port; a port is 1..=65535"));
        }
        if ports[..i].contains(&port) {
            return Err(format!("{key}: port {port} is given twice"));
        }
    }
    Ok(())
}

pub fn check_max_request(bytes: u32) -> Result<(), String> {
    if (1..=MAX_REQUEST_CEILING).contains(&bytes) {
        Ok(())
    } else {
        Err(max_request_range(bytes))
    }
}

pub fn max_request_range(got: impl std::fmt::Display) -> String {
    format!("{got} is out of range; the request size bound is 1..={MAX_REQUEST_CEILING} bytes")
}

/// `--max-request BYTES`: bytes, or a size such as `256KiB`, that [`check_max_request`]
/// accepts.
pub fn parse_max_request(text: &str) -> Result<u32, String> {
    if let Some(n) = text.strip_prefix('-')
        && n.parse::<u64>().is_ok()
    {
        return Err(max_request_range(text));
    }
    let bytes = crate::rules::parse_size(text).map_err(|_| {
        format!("`{text}` is not a size: write bytes (262144) or KiB or MiB (\"256KiB\")")
    })?;
    let n = u32::try_from(bytes).map_err(|_| max_request_range(text))?;
    check_max_request(n)?;
    Ok(n)
}

/// Parses a share of all CPUs such as `"2%"` or `"0.5%"` into millionths (`"2%"` is 20,000):
/// more than 0, at most 100%, at most four decimals (0.0001% is the smallest step).
pub fn parse_cpu_share(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a share of the CPUs; write e.g. \"2%\" or \"0.5%\"");
    let number = text.trim().strip_suffix('%').ok_or_else(bad)?.trim();
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 4 {
        return Err(format!(
            "`{text}`: at most four decimals (0.0001% is the smallest step)"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_ppm: u64 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
    let ppm = whole
        .checked_mul(10_000)
        .and_then(|w| w.checked_add(frac_ppm))
        .ok_or_else(bad)?;
    if ppm == 0 || ppm > 1_000_000 {
        return Err(format!(
            "`{text}`: the CPU ceiling is more than 0% and at most 100%"
        ));
    }
    Ok(ppm)
}

/// Millionths of the CPUs as a percentage, e.g. 20,000 as `2%` and 1 as `0.0001%`.
pub fn format_ppm(ppm: u64) -> String {
    let whole = ppm / 10_000;
    let frac = ppm % 10_000;
    if frac == 0 {
        format!("{whole}%")
    } else {
        let f = format!("{frac:04}");
        format!("{whole}.{}%", f.trim_end_matches('0'))
    }
}

/// Parses a memory size such as `"256MiB"` (the units of a recorder's `size`: `B`, `KiB`,
/// `MiB`, `GiB`), at least 1 MiB.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    // Its error names the text and says what to write.
    let bytes = crate::rules::parse_size(text)?;
    if bytes < 1 << 20 {
        return Err(format!("`{text}`: the memory ceiling is at least 1MiB"));
    }
    Ok(bytes)
}
