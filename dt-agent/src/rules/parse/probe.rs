//! `[[probe]]` tables: which functions to probe and how to read a call, checked on their own.

use std::fmt;

use dt_ebpf_common::MAX_NAME_LEN;
use dt_ebpf_common::uprobe::{MAX_PROBE_ARG, MAX_SEV_PAIRS};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;
use toml::de::DeValue;

use super::{RawSeverity, at, read_table, with_read_problems};
use crate::rules::diag::{Diagnostic, SourceText};
use crate::rules::model::{At, ProbeDef, ProbeKind, SeverityMap, SeveritySource};
use crate::rules::severity;

/// A `[[probe]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: Spanned<String>,
    preset: Option<Spanned<String>>,
    binary: Option<Spanned<String>>,
    symbol: Option<Spanned<String>>,
    severity_arg: Option<Spanned<i64>>,
    severity_map: Option<Spanned<RawSeverityMap>>,
    severity: Option<Spanned<RawSeverity>>,
    message_arg: Option<Spanned<i64>>,
    pid: Option<Spanned<i64>>,
    service: Option<Spanned<String>>,
}

/// `severity_map = "syslog"` or `severity_map = { 0 = "DEBUG", 1 = "INFO" }`.
enum RawSeverityMap {
    Preset(String),
    Table(Vec<(Spanned<String>, Spanned<RawSeverity>)>),
}

impl<'de> Deserialize<'de> for RawSeverityMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawSeverityMapVisitor)
    }
}

struct RawSeverityMapVisitor;

impl<'de> Visitor<'de> for RawSeverityMapVisitor {
    type Value = RawSeverityMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"otlp\", \"syslog\", or a table of argument values and severities")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSeverityMap, E> {
        Ok(RawSeverityMap::Preset(v.to_owned()))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawSeverityMap, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<Spanned<String>, Spanned<RawSeverity>>()? {
            pairs.push(pair);
        }
        Ok(RawSeverityMap::Table(pairs))
    }
}

/// Presets: name and default binary.
const PRESETS: [(&str, &str); 1] = [("syslog", "libc")];

pub(super) fn parse_probe(
    src: &SourceText,
    table: &Spanned<DeValue>,
) -> Result<ProbeDef, Vec<Diagnostic>> {
    if !table.get_ref().is_table() {
        return Err(vec![
            src.diag(table.span(), "a probe must be a table: write [[probe]]"),
        ]);
    }
    let (raw, read) = read_table::<RawProbe>(src, table);
    let Some(raw) = raw else {
        return Err(read);
    };
    let checked = ProbeChecker {
        src,
        diags: Vec::new(),
    }
    .check(raw, table.span().start);
    with_read_problems(read, checked)
}

/// Validates one [`RawProbe`], collecting every problem.
struct ProbeChecker<'s, 'a> {
    src: &'s SourceText<'a>,
    diags: Vec<Diagnostic>,
}

impl ProbeChecker<'_, '_> {
    fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.diags.push(self.src.diag(spanned.span(), message));
    }

    fn check(mut self, raw: RawProbe, start: usize) -> Result<ProbeDef, Vec<Diagnostic>> {
        let len = raw.name.get_ref().len();
        if len == 0 {
            self.error(&raw.name, "name must not be empty");
        } else if len > MAX_NAME_LEN {
            self.error(
                &raw.name,
                format!("name is {len} bytes; the limit is {MAX_NAME_LEN}"),
            );
        } else if let Some(why) = super::bad_name_char(raw.name.get_ref()) {
            self.error(&raw.name, why);
        }
        let preset = raw.preset.as_ref().and_then(|p| {
            let found = PRESETS.iter().find(|(name, _)| name == p.get_ref());
            if found.is_none() {
                self.error(
                    p,
                    format!(
                        "unknown preset \"{}\"{}: expected \"syslog\"",
                        p.get_ref(),
                        crate::rules::diag::closest(p.get_ref(), &["syslog"])
                            .map(|m| format!(" (did you mean \"{m}\"?)"))
                            .unwrap_or_default()
                    ),
                );
            }
            found
        });
        let kind = match (&raw.preset, preset) {
            (Some(p), Some(_)) => {
                let fixed = [
                    ("symbol", raw.symbol.as_ref().map(Spanned::span)),
                    ("severity_arg", raw.severity_arg.as_ref().map(Spanned::span)),
                    ("severity_map", raw.severity_map.as_ref().map(Spanned::span)),
                    ("severity", raw.severity.as_ref().map(Spanned::span)),
                    ("message_arg", raw.message_arg.as_ref().map(Spanned::span)),
                ];
                for (key, span) in fixed {
                    if let Some(span) = span {
                        let message =
                            format!("{key} is set by preset \"{}\"; leave it out", p.get_ref());
                        self.diags.push(self.src.diag(span, message));
                    }
                }
                Some(ProbeKind::Syslog)
            }
            (Some(_), None) => None,
            (None, _) => self.function(&raw, start),
        };
        let binary = match (&raw.binary, preset) {
            (Some(b), _) => {
                let text = b.get_ref();
                if text.is_empty() {
                    self.error(b, "binary must not be empty");
                } else if text.contains('/') && !text.starts_with('/') {
                    self.error(
                        b,
                        "binary must be an absolute path, or a library name such as \"libc\"",
                    );
                }
                Some(at(self.src, b.clone()))
            }
            (None, Some((_, default))) => Some(At::new(default.to_string(), self.src.pos(start))),
            (None, None) => {
                if raw.preset.is_none() {
                    self.diags.push(self.src.diag(
                        start..start,
                        "a probe needs binary (a path, or a library name such as \"libc\")",
                    ));
                }
                None
            }
        };
        let pid = raw
            .pid
            .as_ref()
            .and_then(|p| match u32::try_from(*p.get_ref()) {
                Ok(n) if n >= 1 && n <= i32::MAX as u32 => {
                    Some(At::new(n, self.src.pos(p.span().start)))
                }
                _ => {
                    self.error(p, "pid must be a process id (1 or more)");
                    None
                }
            });
        let service = raw.service.map(|s| {
            if s.get_ref().is_empty() {
                self.error(&s, "service must not be empty");
            }
            at(self.src, s)
        });
        match (kind, binary) {
            (Some(kind), Some(binary)) if self.diags.is_empty() => Ok(ProbeDef {
                file: self.src.path.to_path_buf(),
                pos: self.src.pos(start),
                name: at(self.src, raw.name),
                binary,
                kind,
                pid,
                service,
            }),
            _ => {
                if self.diags.is_empty() {
                    self.diags
                        .push(self.src.diag(start..start, "invalid probe"));
                }
                Err(self.diags)
            }
        }
    }

    /// An argument index 0..=MAX_PROBE_ARG.
    fn arg_index(&mut self, value: &Spanned<i64>, key: &str) -> Option<u8> {
        match u8::try_from(*value.get_ref()) {
            Ok(n) if n <= MAX_PROBE_ARG => Some(n),
            _ => {
                self.error(
                    value,
                    format!(
                        "{key} must be an argument index 0-{MAX_PROBE_ARG} (the first six \
                         integer or pointer arguments)"
                    ),
                );
                None
            }
        }
    }

    /// The probe of a function of the application's own.
    fn function(&mut self, raw: &RawProbe, start: usize) -> Option<ProbeKind> {
        let symbol = match &raw.symbol {
            Some(s) if s.get_ref().is_empty() => {
                self.error(s, "symbol must not be empty");
                None
            }
            Some(s) => Some(at(self.src, s.clone())),
            None => {
                self.diags.push(self.src.diag(
                    start..start,
                    "a probe needs symbol (the function to probe) or a preset",
                ));
                None
            }
        };
        let message_arg = match &raw.message_arg {
            Some(m) => self.arg_index(m, "message_arg"),
            None => {
                self.diags.push(self.src.diag(
                    start..start,
                    "a probe needs message_arg (the index of the function's `char *` message \
                     argument)",
                ));
                None
            }
        };
        let severity = match (&raw.severity_arg, &raw.severity) {
            (Some(_), Some(c)) => {
                self.error(c, "give severity_arg or a constant severity, not both");
                None
            }
            (Some(index), None) => {
                let index = self.arg_index(index, "severity_arg");
                if let (Some(i), Some(m)) = (index, message_arg)
                    && i == m
                    && let Some(a) = &raw.severity_arg
                {
                    self.error(a, "severity_arg and message_arg are the same argument");
                }
                let map = match &raw.severity_map {
                    None => Some(SeverityMap::Otlp),
                    Some(m) => self.severity_map(m),
                };
                Some(SeveritySource::Arg {
                    index: index?,
                    map: map?,
                })
            }
            (None, constant) => {
                if let Some(m) = &raw.severity_map {
                    self.error(m, "severity_map needs severity_arg");
                }
                match constant {
                    None => Some(SeveritySource::Const(0)),
                    Some(c) => {
                        let n = match c.get_ref() {
                            RawSeverity::Text(t) => severity::single_number(t),
                            RawSeverity::Number(n) => severity::number(*n),
                        };
                        match n {
                            Ok(n) => Some(SeveritySource::Const(n)),
                            Err(e) => {
                                self.error(c, e);
                                None
                            }
                        }
                    }
                }
            }
        };
        Some(ProbeKind::Function {
            symbol: symbol?,
            severity: severity?,
            message_arg: message_arg?,
        })
    }

    fn severity_map(&mut self, raw: &Spanned<RawSeverityMap>) -> Option<SeverityMap> {
        match raw.get_ref() {
            RawSeverityMap::Preset(name) => match name.as_str() {
                "otlp" => Some(SeverityMap::Otlp),
                "syslog" => Some(SeverityMap::Syslog),
                other => {
                    self.error(
                        raw,
                        format!(
                            "unknown severity_map \"{other}\": expected \"otlp\", \"syslog\" or \
                             a table such as {{ 0 = \"DEBUG\", 1 = \"INFO\" }}"
                        ),
                    );
                    None
                }
            },
            RawSeverityMap::Table(pairs) => {
                if pairs.is_empty() {
                    self.error(raw, "severity_map must not be empty");
                    return None;
                }
                if pairs.len() > MAX_SEV_PAIRS {
                    self.error(
                        raw,
                        format!(
                            "severity_map has {} values; the limit is {MAX_SEV_PAIRS}",
                            pairs.len()
                        ),
                    );
                    return None;
                }
                let mut out = Vec::new();
                let mut ok = true;
                for (key, value) in pairs {
                    let k = match key.get_ref().trim().parse::<i32>() {
                        Ok(k) => Some(k),
                        Err(_) => {
                            self.error(
                                key,
                                format!(
                                    "severity_map key \"{}\" is not an integer (a 32-bit \
                                     argument value)",
                                    key.get_ref()
                                ),
                            );
                            None
                        }
                    };
                    let v = match value.get_ref() {
                        RawSeverity::Text(t) => severity::single_number(t),
                        RawSeverity::Number(n) => severity::number(*n),
                    };
                    let v = match v {
                        Ok(v) => Some(v),
                        Err(e) => {
                            self.error(value, e);
                            None
                        }
                    };
                    match (k, v) {
                        (Some(k), Some(v)) => out.push((k, v)),
                        _ => ok = false,
                    }
                }
                out.sort_by_key(|(k, _)| *k);
                if out.windows(2).any(|w| w[0].0 == w[1].0) {
                    self.error(raw, "severity_map lists an argument value twice");
                    ok = false;
                }
                ok.then_some(SeverityMap::Table(out))
            }
        }
    }
}
