//! The config file (`--config FILE`, TOML): read and validated into a [`Layer`]. Every
//! problem is a [`Diagnostic`] (`file:line:column: message`), as for rule files, and unknown keys
//! are errors. Relative paths in the file are relative to the file's directory, so
//! `rules_dir = "rules"` in `/etc/dt/agent.toml` means `/etc/dt/rules`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    DEFAULT_CONFIG, Layer,
    check::{
        check_capture_endpoint, check_max_request, check_opamp_endpoint, check_opamp_header,
        check_otlp_endpoint, max_request_range, parse_cpu_share, parse_duration, parse_max_request,
        parse_memory, parse_metrics_addr,
    },
};
use crate::rules::{Diagnostic, SourceText};

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
    max_request: Option<Spanned<Size>>,
    capture_endpoint: Option<Spanned<String>>,
    metrics_public: Option<bool>,
    idle_after_uninstall: Option<bool>,
    uprobe_fault_in: Option<bool>,
    state_dir: Option<Spanned<String>>,
    opamp: Option<RawOpamp>,
    ceiling: Option<RawCeiling>,
}

/// `max_request`: bytes as an integer, or a size as text (`"256KiB"`), as its flag takes it.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "expected an integer (bytes) or a size such as \"256KiB\""
)]
enum Size {
    Bytes(i64),
    Text(String),
}

/// `[ceiling]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCeiling {
    cpu: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    captures_per_second: Option<Spanned<i64>>,
}

/// `[opamp]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpamp {
    /// Required, from here or from `--opamp-endpoint` (checked when they are stacked).
    endpoint: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    headers: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
}

/// The config file `run` reads: `explicit` (`--config FILE`), which must exist, or else
/// [`DEFAULT_CONFIG`] if it exists, or else none.
pub fn load_optional(explicit: Option<&Path>) -> Result<Option<Layer>, Vec<Diagnostic>> {
    match explicit {
        Some(path) => load(path).map(Some),
        None if Path::new(DEFAULT_CONFIG).exists() => load(Path::new(DEFAULT_CONFIG)).map(Some),
        None => Ok(None),
    }
}

/// Where the config file that `run` would read (see [`load_optional`]) puts the control socket
/// and the pin root, read leniently for the verbs that only need to reach the agent: the rip
/// cord must work while the file is being edited. The file's other problems come back too (the
/// agent would refuse the file at its next start); `Err` only when an explicit file cannot be
/// read.
pub fn locations_optional(explicit: Option<&Path>) -> Result<Locations, Vec<Diagnostic>> {
    let path = match explicit {
        Some(p) => p,
        None if Path::new(DEFAULT_CONFIG).exists() => Path::new(DEFAULT_CONFIG),
        None => return Ok(Locations::default()),
    };
    let problems = match load(path) {
        Ok(layer) => {
            return Ok(Locations {
                socket: layer.socket,
                pin_dir: layer.pin_dir,
                problems: Vec::new(),
            });
        }
        Err(problems) => {
            if std::fs::metadata(path).is_err() {
                return Err(problems);
            }
            problems
        }
    };
    // Only the two paths, from whatever of the file reads as TOML.
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (root, _) = toml::de::DeTable::parse_recoverable(&text);
    let base = path.parent().unwrap_or(Path::new(""));
    let path_of = |key: &str| {
        root.get_ref()
            .get(key)
            .and_then(|v| v.get_ref().as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
            .map(|s| base.join(s))
    };
    Ok(Locations {
        socket: path_of("socket"),
        pin_dir: path_of("pin_dir"),
        problems,
    })
}

/// What [`locations_optional`] read.
#[derive(Debug, Default)]
pub struct Locations {
    pub socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    /// The file's problems (the agent would refuse it at its next start).
    pub problems: Vec<Diagnostic>,
}

/// Reads and validates a config file. On failure, returns every problem found as
/// `file:line:column: message` (a TOML syntax error reports that one problem).
pub fn load(path: &Path) -> Result<Layer, Vec<Diagnostic>> {
    let text =
        crate::rules::read_text(path, "the config file", "a config file").map_err(|d| vec![d])?;
    parse(path, &text)
}

/// Parses and validates the text of a config file; `path` names it in diagnostics and anchors
/// its relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Layer, Vec<Diagnostic>> {
    let src = SourceText::new(path, text);
    let root = toml::de::DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = crate::rules::diag::plain_message(e.message(), text.get(span.clone()));
        vec![src.diag(span, message)]
    })?;
    let root = Spanned::new(root.span(), toml::de::DeValue::Table(root.into_inner()));
    // Every unknown key and every value of the wrong type, each naming its key.
    let (raw, read) = crate::rules::read_table_naming::<RawFile>(&src, &root, true);
    let Some(mut raw) = raw else {
        let mut read = read;
        read.sort_by_key(Diagnostic::pos);
        return Err(read);
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut diags = read;
    // Where the keys that `resolve` checks against each other (and against the flags) are.
    let mut at = BTreeMap::new();
    let mut mark = |key: &'static str, span: Option<std::ops::Range<usize>>| {
        if let Some(span) = span {
            let pos = src.pos(span.start);
            at.insert(
                key,
                format!("{}:{}:{}", path.display(), pos.line, pos.column),
            );
        }
    };
    mark("metrics_addr", raw.metrics_addr.as_ref().map(Spanned::span));
    if let Some(o) = &raw.opamp {
        mark("opamp.endpoint", o.endpoint.as_ref().map(Spanned::span));
        mark(
            "opamp.poll_interval",
            o.poll_interval.as_ref().map(Spanned::span),
        );
        mark("opamp.ca_file", o.ca_file.as_ref().map(Spanned::span));
        mark(
            "opamp.client_cert",
            o.client_cert.as_ref().map(Spanned::span),
        );
        mark("opamp.client_key", o.client_key.as_ref().map(Spanned::span));
        mark(
            "opamp.headers",
            o.headers
                .as_ref()
                .and_then(|h| h.keys().next())
                .map(Spanned::span),
        );
    }
    if let Some(c) = &raw.ceiling {
        mark("ceiling.window", c.window.as_ref().map(Spanned::span));
    }
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
    let state_dir = path_key("state_dir", raw.state_dir);
    let (opamp_ca_file, opamp_client_cert, opamp_client_key) = match raw.opamp.as_mut() {
        Some(o) => (
            path_key("opamp.ca_file", o.ca_file.take()),
            path_key("opamp.client_cert", o.client_cert.take()),
            path_key("opamp.client_key", o.client_key.take()),
        ),
        None => (None, None, None),
    };

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

    // Whether it must be loopback is `resolve`'s to say: `metrics_public = true` here, or
    // `--metrics-public`, allows any address. Its error names the position marked above.
    let metrics_public = raw.metrics_public.unwrap_or(false);
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

    let opamp_headers = raw
        .opamp
        .as_mut()
        .and_then(|o| o.headers.take())
        .map(|headers| {
            let mut seen = std::collections::BTreeSet::new();
            headers
                .into_iter()
                .filter_map(|(name, value)| {
                    let problem =
                        check_opamp_header(name.get_ref(), value.get_ref()).or_else(|| {
                            (!seen.insert(name.get_ref().to_ascii_lowercase())).then(|| {
                                (
                                    true,
                                    format!(
                                        "header `{}` is given twice (header names are the same in \
                                     any case)",
                                        name.get_ref()
                                    ),
                                )
                            })
                        });
                    match problem {
                        Some((true, p)) => diags.push(src.diag(name.span(), p)),
                        Some((false, p)) => diags.push(src.diag(value.span(), p)),
                        None => return Some((name.into_inner(), value.into_inner())),
                    }
                    None
                })
                .collect()
        })
        .map(super::Headers)
        .unwrap_or_default();
    let (opamp_endpoint, opamp_poll_interval) = match raw.opamp {
        Some(o) => (
            checked(&src, &mut diags, "opamp.endpoint", o.endpoint, |s| {
                check_opamp_endpoint(s).map(|()| s.to_string())
            }),
            checked(
                &src,
                &mut diags,
                "opamp.poll_interval",
                o.poll_interval,
                parse_duration,
            ),
        ),
        None => (None, None),
    };

    let (mut ceiling_cpu, mut ceiling_window, mut ceiling_memory, mut ceiling_captures) =
        (None, None, None, None);
    if let Some(c) = raw.ceiling {
        ceiling_cpu = checked(&src, &mut diags, "ceiling.cpu", c.cpu, parse_cpu_share);
        ceiling_window = checked(&src, &mut diags, "ceiling.window", c.window, parse_duration);
        ceiling_memory = checked(&src, &mut diags, "ceiling.memory", c.memory, parse_memory);
        ceiling_captures = c
            .captures_per_second
            .and_then(|n| match u64::try_from(*n.get_ref()) {
                Ok(v) if v >= 1 => Some(v),
                _ => {
                    diags.push(src.diag(
                        n.span(),
                        format!(
                            "`ceiling.captures_per_second`: {} is not a rate; at least 1",
                            n.get_ref()
                        ),
                    ));
                    None
                }
            });
    }

    let max_request = raw.max_request.and_then(|value| {
        let n = match value.get_ref() {
            Size::Bytes(n) => u32::try_from(*n)
                .ok()
                .filter(|&n| check_max_request(n).is_ok())
                .ok_or_else(|| max_request_range(n)),
            Size::Text(text) => parse_max_request(text),
        };
        n.map_err(|e| diags.push(src.diag(value.span(), format!("`max_request`: {e}"))))
            .ok()
    });

    if !diags.is_empty() {
        diags.sort_by_key(Diagnostic::pos);
        return Err(diags);
    }
    Ok(Layer {
        rules_dir,
        ports: ports.unwrap_or_default(),
        cgroup,
        socket,
        pin: raw.pin,
        pin_dir,
        metrics_addr,
        at,
        otlp_endpoint,
        otlp_interval,
        max_request,
        capture_endpoint,
        metrics_public,
        idle_after_uninstall: raw.idle_after_uninstall.unwrap_or(false),
        uprobe_fault_in: raw.uprobe_fault_in.unwrap_or(false),
        state_dir,
        opamp_endpoint,
        opamp_poll_interval,
        opamp_ca_file,
        opamp_client_cert,
        opamp_client_key,
        opamp_headers,
        ceiling_cpu,
        ceiling_window,
        ceiling_memory,
        ceiling_captures,
    })
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
