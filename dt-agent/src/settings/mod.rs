//! The run settings, in one place: two [`Layer`]s (the config file, `file`, and the `run` flags),
//! every default (the constants below) and every validator (`check`), merged by [`resolve`]
//! into [`Settings`]: flags win over the file, and the file over the defaults. The other verbs
//! find the agent's socket and pin directory with [`locate`].
//!
//! Relative paths in the file are relative to the file's directory; relative paths given as
//! flags are relative to the working directory, as usual. The README's "The config file" lists
//! the keys.

mod check;
mod file;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use dt_ebpf_common::DEFAULT_MAX_REQUEST;

pub use check::{
    check_capture_endpoint, check_loopback, check_max_request, check_metrics_port,
    check_opamp_endpoint, check_otlp_endpoint, check_ports, format_ppm, parse_cpu_share,
    parse_duration, parse_max_request, parse_memory, parse_metrics_addr,
};
pub use file::{Locations, load, load_optional, locations_optional, parse};

use crate::rules::Diagnostic;

/// The config file `run` reads when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/dt/agent.toml";
/// The rules directory when neither the flag nor the file names one, if it is a directory.
pub const DEFAULT_RULES_DIR: &str = "/etc/dt/rules";
/// The rules directory when [`DEFAULT_RULES_DIR`] is not a directory (relative to the working
/// directory).
pub const FALLBACK_RULES_DIR: &str = "rules";
/// The OTLP/HTTP port hooked when neither the flags nor the file list any.
pub const DEFAULT_PORT: u16 = 4318;
/// Where pinned programs and maps live (on bpffs), each map layout in a directory of its own
/// below it (`v<LAYOUT_VERSION>`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dt";
/// The control socket of the other verbs.
pub const DEFAULT_SOCKET: &str = "/run/dt/agent.sock";
/// The OTLP metrics push interval.
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(10);
/// Where the agent keeps state across restarts (the OpAMP instance id, the last remote config).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dt";
/// How often the OpAMP client polls its server (the spec's default).
pub const DEFAULT_OPAMP_POLL: Duration = Duration::from_secs(30);
/// The cost ceiling's measuring window.
pub const DEFAULT_CEILING_WINDOW: Duration = Duration::from_secs(10);

/// One layer of settings, every value optional: the config file's keys ([`parse`], every value
/// validated, relative paths made relative to the file's directory) or the flags of `dt-agent
/// run` (its clap arguments but `--config`, `--pin` and `--no-pin`). `None` (or an empty
/// `ports`) means "not given", so the layer below or the default applies; [`resolve`] stacks
/// them. `--port` flags, when given, replace the file's `ports`; they do not add to them. `pin`
/// is `Some(true)` for `--pin` (`pin = true`), `Some(false)` for `--no-pin`. The doc comments
/// of the fields are the flags' help; the README's "The config file" lists the keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct Layer {
    /// Rules directory [default: /etc/dt/rules when it exists, else ./rules].
    #[arg(long = "rules", value_name = "DIR", display_order = 1)]
    pub rules_dir: Option<PathBuf>,
    /// OTLP/HTTP port to hook; repeat for several [default: 4318].
    #[arg(long = "port", value_name = "N", display_order = 3, value_parser = check::parse_port)]
    pub ports: Vec<u16>,
    /// cgroup v2 directory whose connections are hooked [default: the v2 root].
    #[arg(long, value_name = "PATH", display_order = 4)]
    pub cgroup: Option<PathBuf>,
    /// Control socket [default: /run/dt/agent.sock].
    #[arg(long, value_name = "PATH", display_order = 5)]
    pub socket: Option<PathBuf>,
    #[arg(skip)]
    pub pin: Option<bool>,
    /// Where pins go [default: /sys/fs/bpf/dt].
    #[arg(long, value_name = "PATH", display_order = 8)]
    pub pin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464); loopback only unless
    /// --metrics-public.
    #[arg(long, value_name = "ADDR", display_order = 9, value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow --metrics-addr on a non-loopback address (e.g. 0.0.0.0:9464 for a cluster's scraper).
    #[arg(long, display_order = 9)]
    pub metrics_public: bool,
    /// Where the file sets each of its keys that [`resolve`] checks against others
    /// (`"ceiling.window"` -> `file:line:column`), for its errors to name.
    #[arg(skip)]
    pub at: BTreeMap<&'static str, String>,
    /// `[opamp] headers`: sent with every message to the OpAMP server (the file only: a flag
    /// would show a token in `ps`).
    #[arg(skip)]
    pub opamp_headers: Headers,
    /// After `dt-agent uninstall`, stay up (control socket and metrics endpoint answering) until
    /// SIGTERM instead of exiting: for supervisors that restart an agent that exits, such as a
    /// Kubernetes DaemonSet, which would attach dt again.
    #[arg(long, display_order = 21)]
    pub idle_after_uninstall: bool,
    /// Let the uprobe program fault in a message's page the calling process has not touched
    /// yet (kernel 6.0 on), so a program's first log calls are read too. Off by default: a
    /// page that never comes (a hung network or FUSE file system) holds the call, and every
    /// uprobe detach of the host, until it does.
    #[arg(long, display_order = 22)]
    pub uprobe_fault_in: bool,
    /// Push OTLP metrics to this URL (e.g. http://127.0.0.1:4318/v1/metrics).
    #[arg(long, value_name = "URL", display_order = 10)]
    pub otlp_endpoint: Option<String>,
    /// How often to push OTLP metrics (e.g. 10s) [default: 10s].
    #[arg(long, value_name = "DURATION", display_order = 11, value_parser = parse_duration)]
    pub otlp_interval: Option<Duration>,
    /// Requests (head + body) longer than this pass through untouched, counted `oversize`
    /// (bytes, or e.g. 256KiB).
    #[arg(long, value_name = "BYTES", display_order = 12, value_parser = parse_max_request)]
    pub max_request: Option<u32>,
    /// Post captured uprobe calls as OTLP logs to this URL (e.g. http://127.0.0.1:4318/v1/logs).
    #[arg(long, value_name = "URL", display_order = 13)]
    pub capture_endpoint: Option<String>,
    /// Where state is kept across restarts [default: /var/lib/dt].
    #[arg(long, value_name = "DIR", display_order = 14)]
    pub state_dir: Option<PathBuf>,
    /// Take remote rule files from this OpAMP server (http:// or https://), e.g.
    /// https://opamp.example:4320/v1/opamp (`[opamp] endpoint` in the file).
    #[arg(long, value_name = "URL", display_order = 15)]
    pub opamp_endpoint: Option<String>,
    /// How often to poll the OpAMP server [default: 30s] (`[opamp] poll_interval`).
    #[arg(long, value_name = "DURATION", display_order = 16, value_parser = parse_duration)]
    pub opamp_poll_interval: Option<Duration>,
    /// CA certificates (PEM) to check an https:// OpAMP server against, instead of the
    /// system's (`[opamp] ca_file`).
    #[arg(long, value_name = "FILE", display_order = 16)]
    pub opamp_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) to present to an https:// OpAMP server that asks for one
    /// (`[opamp] client_cert`; with --opamp-client-key).
    #[arg(long, value_name = "FILE", display_order = 16)]
    pub opamp_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM) (`[opamp] client_key`).
    #[arg(long, value_name = "FILE", display_order = 16)]
    pub opamp_client_key: Option<PathBuf>,
    /// CPU ceiling of dt's kernel programs, as a share of all CPUs (e.g. 2% or 0.5%): over it,
    /// dt pulls its own rip cord (`[ceiling] cpu`).
    #[arg(long, value_name = "PERCENT", display_order = 17, value_parser = parse_cpu_share)]
    pub ceiling_cpu: Option<u64>,
    /// The window the CPU ceiling is measured over [default: 10s] (`[ceiling] window`).
    #[arg(long, value_name = "DURATION", display_order = 18, value_parser = parse_duration)]
    pub ceiling_window: Option<Duration>,
    /// Kernel memory dt's maps may take, recorders included (e.g. 256MiB): a rule set whose
    /// recorders would go over it is refused (`[ceiling] memory`).
    #[arg(long, value_name = "SIZE", display_order = 19, value_parser = parse_memory)]
    pub ceiling_memory: Option<u64>,
    /// Captured uprobe calls exported per second, at most; the rest are counted
    /// `capture_throttled` (`[ceiling] captures_per_second`).
    #[arg(long, value_name = "N", display_order = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ceiling_captures: Option<u64>,
}

/// `[ceiling]`: the cost ceilings. Over the CPU one, dt pulls its own rip cord; the memory one
/// refuses rule sets whose recorders would not fit; over the captures one, captured calls are
/// counted and not exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CeilingSettings {
    /// The CPU time of dt's kernel programs allowed, in millionths of all CPUs' time.
    pub cpu_ppm: Option<u64>,
    /// How long each CPU measurement is.
    pub window: Duration,
    /// Bytes of kernel memory of dt's maps, recorders included.
    pub memory: Option<u64>,
    /// Captured calls exported per second.
    pub captures_per_second: Option<u64>,
}

/// `[opamp] headers`: name and value of each. Shown (`{:?}`) with the names only: the values
/// are tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, _)| (name, "(not shown)")))
            .finish()
    }
}

/// `[opamp]`: the OpAMP server the agent takes remote rule files from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpampSettings {
    /// `http://` or `https://` URL of the server's OpAMP endpoint.
    pub endpoint: String,
    /// Headers sent with every message (`[opamp] headers`), such as `Authorization`.
    pub headers: Headers,
    pub poll_interval: Duration,
    /// For an `https://` endpoint: what the server is checked against, and the client
    /// certificate, if any.
    pub tls: OpampTls,
}

/// `[opamp] ca_file`, `client_cert` and `client_key`: only for an `https://` endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpampTls {
    /// CA certificates (PEM) instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and private key (PEM), presented when the server asks.
    pub client: Option<(PathBuf, PathBuf)>,
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
    /// `metrics_addr` may be a non-loopback address.
    pub metrics_public: bool,
    /// After `uninstall`, wait for SIGTERM instead of exiting.
    pub idle_after_uninstall: bool,
    /// The uprobe program may fault message pages in.
    pub uprobe_fault_in: bool,
    /// `None`: no OTLP metrics push.
    pub otlp_endpoint: Option<String>,
    pub otlp_interval: Duration,
    pub max_request: u32,
    /// `None`: capture rules are refused.
    pub capture_endpoint: Option<String>,
    pub state_dir: PathBuf,
    /// `None`: no OpAMP client, and no remote rule files.
    pub opamp: Option<OpampSettings>,
    /// `None`: no cost ceiling (and nothing measured).
    pub ceiling: Option<CeilingSettings>,
}

/// Merges the flags, the file and the defaults (in that order of precedence) and checks the
/// result. Every problem is reported, one a line, each naming the flag or the file's key (at its
/// position) at fault.
pub fn resolve(file: Option<Layer>, flags: Layer) -> Result<Settings, String> {
    let file = file.unwrap_or_default();
    let mut errors = Vec::new();
    // How an error names a setting: the flag, when the flags gave it, else the file's key at its
    // position.
    let name = |key: &str, flag: &str, from_flag: bool| -> String {
        match (from_flag, file.at.get(key)) {
            (true, _) => flag.to_string(),
            (false, Some(at)) => format!("{at}: `{key}`"),
            (false, None) => key.to_string(),
        }
    };
    let ports = if !flags.ports.is_empty() {
        check_ports("--port", &flags.ports).unwrap_or_else(|e| errors.push(e));
        flags.ports
    } else if !file.ports.is_empty() {
        check_ports("ports", &file.ports).unwrap_or_else(|e| errors.push(e));
        file.ports.clone()
    } else {
        vec![DEFAULT_PORT]
    };
    let (max_request, key) = match (flags.max_request, file.max_request) {
        (Some(n), _) => (n, "--max-request"),
        (None, Some(n)) => (n, "max_request"),
        (None, None) => (DEFAULT_MAX_REQUEST, "max_request"),
    };
    check_max_request(max_request).unwrap_or_else(|e| errors.push(format!("{key}: {e}")));
    let metrics_addr = flags.metrics_addr.or(file.metrics_addr);
    let metrics_public = flags.metrics_public || file.metrics_public;
    if let Some(addr) = metrics_addr {
        let checked = if metrics_public {
            check_metrics_port(addr)
        } else {
            check_loopback(addr)
        };
        if let Err(e) = checked {
            let key = name(
                "metrics_addr",
                "--metrics-addr",
                flags.metrics_addr.is_some(),
            );
            errors.push(format!("{key}: {e}"));
        }
    }
    let (otlp_endpoint, key) = match (flags.otlp_endpoint, file.otlp_endpoint.clone()) {
        (Some(u), _) => (Some(u), "--otlp-endpoint"),
        (None, u) => (u, "otlp_endpoint"),
    };
    if let Some(url) = &otlp_endpoint {
        check_otlp_endpoint(url).unwrap_or_else(|e| errors.push(format!("{key}: {e}")));
    }
    let (otlp_interval, key) = match (flags.otlp_interval, file.otlp_interval) {
        (Some(d), _) => (d, "--otlp-interval"),
        (None, Some(d)) => (d, "otlp_interval"),
        (None, None) => (DEFAULT_OTLP_INTERVAL, "otlp_interval"),
    };
    if otlp_interval.is_zero() {
        errors.push(format!("{key}: the interval must be greater than zero"));
    }
    let (capture_endpoint, key) = match (flags.capture_endpoint, file.capture_endpoint.clone()) {
        (Some(u), _) => (Some(u), "--capture-endpoint"),
        (None, u) => (u, "capture_endpoint"),
    };
    if let Some(url) = &capture_endpoint {
        check_capture_endpoint(url).unwrap_or_else(|e| errors.push(format!("{key}: {e}")));
    }
    let endpoint_flag = flags.opamp_endpoint.is_some();
    let opamp_endpoint = flags.opamp_endpoint.or(file.opamp_endpoint.clone());
    let poll_flag = flags.opamp_poll_interval.is_some();
    let poll_interval = flags.opamp_poll_interval.or(file.opamp_poll_interval);
    let ca_flag = flags.opamp_ca_file.is_some();
    let ca_file = flags.opamp_ca_file.or(file.opamp_ca_file.clone());
    let (cert_flag, key_flag) = (
        flags.opamp_client_cert.is_some(),
        flags.opamp_client_key.is_some(),
    );
    let cert = flags.opamp_client_cert.or(file.opamp_client_cert.clone());
    let key = flags.opamp_client_key.or(file.opamp_client_key.clone());
    // The first OpAMP setting given besides the endpoint, for an error about them (a
    // certificate without its key is one too).
    let first_tls = if ca_file.is_some() {
        Some(name("opamp.ca_file", "--opamp-ca-file", ca_flag))
    } else if cert.is_some() {
        Some(name("opamp.client_cert", "--opamp-client-cert", cert_flag))
    } else if key.is_some() {
        Some(name("opamp.client_key", "--opamp-client-key", key_flag))
    } else {
        None
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            let at = name("opamp.client_cert", "--opamp-client-cert", cert_flag);
            errors.push(format!(
                "{at}: an OpAMP client certificate is given without its key \
                 (`[opamp] client_key` or --opamp-client-key)"
            ));
            None
        }
        (None, Some(_)) => {
            let at = name("opamp.client_key", "--opamp-client-key", key_flag);
            errors.push(format!(
                "{at}: an OpAMP client key is given without its certificate \
                 (`[opamp] client_cert` or --opamp-client-cert)"
            ));
            None
        }
    };
    let tls = OpampTls { ca_file, client };
    let opamp = match opamp_endpoint {
        Some(endpoint) => {
            let key = name("opamp.endpoint", "--opamp-endpoint", endpoint_flag);
            check_opamp_endpoint(&endpoint).unwrap_or_else(|e| errors.push(format!("{key}: {e}")));
            let https = check::after_scheme(&endpoint, "https://").is_some();
            if let Some(first) = first_tls.filter(|_| !https) {
                errors.push(format!(
                    "{first}: the OpAMP endpoint {endpoint} ({key}) is not https://, so an \
                     OpAMP CA file or client certificate has no use: make it https:// or \
                     remove them"
                ));
            }
            Some(OpampSettings {
                endpoint,
                headers: file.opamp_headers.clone(),
                poll_interval: poll_interval.unwrap_or(DEFAULT_OPAMP_POLL),
                tls,
            })
        }
        None => {
            let first = match poll_interval {
                Some(_) => Some(name(
                    "opamp.poll_interval",
                    "--opamp-poll-interval",
                    poll_flag,
                )),
                None => first_tls.or_else(|| {
                    (!file.opamp_headers.0.is_empty())
                        .then(|| name("opamp.headers", "opamp.headers", false))
                }),
            };
            if let Some(first) = first {
                errors.push(format!(
                    "{first}: OpAMP settings are given without an OpAMP endpoint \
                     (`[opamp] endpoint` or --opamp-endpoint)"
                ));
            }
            None
        }
    };
    let window_key = name(
        "ceiling.window",
        "--ceiling-window",
        flags.ceiling_window.is_some(),
    );
    let window = flags.ceiling_window.or(file.ceiling_window);
    let cpu_ppm = flags.ceiling_cpu.or(file.ceiling_cpu);
    let memory = flags.ceiling_memory.or(file.ceiling_memory);
    let captures_per_second = flags.ceiling_captures.or(file.ceiling_captures);
    if window.is_some() && cpu_ppm.is_none() {
        errors.push(format!(
            "{window_key}: a ceiling window is given without a CPU ceiling \
             (`[ceiling] cpu` or --ceiling-cpu)"
        ));
    }
    let window = window.unwrap_or(DEFAULT_CEILING_WINDOW);
    if window < Duration::from_millis(100) {
        errors.push(format!(
            "{window_key}: {window:?} is too short; at least 100ms (the CPU time is read once \
             a window)"
        ));
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    let any = cpu_ppm.is_some() || memory.is_some() || captures_per_second.is_some();
    let ceiling = any.then_some(CeilingSettings {
        cpu_ppm,
        window,
        memory,
        captures_per_second,
    });
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
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        pin: flags.pin.or(file.pin).unwrap_or(false),
        pin_dir: flags
            .pin_dir
            .or(file.pin_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
        metrics_addr,
        metrics_public,
        idle_after_uninstall: flags.idle_after_uninstall || file.idle_after_uninstall,
        uprobe_fault_in: flags.uprobe_fault_in || file.uprobe_fault_in,
        otlp_endpoint,
        otlp_interval,
        max_request,
        capture_endpoint,
        state_dir: flags
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        opamp,
        ceiling,
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

/// Where the verbs other than `run` find the agent: its control socket and its pin root, from
/// the flags, else the config file, else the defaults.
pub fn locate(
    socket: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    file: Option<&Layer>,
) -> (PathBuf, PathBuf) {
    let socket = socket
        .or_else(|| file.and_then(|f| f.socket.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let pins = pin_dir
        .or_else(|| file.and_then(|f| f.pin_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    (socket, pins)
}

/// Every problem [`resolve`] found, one a line: the settings `run` was refused.
#[derive(Debug)]
pub struct SettingsErrors(pub String);

impl std::fmt::Display for SettingsErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsErrors {}

/// Every problem of a config file that was refused, as `file:line:column: message` lines.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The config file at fault (every diagnostic names the same one).
    pub fn file(&self) -> Option<&Path> {
        self.0.first().map(|d| d.file.as_path())
    }
}
