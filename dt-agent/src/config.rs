//! The agent's config file (`dt-agent run --config FILE`, TOML) and the resolved run settings.
//!
//! [`load`] reads and validates a file into a [`FileConfig`]; every problem is a
//! [`Diagnostic`] (`file:line:column: message`), as for rule files, and unknown keys are errors.
//! [`resolve`] merges the file with the command-line [`Overrides`] into [`Settings`]:
//! flags win over the file, and the file over the defaults.
//!
//! Relative paths in the file are relative to the file's directory, so `rules_dir = "rules"` in
//! `/etc/dt/agent.toml` means `/etc/dt/rules`. Relative paths given as flags are relative to the
//! working directory, as usual.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dt_ebpf_common::{DEFAULT_MAX_REQUEST, MAX_REQUEST_CEILING};
use serde::Deserialize;
use toml::Spanned;

use crate::rules::{Diagnostic, Pos, SourceText};

/// The config file `run` reads when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/dt/agent.toml";
/// The rules directory when neither the flag nor the file names one, if it is a directory.
pub const DEFAULT_RULES_DIR: &str = "/etc/dt/rules";
/// The rules directory when [`DEFAULT_RULES_DIR`] is not a directory (relative to the working
/// directory).
pub const FALLBACK_RULES_DIR: &str = "rules";
/// The OTLP/HTTP port hooked when neither the flags nor the file list any.
pub const DEFAULT_PORT: u16 = 4318;
/// Where pinned programs and maps live (on bpffs).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dt";
/// The OTLP metrics push interval.
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(10);

/// The config file as written: every key is optional. [`load`] has validated every value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// `rules_dir`: the rules directory.
    pub rules_dir: Option<PathBuf>,
    /// `ports`: the OTLP/HTTP ports to hook (1..=65535, at least one, no repeats).
    pub ports: Option<Vec<u16>>,
    /// `cgroup`: the cgroup v2 directory whose connections are hooked.
    pub cgroup: Option<PathBuf>,
    /// `socket`: the control socket.
    pub socket: Option<PathBuf>,
    /// `pin`: pin programs and maps so filtering outlives the agent.
    pub pin: Option<bool>,
    /// `pin_dir`: the bpffs directory for the pins.
    pub pin_dir: Option<PathBuf>,
    /// `metrics_addr`: the loopback address of the Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// `otlp_endpoint`: the URL OTLP metrics are pushed to.
    pub otlp_endpoint: Option<String>,
    /// `otlp_interval`: how often OTLP metrics are pushed.
    pub otlp_interval: Option<Duration>,
    /// `max_request`: the request size bound in bytes.
    pub max_request: Option<u32>,
    /// `capture_endpoint`: the URL captured uprobe calls are posted to as OTLP logs.
    pub capture_endpoint: Option<String>,
}

/// The command-line flags of `dt-agent run`, unparsed into defaults: `None` (or an empty
/// `ports`) means "not given", so the file or the default applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--rules DIR`.
    pub rules_dir: Option<PathBuf>,
    /// `--port N`, repeated. When non-empty it replaces the file's `ports`, it does not add.
    pub ports: Vec<u16>,
    /// `--cgroup PATH`.
    pub cgroup: Option<PathBuf>,
    /// `--socket PATH`.
    pub socket: Option<PathBuf>,
    /// `Some(true)` for `--pin`, `Some(false)` for `--no-pin`.
    pub pin: Option<bool>,
    /// `--pin-dir PATH`.
    pub pin_dir: Option<PathBuf>,
    /// `--metrics-addr ADDR` (see [`parse_metrics_addr`]).
    pub metrics_addr: Option<SocketAddr>,
    /// `--otlp-endpoint URL` (see [`check_otlp_endpoint`]).
    pub otlp_endpoint: Option<String>,
    /// `--otlp-interval DURATION` (see [`parse_duration`]).
    pub otlp_interval: Option<Duration>,
    /// `--max-request BYTES`.
    pub max_request: Option<u32>,
    /// `--capture-endpoint URL` (see [`check_capture_endpoint`]).
    pub capture_endpoint: Option<String>,
}

/// The settings `run` uses: flags > file > defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub rules_dir: PathBuf,
    pub ports: Vec<u16>,
    pub cgroup: Option<PathBuf>,
    pub socket: PathBuf,
    pub pin: bool,
    pub pin_dir: PathBuf,
    /// `None`: no Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// `None`: no OTLP metrics push.
    pub otlp_endpoint: Option<String>,
    pub otlp_interval: Duration,
    pub max_request: u32,
    /// `None`: capture rules are refused.
    pub capture_endpoint: Option<String>,
}

/// The file as TOML holds it, with spans for the diagnostics.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rules_dir: Option<Spanned<String>>,
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
    cgroup: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    pin: Option<bool>,
    pin_dir: Option<Spanned<String>>,
    metrics_addr: Option<Spanned<String>>,
    otlp_endpoint: Option<Spanned<String>>,
    otlp_interval: Option<Spanned<String>>,
    max_request: Option<Spanned<i64>>,
    capture_endpoint: Option<Spanned<String>>,
}

/// The config file `run` reads: `explicit` (`--config FILE`), which must exist, or else
/// [`DEFAULT_CONFIG`] if it exists, or else none.
pub fn load_optional(explicit: Option<&Path>) -> Result<Option<FileConfig>, Vec<Diagnostic>> {
    match explicit {
        Some(path) => load(path).map(Some),
        None if Path::new(DEFAULT_CONFIG).exists() => load(Path::new(DEFAULT_CONFIG)).map(Some),
        None => Ok(None),
    }
}

/// Reads and validates a config file. On failure, returns every problem found as
/// `file:line:column: message` (a TOML syntax or type error reports that one problem).
pub fn load(path: &Path) -> Result<FileConfig, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::new(
            path,
            Pos::START,
            format!("cannot read the config file: {e}"),
        )]
    })?;
    parse(path, &text)
}

/// Parses and validates the text of a config file; `path` names it in diagnostics and anchors
/// its relative paths.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, Vec<Diagnostic>> {
    let src = SourceText::new(path, text);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end();
        // A type error points into a value: name the key it belongs to.
        let message = match key_of_value(text, &span) {
            Some(key) => format!("`{key}`: {message}"),
            None => message.to_string(),
        };
        vec![src.diag(span, message)]
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut diags = Vec::new();
    let mut path_key = |key: &str, value: Option<Spanned<String>>| -> Option<PathBuf> {
        let value = value?;
        if value.get_ref().is_empty() {
            diags.push(src.diag(value.span(), format!("`{key}` must not be empty")));
            return None;
        }
        Some(base.join(value.get_ref()))
    };
    let rules_dir = path_key("rules_dir", raw.rules_dir);
    let cgroup = path_key("cgroup", raw.cgroup);
    let socket = path_key("socket", raw.socket);
    let pin_dir = path_key("pin_dir", raw.pin_dir);

    let ports = raw.ports.and_then(|list| {
        let mut ports = Vec::new();
        let mut ok = true;
        if list.get_ref().is_empty() {
            diags.push(src.diag(list.span(), "`ports` must list at least one port"));
            return None;
        }
        for port in list.get_ref() {
            match u16::try_from(*port.get_ref()) {
                Ok(p) if p != 0 => {
                    if ports.contains(&p) {
                        diags.push(src.diag(port.span(), format!("`ports` lists port {p} twice")));
                        ok = false;
                    }
                    ports.push(p);
                }
                _ => {
                    diags.push(src.diag(
                        port.span(),
                        format!(
                            "`ports`: {} is not a port; a port is 1..=65535",
                            port.get_ref()
                        ),
                    ));
                    ok = false;
                }
            }
        }
        ok.then_some(ports)
    });

    let metrics_addr = checked(
        &src,
        &mut diags,
        "metrics_addr",
        raw.metrics_addr,
        parse_metrics_addr,
    );
    let otlp_endpoint = checked(&src, &mut diags, "otlp_endpoint", raw.otlp_endpoint, |s| {
        check_otlp_endpoint(s).map(|()| s.to_string())
    });
    let otlp_interval = checked(
        &src,
        &mut diags,
        "otlp_interval",
        raw.otlp_interval,
        parse_duration,
    );
    let capture_endpoint = checked(
        &src,
        &mut diags,
        "capture_endpoint",
        raw.capture_endpoint,
        |s| check_capture_endpoint(s).map(|()| s.to_string()),
    );

    let max_request = raw
        .max_request
        .and_then(|value| match u32::try_from(*value.get_ref()) {
            Ok(n) if check_max_request(n).is_ok() => Some(n),
            _ => {
                diags.push(src.diag(
                    value.span(),
                    format!("`max_request`: {}", max_request_range(value.get_ref())),
                ));
                None
            }
        });

    if !diags.is_empty() {
        diags.sort_by_key(Diagnostic::pos);
        return Err(diags);
    }
    Ok(FileConfig {
        rules_dir,
        ports,
        cgroup,
        socket,
        pin: raw.pin,
        pin_dir,
        metrics_addr,
        otlp_endpoint,
        otlp_interval,
        max_request,
        capture_endpoint,
    })
}

/// The keys of the file (the fields of [`RawFile`]).
const KEYS: [&str; 11] = [
    "rules_dir",
    "ports",
    "cgroup",
    "socket",
    "pin",
    "pin_dir",
    "metrics_addr",
    "otlp_endpoint",
    "otlp_interval",
    "max_request",
    "capture_endpoint",
];

/// The known top-level key whose value holds `span`, if any. (An unknown key's error already
/// names it.)
fn key_of_value(text: &str, span: &Range<usize>) -> Option<String> {
    let (root, _) = toml::de::DeTable::parse_recoverable(text);
    root.get_ref()
        .iter()
        .find(|(_, value)| value.span().contains(&span.start))
        .map(|(key, _)| key.get_ref().to_string())
        .filter(|key| KEYS.contains(&key.as_str()))
}

/// `check(value)`, or a diagnostic at the value naming `key`.
fn checked<T>(
    src: &SourceText,
    diags: &mut Vec<Diagnostic>,
    key: &str,
    value: Option<Spanned<String>>,
    check: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let value = value?;
    check(value.get_ref())
        .map_err(|e| diags.push(src.diag(value.span(), format!("`{key}`: {e}"))))
        .ok()
}

/// Merges the flags, the file and the defaults (in that order of precedence) and checks the
/// result. An error names the key (or flag) at fault.
pub fn resolve(file: Option<FileConfig>, flags: Overrides) -> Result<Settings, String> {
    let file = file.unwrap_or_default();
    let ports = if !flags.ports.is_empty() {
        check_ports("--port", &flags.ports)?;
        flags.ports
    } else if let Some(ports) = file.ports {
        check_ports("ports", &ports)?;
        ports
    } else {
        vec![DEFAULT_PORT]
    };
    let (max_request, key) = match (flags.max_request, file.max_request) {
        (Some(n), _) => (n, "--max-request"),
        (None, Some(n)) => (n, "max_request"),
        (None, None) => (DEFAULT_MAX_REQUEST, "max_request"),
    };
    check_max_request(max_request).map_err(|e| format!("{key}: {e}"))?;
    let (metrics_addr, key) = match (flags.metrics_addr, file.metrics_addr) {
        (Some(a), _) => (Some(a), "--metrics-addr"),
        (None, a) => (a, "metrics_addr"),
    };
    if let Some(addr) = metrics_addr {
        check_loopback(addr).map_err(|e| format!("{key}: {e}"))?;
    }
    let (otlp_endpoint, key) = match (flags.otlp_endpoint, file.otlp_endpoint) {
        (Some(u), _) => (Some(u), "--otlp-endpoint"),
        (None, u) => (u, "otlp_endpoint"),
    };
    if let Some(url) = &otlp_endpoint {
        check_otlp_endpoint(url).map_err(|e| format!("{key}: {e}"))?;
    }
    let (otlp_interval, key) = match (flags.otlp_interval, file.otlp_interval) {
        (Some(d), _) => (d, "--otlp-interval"),
        (None, Some(d)) => (d, "otlp_interval"),
        (None, None) => (DEFAULT_OTLP_INTERVAL, "otlp_interval"),
    };
    if otlp_interval.is_zero() {
        return Err(format!("{key}: the interval must be greater than zero"));
    }
    let (capture_endpoint, key) = match (flags.capture_endpoint, file.capture_endpoint) {
        (Some(u), _) => (Some(u), "--capture-endpoint"),
        (None, u) => (u, "capture_endpoint"),
    };
    if let Some(url) = &capture_endpoint {
        check_capture_endpoint(url).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(Settings {
        rules_dir: flags
            .rules_dir
            .or(file.rules_dir)
            .unwrap_or_else(default_rules_dir),
        ports,
        cgroup: flags.cgroup.or(file.cgroup),
        socket: flags
            .socket
            .or(file.socket)
            .unwrap_or_else(|| PathBuf::from(crate::control::DEFAULT_SOCKET)),
        pin: flags.pin.or(file.pin).unwrap_or(false),
        pin_dir: flags
            .pin_dir
            .or(file.pin_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
        metrics_addr,
        otlp_endpoint,
        otlp_interval,
        max_request,
        capture_endpoint,
    })
}

/// [`DEFAULT_RULES_DIR`] if it is a directory, else [`FALLBACK_RULES_DIR`].
pub fn default_rules_dir() -> PathBuf {
    let etc = Path::new(DEFAULT_RULES_DIR);
    if etc.is_dir() {
        etc.to_path_buf()
    } else {
        PathBuf::from(FALLBACK_RULES_DIR)
    }
}

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
/// address (not a host name) on loopback, and a port other than 0.
pub fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!("`{text}` is not a socket address; write an IP and a port, e.g. \"127.0.0.1:9464\"")
    })?;
    check_loopback(addr)?;
    Ok(addr)
}

fn check_loopback(addr: SocketAddr) -> Result<(), String> {
    if !addr.ip().to_canonical().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; the metrics endpoint is served on loopback only \
             (127.0.0.0/8 or [::1])"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{addr}: the port must not be 0"));
    }
    Ok(())
}

/// Checks an OTLP metrics URL such as `"http://127.0.0.1:4318/v1/metrics"`: `http://` (the
/// push in `metrics::otlp` has no TLS, so `https://` is refused here rather than at the first
/// push), a host, and no whitespace. The URL is used as given, path included.
pub fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "`{url}`: https is not supported; use http:// to a collector on this host or a \
             trusted network"
        ));
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("`{url}` is not an http:// URL, e.g. \"http://127.0.0.1:4318/v1/metrics\"")
    })?;
    if url.chars().any(char::is_whitespace) {
        return Err(format!("`{url}` contains whitespace"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// Checks the URL captured uprobe calls are posted to, such as
/// `"http://127.0.0.1:4318/v1/logs"`: as [`check_otlp_endpoint`] (http:// only, a host).
pub fn check_capture_endpoint(url: &str) -> Result<(), String> {
    check_otlp_endpoint(url).map_err(|e| e.replace("/v1/metrics", "/v1/logs"))
}

fn check_ports(key: &str, ports: &[u16]) -> Result<(), String> {
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

fn check_max_request(bytes: u32) -> Result<(), String> {
    if (1..=MAX_REQUEST_CEILING).contains(&bytes) {
        Ok(())
    } else {
        Err(max_request_range(bytes))
    }
}

fn max_request_range(got: impl std::fmt::Display) -> String {
    format!("{got} is out of range; the request size bound is 1..={MAX_REQUEST_CEILING} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<FileConfig, Vec<Diagnostic>> {
        parse(Path::new("/etc/dt/agent.toml"), text)
    }

    /// The single diagnostic of `text`, as `line:column: message`.
    fn error(text: &str) -> String {
        let diags = parse_str(text).expect_err("the config must be refused");
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(d.file, Path::new("/etc/dt/agent.toml"));
        format!("{}:{}: {}", d.line, d.column, d.message)
    }

    fn defaults() -> Settings {
        Settings {
            rules_dir: default_rules_dir(),
            ports: vec![4318],
            cgroup: None,
            socket: PathBuf::from("/run/dt/agent.sock"),
            pin: false,
            pin_dir: PathBuf::from("/sys/fs/bpf/dt"),
            metrics_addr: None,
            otlp_endpoint: None,
            otlp_interval: Duration::from_secs(10),
            max_request: DEFAULT_MAX_REQUEST,
            capture_endpoint: None,
        }
    }

    const EVERY_KEY: &str = r#"
rules_dir = "/srv/dt/rules"
ports = [4318, 14318]
cgroup = "/sys/fs/cgroup/otel.slice"
socket = "/run/dt/other.sock"
pin = true
pin_dir = "/sys/fs/bpf/dt2"
metrics_addr = "127.0.0.1:9464"
otlp_endpoint = "http://127.0.0.1:4318/v1/metrics"
otlp_interval = "1m30s"
max_request = 131072
capture_endpoint = "http://127.0.0.1:4318/v1/logs"
"#;

    #[test]
    fn defaults_with_no_file() {
        assert_eq!(resolve(None, Overrides::default()).unwrap(), defaults());
        let empty = parse_str("# nothing set\n").unwrap();
        assert_eq!(empty, FileConfig::default());
        assert_eq!(
            resolve(Some(empty), Overrides::default()).unwrap(),
            defaults()
        );
    }

    #[test]
    fn the_default_rules_dir_is_etc_when_it_exists() {
        let expect = if Path::new("/etc/dt/rules").is_dir() {
            "/etc/dt/rules"
        } else {
            "rules"
        };
        assert_eq!(default_rules_dir(), Path::new(expect));
    }

    #[test]
    fn every_key() {
        let file = parse_str(EVERY_KEY).unwrap();
        assert_eq!(
            file,
            FileConfig {
                rules_dir: Some("/srv/dt/rules".into()),
                ports: Some(vec![4318, 14318]),
                cgroup: Some("/sys/fs/cgroup/otel.slice".into()),
                socket: Some("/run/dt/other.sock".into()),
                pin: Some(true),
                pin_dir: Some("/sys/fs/bpf/dt2".into()),
                metrics_addr: Some("127.0.0.1:9464".parse().unwrap()),
                otlp_endpoint: Some("http://127.0.0.1:4318/v1/metrics".into()),
                otlp_interval: Some(Duration::from_secs(90)),
                max_request: Some(131072),
                capture_endpoint: Some("http://127.0.0.1:4318/v1/logs".into()),
            }
        );
        let settings = resolve(Some(file), Overrides::default()).unwrap();
        assert_eq!(
            settings,
            Settings {
                rules_dir: "/srv/dt/rules".into(),
                ports: vec![4318, 14318],
                cgroup: Some("/sys/fs/cgroup/otel.slice".into()),
                socket: "/run/dt/other.sock".into(),
                pin: true,
                pin_dir: "/sys/fs/bpf/dt2".into(),
                metrics_addr: Some("127.0.0.1:9464".parse().unwrap()),
                otlp_endpoint: Some("http://127.0.0.1:4318/v1/metrics".into()),
                otlp_interval: Duration::from_secs(90),
                max_request: 131072,
                capture_endpoint: Some("http://127.0.0.1:4318/v1/logs".into()),
            }
        );
    }

    #[test]
    fn the_example_config_parses_to_the_defaults() {
        let text = include_str!("../../dist/agent.toml");
        let file = parse_str(text).unwrap();
        assert_eq!(file, FileConfig::default(), "every key is commented out");
        // Uncommenting every `# key = value` line gives the documented defaults.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = parse(Path::new("/etc/dt/agent.toml"), &uncommented)
            .unwrap_or_else(|d| panic!("{d:?}\n{uncommented}"));
        assert!(file.metrics_addr.is_none() && file.otlp_endpoint.is_none());
        assert!(file.capture_endpoint.is_none());
        let mut expect = defaults();
        expect.rules_dir = "/etc/dt/rules".into();
        assert_eq!(resolve(Some(file), Overrides::default()).unwrap(), expect);
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let file = parse(
            Path::new("/etc/dt/agent.toml"),
            "rules_dir = \"rules\"\nsocket = \"../run/a.sock\"\n",
        )
        .unwrap();
        assert_eq!(file.rules_dir, Some("/etc/dt/rules".into()));
        assert_eq!(file.socket, Some("/etc/dt/../run/a.sock".into()));
        let file = parse(Path::new("agent.toml"), "rules_dir = \"rules\"\n").unwrap();
        assert_eq!(file.rules_dir, Some("rules".into()));
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse_str(EVERY_KEY).unwrap();
        let flags = Overrides {
            rules_dir: Some("/tmp/r".into()),
            ports: vec![9000],
            cgroup: Some("/sys/fs/cgroup/x".into()),
            socket: Some("/tmp/s.sock".into()),
            pin: Some(false),
            pin_dir: Some("/sys/fs/bpf/x".into()),
            metrics_addr: Some("[::1]:9000".parse().unwrap()),
            otlp_endpoint: Some("http://localhost/v1/metrics".into()),
            otlp_interval: Some(Duration::from_millis(500)),
            max_request: Some(1000),
            capture_endpoint: Some("http://[::1]:4318/v1/logs".into()),
        };
        let s = resolve(Some(file.clone()), flags).unwrap();
        assert_eq!(
            s,
            Settings {
                rules_dir: "/tmp/r".into(),
                // The flags' ports replace the file's list; they do not add to it.
                ports: vec![9000],
                cgroup: Some("/sys/fs/cgroup/x".into()),
                socket: "/tmp/s.sock".into(),
                pin: false,
                pin_dir: "/sys/fs/bpf/x".into(),
                metrics_addr: Some("[::1]:9000".parse().unwrap()),
                otlp_endpoint: Some("http://localhost/v1/metrics".into()),
                otlp_interval: Duration::from_millis(500),
                max_request: 1000,
                capture_endpoint: Some("http://[::1]:4318/v1/logs".into()),
            }
        );
        // `--pin` over a file that says nothing, and `--no-pin` over `pin = true`.
        let pin = |flag, file: Option<FileConfig>| {
            resolve(
                file,
                Overrides {
                    pin: flag,
                    ..Overrides::default()
                },
            )
            .unwrap()
            .pin
        };
        assert!(pin(Some(true), None));
        assert!(!pin(Some(false), Some(file.clone())));
        assert!(pin(None, Some(file)));
        // A flag not given leaves the file's value.
        let s = resolve(
            Some(parse_str("ports = [1, 2]\nmax_request = 7\n").unwrap()),
            Overrides {
                socket: Some("/tmp/x".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!((s.ports, s.max_request), (vec![1, 2], 7));
        assert_eq!(s.socket, Path::new("/tmp/x"));
    }

    #[test]
    fn unknown_keys_are_errors_at_their_position() {
        let e = error("pin = true\n  max_requets = 5\n");
        assert_eq!(
            e,
            "2:3: unknown field `max_requets`, expected one of `rules_dir`, `ports`, `cgroup`, \
             `socket`, `pin`, `pin_dir`, `metrics_addr`, `otlp_endpoint`, `otlp_interval`, \
             `max_request`, `capture_endpoint`"
        );
        let listed: Vec<String> = KEYS.iter().map(|k| format!("`{k}`")).collect();
        assert!(
            e.ends_with(&listed.join(", ")),
            "KEYS must list RawFile's fields"
        );
        let e = error("ports = [4318]\n\n[rules]\ndir = \"x\"\n");
        assert!(e.starts_with("3:2: unknown field `rules`"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = error("pin = true\nports = [4318\n");
        assert_eq!(e, "2:14: unclosed array, expected `]`");
    }

    #[test]
    fn bad_types() {
        let e = error("pin = \"yes\"\n");
        assert_eq!(
            e,
            "1:7: `pin`: invalid type: string \"yes\", expected a boolean"
        );
        let e = error("ports = 4318\n");
        assert!(e.starts_with("1:9: `ports`: invalid type: integer"), "{e}");
        let e = error("ports = [\"4318\"]\n");
        assert!(e.starts_with("1:10: `ports`: invalid type: string"), "{e}");
        let e = error("rules_dir = 5\n");
        assert!(
            e.starts_with("1:13: `rules_dir`: invalid type: integer"),
            "{e}"
        );
        let e = error("pin = true\nmax_request = 1.5\n");
        assert!(
            e.starts_with("2:15: `max_request`: invalid type: floating point"),
            "{e}"
        );
        let e = error("otlp_interval = 10\n");
        assert!(
            e.starts_with("1:17: `otlp_interval`: invalid type: integer"),
            "{e}"
        );
        let e = error("[metrics_addr]\nx = 1\n");
        assert!(e.contains("`metrics_addr`: invalid type: map"), "{e}");
    }

    #[test]
    fn bad_durations() {
        let e = error("otlp_interval = \"10\"\n");
        assert!(
            e.starts_with("1:17: `otlp_interval`: `10` is not a duration"),
            "{e}"
        );
        for bad in ["", "s", "10 s", "1.5s", "10sec", "-1s", "5d", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("1m30s250ms"),
            Ok(Duration::from_millis(90_250))
        );
        let zero = Overrides {
            otlp_interval: Some(Duration::ZERO),
            ..Overrides::default()
        };
        assert!(
            resolve(None, zero)
                .unwrap_err()
                .starts_with("--otlp-interval:")
        );
    }

    #[test]
    fn metrics_addr_must_be_loopback() {
        let e = error("\nmetrics_addr = \"0.0.0.0:9464\"\n");
        assert!(
            e.starts_with("2:16: `metrics_addr`: 0.0.0.0:9464 is not a loopback address"),
            "{e}"
        );
        let e = error("metrics_addr = \"localhost:9464\"\n");
        assert!(
            e.starts_with("1:16: `metrics_addr`: `localhost:9464` is not a socket address"),
            "{e}"
        );
        assert!(parse_metrics_addr("10.0.0.1:9464").is_err());
        assert!(parse_metrics_addr("[::]:9464").is_err());
        assert!(parse_metrics_addr("127.0.0.1:0").is_err());
        assert!(parse_metrics_addr("127.0.0.1").is_err());
        assert!(parse_metrics_addr("127.0.0.2:9464").is_ok());
        assert!(parse_metrics_addr("[::1]:9464").is_ok());
        assert!(parse_metrics_addr("[::ffff:127.0.0.1]:9464").is_ok());
        let flags = Overrides {
            metrics_addr: Some("192.168.1.1:9464".parse().unwrap()),
            ..Overrides::default()
        };
        assert!(
            resolve(None, flags)
                .unwrap_err()
                .starts_with("--metrics-addr:")
        );
        let file = FileConfig {
            metrics_addr: Some("192.168.1.1:9464".parse().unwrap()),
            ..FileConfig::default()
        };
        let e = resolve(Some(file), Overrides::default()).unwrap_err();
        assert!(e.starts_with("metrics_addr:"), "{e}");
    }

    #[test]
    fn otlp_endpoints() {
        let e = error("otlp_endpoint = \"127.0.0.1:4318\"\n");
        assert!(
            e.starts_with("1:17: `otlp_endpoint`: `127.0.0.1:4318` is not an http://"),
            "{e}"
        );
        assert!(
            check_otlp_endpoint("https://collector/v1/metrics")
                .unwrap_err()
                .contains("https is not supported")
        );
        assert!(check_otlp_endpoint("ftp://collector/").is_err());
        let flags = Overrides {
            otlp_endpoint: Some("https://collector/v1/metrics".into()),
            ..Overrides::default()
        };
        assert!(
            resolve(None, flags)
                .unwrap_err()
                .starts_with("--otlp-endpoint: ")
        );
        assert!(check_otlp_endpoint("http:///v1/metrics").is_err());
        assert!(check_otlp_endpoint("http://:4318/v1/metrics").is_err());
        assert!(check_otlp_endpoint("http://a b/").is_err());
        assert!(check_otlp_endpoint("http://collector:4318/v1/metrics").is_ok());
        let e = error("capture_endpoint = \"127.0.0.1:4318\"\n");
        assert!(
            e.starts_with(
                "1:20: `capture_endpoint`: `127.0.0.1:4318` is not an http:// URL, e.g. \
                 \"http://127.0.0.1:4318/v1/logs\""
            ),
            "{e}"
        );
        let flags = Overrides {
            capture_endpoint: Some("https://collector/v1/logs".into()),
            ..Overrides::default()
        };
        assert!(
            resolve(None, flags)
                .unwrap_err()
                .starts_with("--capture-endpoint: ")
        );
    }

    #[test]
    fn port_zero_and_other_bad_ports() {
        let e = error("ports = [4318, 0]\n");
        assert_eq!(e, "1:16: `ports`: 0 is not a port; a port is 1..=65535");
        let e = error("ports = [65536]\n");
        assert_eq!(e, "1:10: `ports`: 65536 is not a port; a port is 1..=65535");
        let e = error("ports = [-1]\n");
        assert_eq!(e, "1:10: `ports`: -1 is not a port; a port is 1..=65535");
        let e = error("ports = []\n");
        assert_eq!(e, "1:9: `ports` must list at least one port");
        let e = error("ports = [4318, 4318]\n");
        assert_eq!(e, "1:16: `ports` lists port 4318 twice");
        let flags = Overrides {
            ports: vec![4318, 0],
            ..Overrides::default()
        };
        assert!(
            resolve(None, flags)
                .unwrap_err()
                .starts_with("--port: 0 is not a port")
        );
        let file = FileConfig {
            ports: Some(vec![0]),
            ..FileConfig::default()
        };
        assert!(
            resolve(Some(file), Overrides::default())
                .unwrap_err()
                .starts_with("ports: ")
        );
        assert!(parse_str("ports = [1, 65535]\n").is_ok());
    }

    #[test]
    fn max_request_out_of_range() {
        let e = error("max_request = 0\n");
        assert_eq!(
            e,
            "1:15: `max_request`: 0 is out of range; the request size bound is 1..=524288 bytes"
        );
        let e = error(&format!("max_request = {}\n", MAX_REQUEST_CEILING + 1));
        assert!(
            e.starts_with("1:15: `max_request`: 524289 is out of range"),
            "{e}"
        );
        let e = error("max_request = -5\n");
        assert!(
            e.starts_with("1:15: `max_request`: -5 is out of range"),
            "{e}"
        );
        let e = error("max_request = 99999999999\n");
        assert!(
            e.starts_with("1:15: `max_request`: 99999999999 is out of range"),
            "{e}"
        );
        let ok = parse_str(&format!("max_request = {MAX_REQUEST_CEILING}\n")).unwrap();
        assert_eq!(ok.max_request, Some(MAX_REQUEST_CEILING));
        let flags = Overrides {
            max_request: Some(MAX_REQUEST_CEILING + 1),
            ..Overrides::default()
        };
        assert!(
            resolve(None, flags)
                .unwrap_err()
                .starts_with("--max-request: 524289")
        );
    }

    #[test]
    fn every_problem_is_reported_in_order() {
        let diags = parse_str(
            "max_request = 0\nports = [0]\nmetrics_addr = \"8.8.8.8:1\"\nsocket = \"\"\n",
        )
        .unwrap_err();
        let at: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(at, vec![(1, 15), (2, 10), (3, 16), (4, 10)]);
        assert_eq!(diags[3].message, "`socket` must not be empty");
        assert_eq!(
            diags[0].to_string(),
            "/etc/dt/agent.toml:1:15: `max_request`: 0 is out of range; the request size bound \
             is 1..=524288 bytes"
        );
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "pin = true\nrules_dir = \"r\"\n").unwrap();
        let file = load(&path).unwrap();
        assert_eq!(file.pin, Some(true));
        assert_eq!(file.rules_dir, Some(dir.path().join("r")));
        assert_eq!(load_optional(Some(&path)).unwrap(), Some(file));
        let missing = dir.path().join("missing.toml");
        let diags = load(&missing).unwrap_err();
        assert_eq!((diags[0].line, diags[0].column), (1, 1));
        assert!(diags[0].message.starts_with("cannot read the config file"));
        assert!(load_optional(Some(&missing)).is_err());
    }
}
