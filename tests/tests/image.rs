//! The agent's container image (`cargo xtask image`), run by podman the way the Kubernetes
//! DaemonSet runs it: privileged, host network and PID namespace, the host's bpffs and cgroup
//! hierarchy mounted, pinning on. It filters the host's OTLP traffic and answers `stats` on its
//! control socket (a host directory mounted at `/run/dt`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dt_tests::agent_process::{bin, output_text};
use dt_tests::{
    ExportPlan, Receiver, RuleSpec, TempRules, WAIT, evaluate, export_with_real_exporter,
    kernel_or_skip,
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `cargo xtask image --agent <the tests' dt-agent>`, or the image `DT_IMAGE` names: its
/// reference.
fn image() -> String {
    if let Ok(r) = std::env::var("DT_IMAGE") {
        return r;
    }
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // The agent the tests run: the same packing, without a release build of every
        // dependency (minutes of CI).
        .args(["xtask", "image", "--agent"])
        .arg(bin())
        .current_dir(workspace_root())
        .output()
        .expect("running cargo xtask image");
    assert!(
        out.status.success(),
        "cargo xtask image:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("an image reference")
        .trim()
        .to_string()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("running podman")
}

/// The container, removed (and its agent uninstalled) on drop.
struct Container {
    name: String,
    socket_dir: tempfile::TempDir,
    pin_dir: PathBuf,
}

impl Container {
    fn socket(&self) -> PathBuf {
        self.socket_dir.path().join("agent.sock")
    }

    fn verb(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()
            .expect("running dt-agent")
    }

    fn logs(&self) -> String {
        output_text(&podman(&["logs", &self.name]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.verb(&["uninstall"]);
        let _ = podman(&["rm", "-f", "-t", "5", &self.name]);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_filters_the_hosts_traffic() {
    if !kernel_or_skip("the_image_runs_as_the_daemonset_runs_it_and_filters_the_hosts_traffic") {
        return;
    }
    let reference = image();
    let rules = vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
    ];
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let name = format!("dt-test-image-{}", std::process::id());
    let c = Container {
        name: name.clone(),
        socket_dir: tempfile::Builder::new()
            .prefix("dt-image-run-")
            .tempdir()
            .unwrap(),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/{name}")),
    };
    let rules_mount = format!("{}:/etc/dt/rules:ro", dir.path().display());
    let run_mount = format!("{}:/run/dt", c.socket_dir.path().display());
    let port = receiver.port().to_string();
    let pin_dir = c.pin_dir.display().to_string();
    let out = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--runtime",
        "runc",
        "--privileged",
        "--network",
        "host",
        "--pid",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup",
        "-v",
        &rules_mount,
        "-v",
        &run_mount,
        &reference,
        "run",
        "--rules",
        "/etc/dt/rules",
        "--port",
        &port,
        "--pin",
        "--pin-dir",
        &pin_dir,
    ]);
    assert!(out.status.success(), "podman run:\n{}", output_text(&out));

    // Ready once attached and serving (`stats` alone would answer from the pins before).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.logs().contains("dt-agent running") {
        assert!(
            Instant::now() < deadline,
            "the agent in the container never started:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = c.verb(&["rules", "--json"]);
    assert!(o.status.success(), "rules:\n{}", output_text(&o));

    // The host's traffic: the real Rust exporter, from this (host) process.
    let plan = ExportPlan::mixed(300, &["checkout", "cart"], 50);
    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(300);
    receiver.wait_for(report.batches_ok, WAIT);
    let expected = evaluate(&rules, &report.sent);
    assert!(expected.records_dropped > 0);
    assert_eq!(
        receiver.records().len(),
        expected.kept.len(),
        "{}",
        c.logs()
    );

    let o = c.verb(&["stats", "--json"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let stats: dt_agent::Stats = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats.totals.records, 300);
    assert_eq!(stats.totals.records_dropped, expected.records_dropped);
    assert_eq!(stats.rule("count-all").unwrap().matched, 300);
    // Pinned where the DaemonSet pins, through the host's bpffs.
    let layout = c
        .pin_dir
        .join(format!("v{}", dt_ebpf_common::LAYOUT_VERSION));
    assert!(
        layout.join("CONTROL").exists(),
        "pins under {}",
        layout.display()
    );

    let o = c.verb(&["uninstall"]);
    assert!(o.status.success(), "uninstall:\n{}", output_text(&o));
    assert!(!layout.exists(), "the pins are gone");
}
