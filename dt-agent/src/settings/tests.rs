//! The config file, the flags and their merge.

use super::*;
use dt_ebpf_common::MAX_REQUEST_CEILING;

fn parse_str(text: &str) -> Result<Layer, Vec<Diagnostic>> {
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
        metrics_public: false,
        idle_after_uninstall: false,
        uprobe_fault_in: false,
        state_dir: PathBuf::from("/var/lib/dt"),
        opamp: None,
        ceiling: None,
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
metrics_public = true
idle_after_uninstall = true
uprobe_fault_in = true
state_dir = "/srv/dt/state"

[opamp]
endpoint = "http://opamp.example:4320/v1/opamp"
poll_interval = "5s"
headers = { Authorization = "Bearer abc", "X-Scope-OrgID" = "tenant 1" }

[ceiling]
cpu = "0.5%"
window = "2s"
memory = "64MiB"
captures_per_second = 500
"#;

#[test]
fn defaults_with_no_file() {
    assert_eq!(resolve(None, Layer::default()).unwrap(), defaults());
    let empty = parse_str("# nothing set\n").unwrap();
    assert_eq!(empty, Layer::default());
    assert_eq!(resolve(Some(empty), Layer::default()).unwrap(), defaults());
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
        Layer {
            rules_dir: Some("/srv/dt/rules".into()),
            ports: vec![4318, 14318],
            cgroup: Some("/sys/fs/cgroup/otel.slice".into()),
            socket: Some("/run/dt/other.sock".into()),
            pin: Some(true),
            pin_dir: Some("/sys/fs/bpf/dt2".into()),
            metrics_addr: Some("127.0.0.1:9464".parse().unwrap()),
            otlp_endpoint: Some("http://127.0.0.1:4318/v1/metrics".into()),
            otlp_interval: Some(Duration::from_secs(90)),
            max_request: Some(131072),
            capture_endpoint: Some("http://127.0.0.1:4318/v1/logs".into()),
            metrics_public: true,
            at: [
                ("metrics_addr", "8:16"),
                ("opamp.endpoint", "19:12"),
                ("opamp.poll_interval", "20:17"),
                ("opamp.headers", "21:13"),
                ("ceiling.window", "25:10"),
            ]
            .map(|(key, at)| (key, format!("/etc/dt/agent.toml:{at}")))
            .into(),
            idle_after_uninstall: true,
            uprobe_fault_in: true,
            state_dir: Some("/srv/dt/state".into()),
            opamp_endpoint: Some("http://opamp.example:4320/v1/opamp".into()),
            opamp_poll_interval: Some(Duration::from_secs(5)),
            opamp_ca_file: None,
            opamp_client_cert: None,
            opamp_client_key: None,
            opamp_headers: Headers(vec![
                ("Authorization".into(), "Bearer abc".into()),
                ("X-Scope-OrgID".into(), "tenant 1".into()),
            ]),
            ceiling_cpu: Some(5000),
            ceiling_window: Some(Duration::from_secs(2)),
            ceiling_memory: Some(64 << 20),
            ceiling_captures: Some(500),
        }
    );
    let settings = resolve(Some(file), Layer::default()).unwrap();
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
            metrics_public: true,
            idle_after_uninstall: true,
            uprobe_fault_in: true,
            state_dir: "/srv/dt/state".into(),
            opamp: Some(OpampSettings {
                endpoint: "http://opamp.example:4320/v1/opamp".into(),
                headers: Headers(vec![
                    ("Authorization".into(), "Bearer abc".into()),
                    ("X-Scope-OrgID".into(), "tenant 1".into()),
                ]),
                poll_interval: Duration::from_secs(5),
                tls: OpampTls::default(),
            }),
            ceiling: Some(CeilingSettings {
                cpu_ppm: Some(5000),
                window: Duration::from_secs(2),
                memory: Some(64 << 20),
                captures_per_second: Some(500),
            }),
        }
    );
}

#[test]
fn the_example_config_parses_to_the_defaults() {
    let text = include_str!("../../../dist/agent.toml");
    let file = parse_str(text).unwrap();
    assert_eq!(file, Layer::default(), "every key is commented out");
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
    assert_eq!(resolve(Some(file), Layer::default()).unwrap(), expect);
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
    let flags = Layer {
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
        metrics_public: false,
        at: Default::default(),
        idle_after_uninstall: false,
        uprobe_fault_in: false,
        state_dir: Some("/tmp/state".into()),
        opamp_endpoint: Some("http://127.0.0.1:4320/v1/opamp".into()),
        opamp_poll_interval: None,
        opamp_ca_file: None,
        opamp_client_cert: None,
        opamp_client_key: None,
        opamp_headers: Headers::default(),
        ceiling_cpu: Some(20000),
        ceiling_window: None,
        ceiling_memory: None,
        ceiling_captures: Some(10),
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
            // `metrics_public` is on when either layer says so.
            metrics_public: true,
            idle_after_uninstall: true,
            // On when either layer says so (the file does).
            uprobe_fault_in: true,
            state_dir: "/tmp/state".into(),
            // The flag's endpoint, the file's interval.
            opamp: Some(OpampSettings {
                endpoint: "http://127.0.0.1:4320/v1/opamp".into(),
                // The file's headers (no flag sets them).
                headers: Headers(vec![
                    ("Authorization".into(), "Bearer abc".into()),
                    ("X-Scope-OrgID".into(), "tenant 1".into()),
                ]),
                poll_interval: Duration::from_secs(5),
                tls: OpampTls::default(),
            }),
            // The flag's share, the file's window.
            ceiling: Some(CeilingSettings {
                cpu_ppm: Some(20000),
                window: Duration::from_secs(2),
                memory: Some(64 << 20),
                captures_per_second: Some(10),
            }),
        }
    );
    // `--pin` over a file that says nothing, and `--no-pin` over `pin = true`.
    let pin = |flag, file: Option<Layer>| {
        resolve(
            file,
            Layer {
                pin: flag,
                ..Layer::default()
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
        Layer {
            socket: Some("/tmp/x".into()),
            ..Layer::default()
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
        "2:3: unknown key `max_requets` (did you mean `max_request`?); the keys here are `rules_dir`, `ports`, `cgroup`, \
         `socket`, `pin`, `pin_dir`, `metrics_addr`, `otlp_endpoint`, `otlp_interval`, \
         `max_request`, `capture_endpoint`, `metrics_public`, `idle_after_uninstall`, `uprobe_fault_in`, `state_dir`, `opamp`, `ceiling`"
    );
    let e = error("ports = [4318]\n\n[rules]\ndir = \"x\"\n");
    assert!(e.starts_with("3:2: unknown key `rules`"), "{e}");
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
        "1:7: `pin`: expected true or false (without quotes), found the string \"yes\""
    );
    let e = error("ports = 4318\n");
    assert!(e.starts_with("1:9: `ports`: expected a list"), "{e}");
    let e = error("ports = [\"4318\"]\n");
    assert!(
        e.starts_with("1:10: `ports`: expected a whole number"),
        "{e}"
    );
    let e = error("rules_dir = 5\n");
    assert!(
        e.starts_with("1:13: `rules_dir`: expected a string in quotes, found the number"),
        "{e}"
    );
    let e = error("pin = true\nmax_request = 1.5\n");
    assert!(
        e.starts_with(
            "2:15: `max_request`: expected an integer (bytes) or a size such as \"256KiB\""
        ),
        "{e}"
    );
    let e = error("otlp_interval = 10\n");
    assert!(
        e.starts_with("1:17: `otlp_interval`: expected a string in quotes, found the number"),
        "{e}"
    );
    let e = error("[metrics_addr]\nx = 1\n");
    assert!(
        e.contains("`metrics_addr`: expected a string in quotes, found a table"),
        "{e}"
    );
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
    let zero = Layer {
        otlp_interval: Some(Duration::ZERO),
        ..Layer::default()
    };
    assert!(
        resolve(None, zero)
            .unwrap_err()
            .starts_with("--otlp-interval:")
    );
}

#[test]
fn metrics_addr_must_be_loopback() {
    // Checked once the flags are known, at the file's position.
    let file = parse_str("\nmetrics_addr = \"0.0.0.0:9464\"\n").unwrap();
    let e = resolve(Some(file.clone()), Layer::default()).unwrap_err();
    assert!(
        e.starts_with(
            "/etc/dt/agent.toml:2:16: `metrics_addr`: 0.0.0.0:9464 is not a loopback address"
        ),
        "{e}"
    );
    // `--metrics-public` allows the file's address, as `metrics_public = true` would.
    let public = Layer {
        metrics_public: true,
        ..Layer::default()
    };
    let s = resolve(Some(file), public).unwrap();
    assert_eq!(s.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
    let e = error("metrics_addr = \"localhost:9464\"\n");
    assert!(
        e.starts_with("1:16: `metrics_addr`: `localhost:9464` is not a socket address"),
        "{e}"
    );
    // Any IP parses; loopback is checked unless metrics_public.
    assert!(check_loopback("10.0.0.1:9464".parse().unwrap()).is_err());
    assert!(check_loopback("[::]:9464".parse().unwrap()).is_err());
    assert!(parse_metrics_addr("0.0.0.0:9464").is_ok());
    assert!(parse_metrics_addr("127.0.0.1:0").is_err());
    assert!(parse_metrics_addr("127.0.0.1").is_err());
    assert!(parse_metrics_addr("127.0.0.2:9464").is_ok());
    assert!(parse_metrics_addr("[::1]:9464").is_ok());
    assert!(parse_metrics_addr("[::ffff:127.0.0.1]:9464").is_ok());
    let flags = Layer {
        metrics_addr: Some("192.168.1.1:9464".parse().unwrap()),
        ..Layer::default()
    };
    assert!(
        resolve(None, flags)
            .unwrap_err()
            .starts_with("--metrics-addr:")
    );
    let file = Layer {
        metrics_addr: Some("192.168.1.1:9464".parse().unwrap()),
        ..Layer::default()
    };
    let e = resolve(Some(file.clone()), Layer::default()).unwrap_err();
    assert!(e.starts_with("metrics_addr:"), "{e}");
    assert!(e.contains("metrics_public = true"), "{e}");
}

#[test]
fn metrics_public_allows_any_address() {
    let layer = parse_str("metrics_addr = \"0.0.0.0:9464\"\nmetrics_public = true\n").unwrap();
    let s = resolve(Some(layer), Layer::default()).unwrap();
    assert_eq!(s.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
    assert!(s.metrics_public);
    // The flag does it too.
    let s = resolve(
        None,
        Layer {
            metrics_addr: Some("[::]:9464".parse().unwrap()),
            metrics_public: true,
            ..Layer::default()
        },
    )
    .unwrap();
    assert!(s.metrics_public);
    let e = error("metrics_addr = \"0.0.0.0:0\"\nmetrics_public = true\n");
    assert!(e.contains("the port must not be 0"), "{e}");
}

#[test]
fn opamp_tls_files() {
    let layer = parse_str(
        "[opamp]\nendpoint = \"https://x/v1/opamp\"\nca_file = \"ca.pem\"\n\
         client_cert = \"/srv/agent.pem\"\nclient_key = \"keys/agent.key\"\n",
    )
    .unwrap();
    let s = resolve(Some(layer.clone()), Layer::default()).unwrap();
    // Relative paths are the config file's directory's.
    assert_eq!(
        s.opamp.unwrap().tls,
        OpampTls {
            ca_file: Some("/etc/dt/ca.pem".into()),
            client: Some(("/srv/agent.pem".into(), "/etc/dt/keys/agent.key".into())),
        }
    );
    // A flag replaces the file's one key.
    let flags = Layer {
        opamp_client_key: Some("/tmp/k.pem".into()),
        ..Layer::default()
    };
    let s = resolve(Some(layer), flags).unwrap();
    assert_eq!(
        s.opamp.unwrap().tls.client,
        Some(("/srv/agent.pem".into(), "/tmp/k.pem".into()))
    );
    // A certificate without its key, and the other way round.
    let layer =
        parse_str("[opamp]\nendpoint = \"https://x/v1/opamp\"\nclient_cert = \"/srv/agent.pem\"\n")
            .unwrap();
    let e = resolve(Some(layer), Layer::default()).unwrap_err();
    assert!(e.contains("without its key"), "{e}");
    let flags = Layer {
        opamp_endpoint: Some("https://x/v1/opamp".into()),
        opamp_client_key: Some("/tmp/k.pem".into()),
        ..Layer::default()
    };
    let e = resolve(None, flags).unwrap_err();
    assert!(e.contains("without its certificate"), "{e}");
    // Over http:// they would never be used.
    let layer = parse_str("[opamp]\nendpoint = \"http://x/v1/opamp\"\nca_file = \"/etc/ca.pem\"\n")
        .unwrap();
    let e = resolve(Some(layer), Layer::default()).unwrap_err();
    assert!(e.contains("is not https://"), "{e}");
    // Nor without an endpoint.
    let flags = Layer {
        opamp_ca_file: Some("/etc/ca.pem".into()),
        ..Layer::default()
    };
    let e = resolve(None, flags).unwrap_err();
    assert!(e.contains("without an OpAMP endpoint"), "{e}");
    let e = error("[opamp]\nendpoint = \"https://x/v1/opamp\"\nca_file = \"\"\n");
    assert!(
        e.starts_with("3:11: `opamp.ca_file` must not be empty"),
        "{e}"
    );
}

#[test]
fn opamp_table() {
    let e = error("[opamp]\nendpoint = \"opamp.example/v1/opamp\"\n");
    assert!(
        e.starts_with(
            "2:12: `opamp.endpoint`: `opamp.example/v1/opamp` is not an http:// or https:// URL"
        ),
        "{e}"
    );
    let layer = parse_str("[opamp]\nendpoint = \"https://x/v1/opamp\"\n").unwrap();
    let s = resolve(Some(layer), Layer::default()).unwrap();
    assert_eq!(s.opamp.unwrap().endpoint, "https://x/v1/opamp");
    let e = error("[opamp]\nendpoint = \"http://x/v1/opamp\"\npoll = \"1s\"\n");
    assert!(e.starts_with("3:1: unknown key `poll`"), "{e}");
    let e = error("[opamp]\nendpoint = \"http://x/v1/opamp\"\npoll_interval = \"0s\"\n");
    assert!(e.starts_with("3:17: `opamp.poll_interval`:"), "{e}");
    // The endpoint from the file or the flag, as [ceiling] cpu: a file without it is refused
    // only when no flag gives it.
    let layer = parse_str("[opamp]\npoll_interval = \"1s\"\n").unwrap();
    let e = resolve(Some(layer.clone()), Layer::default()).unwrap_err();
    assert!(e.contains("without an OpAMP endpoint"), "{e}");
    let flags = Layer {
        opamp_endpoint: Some("http://x:4320/v1/opamp".into()),
        ..Layer::default()
    };
    let s = resolve(Some(layer), flags).unwrap();
    let o = s.opamp.unwrap();
    assert_eq!(
        (o.endpoint.as_str(), o.poll_interval),
        ("http://x:4320/v1/opamp", Duration::from_secs(1))
    );
    // The default interval is the spec's 30 s.
    let layer = parse_str("[opamp]\nendpoint = \"http://x:4320/v1/opamp\"\n").unwrap();
    let s = resolve(Some(layer), Layer::default()).unwrap();
    assert_eq!(s.opamp.unwrap().poll_interval, Duration::from_secs(30));
    // An interval flag without an endpoint anywhere.
    let e = resolve(
        None,
        Layer {
            opamp_poll_interval: Some(Duration::from_secs(1)),
            ..Layer::default()
        },
    )
    .unwrap_err();
    assert!(e.contains("without an OpAMP endpoint"), "{e}");
}

#[test]
fn opamp_headers() {
    let ok = parse_str(
        "[opamp]\nendpoint = \"https://o/v1/opamp\"\n[opamp.headers]\nAuthorization = \"Basic eDp5\"\n",
    )
    .unwrap();
    let s = resolve(Some(ok), Layer::default()).unwrap();
    let headers = s.opamp.unwrap().headers;
    assert_eq!(
        headers.0,
        [("Authorization".to_string(), "Basic eDp5".to_string())]
    );
    // Debug output (should any log show the settings) does not show a token.
    assert_eq!(
        format!("{headers:?}"),
        r#"{"Authorization": "(not shown)"}"#
    );
    let file = parse_str("[opamp]\nheaders = { A = \"b\" }\n").unwrap();
    let e = resolve(Some(file), Layer::default()).unwrap_err();
    assert!(
        e.contains("2:13: `opamp.headers`: OpAMP settings are given without an OpAMP endpoint"),
        "{e}"
    );
    for (text, want) in [
        (
            "headers = { \"X Token\" = \"a\" }",
            "3:13: `X Token` is not a header name",
        ),
        (
            "headers = { \"Content-Type\" = \"a\" }",
            "3:13: `Content-Type` is a header the agent sets itself",
        ),
        (
            "headers = { opamp-instance-uid = \"a\" }",
            "3:13: `opamp-instance-uid` is a header the agent sets itself",
        ),
        (
            "headers = { X-Token = \"a\\r\\nHost: evil\" }",
            "3:23: the value of header `X-Token` holds '\\r'",
        ),
        ("headers = { X-Token = 1 }", "3:23: "),
        (
            "headers = { X-Token = \"a\", x-token = \"b\" }",
            "3:28: header `x-token` is given twice",
        ),
    ] {
        let e = error(&format!(
            "[opamp]\nendpoint = \"https://o/v1/opamp\"\n{text}\n"
        ));
        assert!(e.starts_with(want), "{text}: {e}");
    }
}

#[test]
fn otlp_endpoints() {
    let e = error("otlp_endpoint = \"127.0.0.1:4318\"\n");
    assert!(
        e.starts_with("1:17: `otlp_endpoint`: `127.0.0.1:4318` is not an http:// or https://"),
        "{e}"
    );
    assert!(check_otlp_endpoint("https://collector/v1/metrics").is_ok());
    assert!(check_otlp_endpoint("https:///v1/metrics").is_err());
    assert!(check_otlp_endpoint("ftp://collector/").is_err());
    let flags = Layer {
        otlp_endpoint: Some("ftp://collector/v1/metrics".into()),
        ..Layer::default()
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
    assert!(check_otlp_endpoint("http://[::1]:4318/v1/metrics").is_ok());
    assert!(check_otlp_endpoint("http://[::1]/v1/metrics").is_ok());
    assert!(check_otlp_endpoint("https://collector:443/v1/metrics").is_ok());
    // The scheme in any case, as RFC 3986 has it; the posts read it so too.
    for (url, tls) in [
        ("HTTP://collector:4318/v1/metrics", false),
        ("Https://collector/v1/metrics", true),
    ] {
        assert!(check_otlp_endpoint(url).is_ok(), "{url}");
        let t = crate::export::http::target(&url.parse().unwrap(), "test").unwrap();
        assert_eq!((t.tls, t.host.as_str()), (tls, "collector"), "{url}");
    }
    assert!(check_otlp_endpoint("HTTPX://collector/v1/metrics").is_err());
    // Found when the settings are read, not at the first post.
    for (url, want) in [
        (
            "http://127.0.0.1:43l8/v1/logs",
            "the port `43l8` is not a number in 1..=65535",
        ),
        (
            "http://127.0.0.1:99999/v1/metrics",
            "the port `99999` is not a number in 1..=65535",
        ),
        (
            "http://[::1]:0/v1/metrics",
            "the port `0` is not a number in 1..=65535",
        ),
        (
            "http://collector:/v1/metrics",
            "the port `` is not a number in 1..=65535",
        ),
        (
            "http://${OTEL_COLLECTOR_HOST}:4318/v1/metrics",
            "`$` in the host or port; the config file does not expand environment variables",
        ),
        (
            "http://127.0.0.1:4318",
            "has no path; the URL is used as given (no `/v1/metrics` is added), so write the \
             whole of it, e.g. \"http://127.0.0.1:4318/v1/metrics\"",
        ),
        (
            "http://127.0.0.1:4318/",
            "e.g. \"http://127.0.0.1:4318/v1/metrics\"",
        ),
        // The suggestion is the scheme and authority, not what follows them.
        ("http://h:4318?x=1", "e.g. \"http://h:4318/v1/metrics\""),
        (
            "http://$COLLECTOR:4318/v1/metrics",
            "`$` in the host or port; the config file does not expand environment variables",
        ),
        (
            "http://c:$PORT/v1/metrics",
            "`$` in the host or port; the config file does not expand environment variables",
        ),
        (
            "https://user:pw@collector/v1/metrics",
            "holds credentials (`user@`): they would not be sent",
        ),
    ] {
        let e = check_otlp_endpoint(url).unwrap_err();
        assert!(e.contains(want), "{url}: {e}");
    }
    let e = error("otlp_endpoint = \"http://127.0.0.1:99999/v1/metrics\"\n");
    assert!(e.starts_with("1:17: `otlp_endpoint`: "), "{e}");
    let e = error("capture_endpoint = \"http://127.0.0.1:4318\"\n");
    assert!(e.contains("e.g. \"http://127.0.0.1:4318/v1/logs\""), "{e}");
    // The URL is quoted as written.
    let e = check_capture_endpoint("http://c:99999/v1/metrics").unwrap_err();
    assert!(
        e.starts_with("`http://c:99999/v1/metrics`: the port"),
        "{e}"
    );
    let e = error("capture_endpoint = \"127.0.0.1:4318\"\n");
    assert!(
        e.starts_with(
            "1:20: `capture_endpoint`: `127.0.0.1:4318` is not an http:// or https:// URL, e.g. \
             \"http://127.0.0.1:4318/v1/logs\""
        ),
        "{e}"
    );
    let flags = Layer {
        capture_endpoint: Some("collector/v1/logs".into()),
        ..Layer::default()
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
    let flags = Layer {
        ports: vec![4318, 0],
        ..Layer::default()
    };
    assert!(
        resolve(None, flags)
            .unwrap_err()
            .starts_with("--port: 0 is not a port")
    );
    let file = Layer {
        ports: vec![0],
        ..Layer::default()
    };
    assert!(
        resolve(Some(file), Layer::default())
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
    let flags = Layer {
        max_request: Some(MAX_REQUEST_CEILING + 1),
        ..Layer::default()
    };
    assert!(
        resolve(None, flags)
            .unwrap_err()
            .starts_with("--max-request: 524289")
    );
}

#[test]
fn every_problem_is_reported_in_order() {
    let diags =
        parse_str("max_request = 0\nports = [0]\nmetrics_addr = \"8.8.8.8\"\nsocket = \"\"\n")
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
    // Bytes that are not UTF-8: at the first of them.
    std::fs::write(&path, b"pin = true\nrules_dir = \"r\xe9\"\n").unwrap();
    let diags = load(&path).unwrap_err();
    assert_eq!(
        diags[0].to_string(),
        format!(
            "{}:2:15: byte 0xE9 is not UTF-8: a config file is UTF-8 text (save it so)",
            path.display()
        )
    );
}

#[test]
fn cpu_shares() {
    assert_eq!(parse_cpu_share("2%"), Ok(20_000));
    assert_eq!(parse_cpu_share("0.5%"), Ok(5_000));
    assert_eq!(parse_cpu_share(".5%"), Ok(5_000));
    assert_eq!(parse_cpu_share("0.0001%"), Ok(1));
    assert_eq!(parse_cpu_share("100%"), Ok(1_000_000));
    for bad in [
        "2", "0%", "101%", "-1%", "1.00001%", "x%", "%", "1.2.3%", "",
    ] {
        assert!(parse_cpu_share(bad).is_err(), "{bad}");
    }
    assert_eq!(format_ppm(20_000), "2%");
    assert_eq!(format_ppm(5_000), "0.5%");
    assert_eq!(format_ppm(1), "0.0001%");
    assert_eq!(format_ppm(12_345), "1.2345%");
}

#[test]
fn ceiling_table() {
    let e = error("[ceiling]\ncpu = \"two\"\n");
    assert!(
        e.starts_with("2:7: `ceiling.cpu`: `two` is not a share"),
        "{e}"
    );
    let layer = parse_str("[ceiling]\nwindow = \"1s\"\n").unwrap();
    let e = resolve(Some(layer), Layer::default()).unwrap_err();
    assert!(
        e.starts_with("/etc/dt/agent.toml:2:10: `ceiling.window`: a ceiling window is given without a CPU ceiling"),
        "{e}"
    );
    let layer = parse_str("[ceiling]\ncpu = \"2%\"\n").unwrap();
    let s = resolve(Some(layer), Layer::default()).unwrap();
    assert_eq!(
        s.ceiling,
        Some(CeilingSettings {
            cpu_ppm: Some(20_000),
            window: Duration::from_secs(10),
            memory: None,
            captures_per_second: None,
        })
    );
    let e = error("[ceiling]\nmemory = \"12KiB\"\n");
    assert!(
        e.starts_with("2:10: `ceiling.memory`:") && e.contains("at least 1MiB"),
        "{e}"
    );
    let e = error("[ceiling]\ncaptures_per_second = 0\n");
    assert!(
        e.starts_with("2:23: `ceiling.captures_per_second`: 0"),
        "{e}"
    );
    let layer = parse_str("[ceiling]\ncpu = \"2%\"\nwindow = \"50ms\"\n").unwrap();
    let e = resolve(Some(layer), Layer::default()).unwrap_err();
    assert_eq!(
        e,
        "/etc/dt/agent.toml:3:10: `ceiling.window`: 50ms is too short; at least 100ms (the CPU \
         time is read once a window)"
    );
}

#[test]
fn every_problem_of_the_file_is_reported_in_one_run() {
    let diags = parse_str(
        "ports = \"4318\"\nmetrics_adr = \"x\"\npin = \"yes\"\n[opamp]\nendpoint = 5\n\
         [ceiling]\ncpu = 2\nwindw = \"10s\"\n",
    )
    .expect_err("the config must be refused");
    let e: Vec<String> = diags
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
        .collect();
    assert_eq!(e.len(), 7, "{e:#?}");
    let starts = [
        "1:9: `ports`: expected a list",
        "2:1: unknown key `metrics_adr` (did you mean `metrics_addr`?)",
        "2:15: `metrics_addr`: `x` is not a socket address",
        "3:7: `pin`: expected true or false",
        "5:12: `opamp.endpoint`: expected a string in quotes, found the number 5",
        "7:7: `ceiling.cpu`: expected a string in quotes, found the number 2",
        "8:1: unknown key `windw` (did you mean `window`?)",
    ];
    for (e, want) in e.iter().zip(starts) {
        assert!(e.starts_with(want), "{e} should start with {want}");
    }
    // A misspelt key is read as the one it was meant to be, its value checked.
    let diags =
        parse_str("pin = 1\n[ceiling]\ncpuu = \"200%\"\n").expect_err("the config must be refused");
    let e: Vec<String> = diags
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
        .collect();
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("1:7: `pin`: expected true or false"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("3:1: unknown key `cpuu` (did you mean `cpu`?)"),
        "{e:#?}"
    );
    assert!(e[2].starts_with("3:8: `ceiling.cpu`: "), "{e:#?}");
}

#[test]
fn the_max_request_flag_takes_bytes_or_a_size() {
    use super::check::parse_max_request;
    assert_eq!(parse_max_request("131072"), Ok(131072));
    assert_eq!(parse_max_request("256KiB"), Ok(262144));
    assert_eq!(
        parse_max_request("10k"),
        Err("`10k` is not a size: write bytes (262144) or KiB or MiB (\"256KiB\")".to_string())
    );
    assert!(
        parse_max_request("1MiB")
            .unwrap_err()
            .starts_with("1048576 is out of range")
    );
    assert!(
        parse_max_request("0")
            .unwrap_err()
            .starts_with("0 is out of range")
    );
    assert!(
        parse_max_request("-5")
            .unwrap_err()
            .starts_with("-5 is out of range")
    );
}

#[test]
fn problems_between_settings_are_all_reported_at_their_keys() {
    // Each problem that only shows once file and flags are stacked names the key at fault at
    // its line and column, and every one is reported in the same run.
    let layer = parse_str(
        "metrics_addr = \"0.0.0.0:9464\"\n[opamp]\npoll_interval = \"5s\"\n\
         client_cert = \"/srv/agent.pem\"\n[ceiling]\nwindow = \"1s\"\n",
    )
    .unwrap();
    let e = resolve(Some(layer.clone()), Layer::default()).unwrap_err();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 4, "{e}");
    assert!(
        lines[0]
            .starts_with("/etc/dt/agent.toml:1:16: `metrics_addr`: 0.0.0.0:9464 is not a loopback"),
        "{e}"
    );
    assert!(
        lines[1].starts_with(
            "/etc/dt/agent.toml:4:15: `opamp.client_cert`: an OpAMP client certificate is given \
             without its key"
        ),
        "{e}"
    );
    assert!(
        lines[2].starts_with(
            "/etc/dt/agent.toml:3:17: `opamp.poll_interval`: OpAMP settings are given without an \
             OpAMP endpoint"
        ),
        "{e}"
    );
    assert!(
        lines[3].starts_with("/etc/dt/agent.toml:6:10: `ceiling.window`: a ceiling window"),
        "{e}"
    );
    // A key without its certificate, and no endpoint: both said.
    let e = resolve(
        None,
        Layer {
            opamp_client_key: Some("/srv/agent.key".into()),
            ..Layer::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(
        e.contains("--opamp-client-key: an OpAMP client key is given without its certificate")
            && e.contains("--opamp-client-key: OpAMP settings are given without an OpAMP endpoint"),
        "{e}"
    );
    // A flag that settles a problem takes it away; one that makes it names the flag.
    let flags = Layer {
        metrics_public: true,
        opamp_endpoint: Some("http://x/v1/opamp".into()),
        opamp_client_key: Some("/srv/agent.key".into()),
        ceiling_cpu: Some(20_000),
        ..Layer::default()
    };
    let e = resolve(Some(layer), flags).unwrap_err();
    assert_eq!(
        e,
        "/etc/dt/agent.toml:4:15: `opamp.client_cert`: the OpAMP endpoint http://x/v1/opamp \
         (--opamp-endpoint) is not https://, so an OpAMP CA file or client certificate has no \
         use: make it https:// or remove them"
    );
}

#[test]
fn max_request_in_the_file_takes_bytes_or_a_size() {
    let s = |text: &str| parse_str(text).map(|l| l.max_request);
    assert_eq!(s("max_request = 524288\n").unwrap(), Some(524_288));
    assert_eq!(s("max_request = \"512KiB\"\n").unwrap(), Some(524_288));
    assert_eq!(s("max_request = \"64KiB\"\n").unwrap(), Some(65_536));
    let e = error("max_request = \"1MiB\"\n");
    assert!(e.starts_with("1:15: `max_request`: "), "{e}");
    assert!(e.contains("out of range"), "{e}");
    let e = error("max_request = \"lots\"\n");
    assert!(
        e.starts_with("1:15: `max_request`: `lots` is not a size"),
        "{e}"
    );
    let e = error("max_request = true\n");
    assert_eq!(
        e,
        "1:15: `max_request`: expected an integer (bytes) or a size such as \"256KiB\""
    );
}
