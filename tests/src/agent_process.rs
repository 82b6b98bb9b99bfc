//! `dt-agent run` as a child process, with its own control socket, pin directory, rules
//! directory and ports, and the other verbs pointed at it.
//!
//! Every [`AgentProcess`] gets a pin root of its own, `/sys/fs/bpf/dt-test-op-<name>-<pid>`, so
//! agents of tests running in parallel never share pinned state. Pin roots that earlier test
//! processes left behind (their pid is gone) are removed when a new one is made, and a dropped
//! `AgentProcess` kills its agent (SIGKILL) and removes its pins, so a failing test leaves
//! nothing attached.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dt_agent::Stats;
use dt_agent::control::{self, Request, RulesInfo};

/// The `dt-agent` binary, found (and checked for staleness) once per test process, so that
/// sources edited while the tests run do not fail a test halfway.
pub fn bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(crate::agent::agent_bin).clone()
}

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The prefix of every pin root this module makes under [`BPFFS`].
const PIN_PREFIX: &str = "dt-test-op-";
/// How long `dt-agent run` may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a verb (`push`, `stats`, ...) may take.
pub const VERB_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `dt-agent args...` to completion; kills it after `timeout` and panics. The wait is
/// exact (no polling), so the elapsed time of the call is the verb's run time.
pub fn dt_agent_cmd(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on our child, which is not reaped until wait_with_output returns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("wait dt-agent");
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    assert!(
        !timed_out,
        "{what} did not finish within {timeout:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `dt-agent args...` to completion (at most [`VERB_TIMEOUT`]).
pub fn dt_agent(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("RUST_LOG", "info");
    dt_agent_cmd(cmd, VERB_TIMEOUT, &format!("dt-agent {args:?}"))
}

/// stdout and stderr of a finished command, for messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A `dt-agent run` child process and everything it owns.
pub struct AgentProcess {
    name: String,
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    pin_root: PathBuf,
    rules_dir: PathBuf,
    ports: Vec<u16>,
    pin: bool,
    child: Option<Child>,
    /// Log file of each start, in order.
    logs: Vec<PathBuf>,
    /// Environment variables of the next starts.
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// An agent (not started yet) for `rules_dir`, hooking `ports`, pinning when `pin`.
    pub fn new(name: &str, rules_dir: &Path, ports: &[u16], pin: bool) -> AgentProcess {
        sweep_stale_pins();
        let dir = tempfile::Builder::new()
            .prefix("dt-op-")
            .tempdir()
            .expect("tempdir for the agent");
        let socket = dir.path().join("agent.sock");
        // An explicit empty config: a machine's /etc/dt/agent.toml must not leak into tests.
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "# dt-tests: everything comes from flags\n").expect("config");
        let pin_root = Path::new(BPFFS).join(format!("{PIN_PREFIX}{name}-{}", std::process::id()));
        remove_pin_root(&pin_root);
        AgentProcess {
            name: name.to_string(),
            dir,
            socket,
            config,
            pin_root,
            rules_dir: rules_dir.to_path_buf(),
            ports: ports.to_vec(),
            pin,
            child: None,
            logs: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Sets (or, with `None`, removes) an environment variable of the agent's next starts.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Replaces the agent's config file (used from its next start).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("config");
    }

    /// The directory holding the socket, the config and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pin root (`--pin-dir`); the pins themselves are under `<root>/v<layout>/`.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// `<pin root>/v<layout>`.
    pub fn pin_dir(&self) -> PathBuf {
        dt_agent::agent::pin_dir(&self.pin_root)
    }

    pub fn rules_dir(&self) -> &Path {
        &self.rules_dir
    }

    /// The arguments of `dt-agent run` for this agent.
    pub fn run_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--rules".into(),
            self.rules_dir.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--pin-dir".into(),
            self.pin_root.display().to_string(),
            if self.pin { "--pin" } else { "--no-pin" }.into(),
        ];
        for p in &self.ports {
            a.push("--port".into());
            a.push(p.to_string());
        }
        a
    }

    /// Spawns `dt-agent run` (logging to a file of its own) and waits until its control socket
    /// answers. Panics with the log when it exits or does not come up in time.
    pub fn start(&mut self) -> Stats {
        assert!(
            !self.is_running(),
            "{}: the agent is already running",
            self.name
        );
        let log_path = self
            .dir
            .path()
            .join(format!("agent-{}.log", self.logs.len()));
        let log = std::fs::File::create(&log_path).expect("agent log");
        let child = Command::new(bin())
            .args(self.run_args())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn dt-agent run");
        self.child = Some(child);
        self.logs.push(log_path);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "{}: dt-agent run exited early with {st}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if let Ok(r) = control::call(&self.socket, &Request::Stats)
                && let Some(s) = r.stats
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: dt-agent run did not answer on {} within {START_TIMEOUT:?}; log:\n{}",
                self.name,
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The agent's pid (panics when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent not running").id()
    }

    /// Whether the child is alive (not exited; an exited one is reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Sends `sig` to the agent.
    pub fn signal(&mut self, sig: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold its Child).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits (bounded) for the agent to exit and reaps it; panics with the log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("agent not running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if Instant::now() >= deadline {
                let log = self.log();
                panic!(
                    "{}: dt-agent run did not exit within {timeout:?}; log:\n{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log of the latest start.
    pub fn log(&self) -> String {
        self.logs
            .last()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits (bounded) until the latest start's log contains `needle` `count` times or more.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the log did not show {needle:?} {count} time(s) within {timeout:?}:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `dt-agent <verb> args... --socket S --pin-dir P --config C` command for this agent.
    pub fn verb_command(&self, verb: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg(verb)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_root)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info");
        cmd
    }

    /// Runs `dt-agent <verb> args...` against this agent (or its pins) to completion.
    pub fn verb(&self, verb: &str, args: &[&str]) -> Output {
        dt_agent_cmd(
            self.verb_command(verb, args),
            VERB_TIMEOUT,
            &format!("{}: dt-agent {verb} {args:?}", self.name),
        )
    }

    /// `dt-agent stats --json`, parsed; panics unless it exits 0.
    pub fn stats(&self) -> Stats {
        let o = self.verb("stats", &["--json"]);
        assert!(
            o.status.success(),
            "{}: stats --json: {}",
            self.name,
            output_text(&o)
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stats --json is not the documented JSON: {e}\n{}",
                self.name,
                output_text(&o)
            )
        })
    }

    /// `dt-agent rules --json`, parsed; panics unless it exits 0.
    pub fn rules(&self) -> RulesInfo {
        let o = self.verb("rules", &["--json"]);
        assert!(
            o.status.success(),
            "{}: rules --json: {}",
            self.name,
            output_text(&o)
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: rules --json is not JSON: {e}\n{}",
                self.name,
                output_text(&o)
            )
        })
    }

    /// `dt-agent push paths...` (whatever its outcome).
    pub fn push(&self, paths: &[&Path]) -> Output {
        let args: Vec<&str> = paths
            .iter()
            .map(|p| p.to_str().expect("utf-8 path"))
            .collect();
        self.verb("push", &args)
    }

    /// The BPF program and map ids the running agent holds file descriptors for (read from
    /// `/proc/<pid>/fdinfo`): exactly what this agent loaded or opened.
    pub fn bpf_ids(&self) -> BpfIds {
        bpf_ids_of(self.pid())
    }

    /// Removes this agent's pin root, whatever is in it.
    pub fn remove_pins(&self) {
        remove_pin_root(&self.pin_root);
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_pin_root(&self.pin_root);
    }
}

/// Program and map ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfIds {
    pub progs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
}

/// The BPF program and map ids process `pid` holds file descriptors for.
pub fn bpf_ids_of(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    let dir = format!("/proc/{pid}/fdinfo");
    let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}"));
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let Ok(v) = v.trim().parse::<u32>() else {
                continue;
            };
            match k.trim() {
                "prog_id" => {
                    ids.progs.insert(v);
                }
                "map_id" => {
                    ids.maps.insert(v);
                }
                _ => {}
            }
        }
    }
    ids
}

/// `bpftool args... -j`, parsed.
pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("bpftool");
    cmd.args(args).arg("-j");
    let o = dt_agent_cmd(cmd, VERB_TIMEOUT, &format!("bpftool {args:?}"));
    assert!(o.status.success(), "bpftool {args:?}: {}", output_text(&o));
    // `bpftool cgroup show` prints nothing at all for a cgroup without programs.
    if o.stdout.trim_ascii().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool {args:?} -j: {e}: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `(id, name)` of every loaded BPF program.
pub fn loaded_progs() -> Vec<(u32, String)> {
    id_names(&bpftool_json(&["prog", "show"]))
}

/// `(id, name)` of every BPF map.
pub fn loaded_maps() -> Vec<(u32, String)> {
    id_names(&bpftool_json(&["map", "show"]))
}

/// `(prog id, name)` of every program attached to `cgroup` as sock_ops.
pub fn cgroup_sock_ops(cgroup: &Path) -> Vec<(u32, String)> {
    let v = bpftool_json(&[
        "cgroup",
        "show",
        cgroup.to_str().expect("utf-8 cgroup path"),
    ]);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["attach_type"] == "cgroup_sock_ops" || e["attach_type"] == "sock_ops")
        .filter_map(|e| Some((e["id"].as_u64()? as u32, e["name"].as_str()?.to_string())))
        .collect()
}

/// `(link id, prog id)` of the link pinned at `path`.
pub fn pinned_link(path: &Path) -> (u32, u32) {
    let v = bpftool_json(&[
        "link",
        "show",
        "pinned",
        path.to_str().expect("utf-8 pin path"),
    ]);
    let id = v["id"].as_u64().unwrap_or_else(|| panic!("link id in {v}"));
    let prog = v["prog_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("prog_id in {v}"));
    (id as u32, prog as u32)
}

fn id_names(v: &serde_json::Value) -> Vec<(u32, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["id"].as_u64()? as u32,
                e["name"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Removes a pin root and everything under it (pinned maps and links go with their files).
fn remove_pin_root(root: &Path) {
    match std::fs::remove_dir_all(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("dt-tests: could not remove {}: {e}", root.display()),
    }
}

/// Removes pin roots of test processes that are gone.
fn sweep_stale_pins() {
    let Ok(rd) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // The image test's pin roots too (tests/tests/image.rs).
        let Some(rest) = name
            .strip_prefix(PIN_PREFIX)
            .or_else(|| name.strip_prefix("dt-test-image-"))
        else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_pin_root(&e.path());
        }
    }
}
