//! A rules directory updated the way the kubelet updates a ConfigMap volume (its atomic
//! writer): the files are written into a new `..<timestamp>` directory, a `..data_tmp` symlink
//! to it is renamed over `..data`, the visible files are symlinks into `..data` (new keys get
//! theirs after the swap, removed keys lose theirs), and the old directory goes. The running
//! agent must follow every swap, not only the first, and a bad update must change nothing.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dt_tests::agent_process::AgentProcess;
use dt_tests::{kernel_or_skip, reserve_port};

/// A ConfigMap volume as the kubelet lays it out.
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    n: usize,
    current: Option<PathBuf>,
    keys: Vec<String>,
}

impl ConfigMapVolume {
    fn new() -> ConfigMapVolume {
        ConfigMapVolume {
            dir: tempfile::Builder::new()
                .prefix("dt-configmap-")
                .tempdir()
                .unwrap(),
            n: 0,
            current: None,
            keys: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// One update with the atomic writer's steps, in its order.
    fn update(&mut self, files: &[(&str, &str)]) {
        self.n += 1;
        let root = self.dir.path();
        let name = format!("..2026_12_05_14_00_{:02}.{:09}", self.n % 60, self.n);
        let ts = root.join(&name);
        std::fs::create_dir(&ts).unwrap();
        for (k, text) in files {
            std::fs::write(ts.join(k), text).unwrap();
        }
        let tmp = root.join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        let new_keys: Vec<String> = files.iter().map(|(k, _)| k.to_string()).collect();
        for k in &new_keys {
            let visible = root.join(k);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new("..data").join(k), &visible).unwrap();
            }
        }
        for k in self.keys.iter().filter(|k| !new_keys.contains(k)) {
            let _ = std::fs::remove_file(root.join(k));
        }
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(old).unwrap();
        }
        self.keys = new_keys;
    }
}

fn count_rule(name: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\naction = \"count\"\n")
}

/// The active rules' names and the generation.
fn active(agent: &AgentProcess) -> (Vec<String>, u64) {
    let info = agent.rules();
    (
        info.rules.iter().map(|r| r.name.clone()).collect(),
        info.generation,
    )
}

/// Waits (well under the agent's 10 s rescan: the directory watcher must see it) until the
/// active rules are `want`; returns the generation.
fn wait_rules(agent: &AgentProcess, want: &[&str], what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let (names, generation) = active(agent);
        if names == want {
            return generation;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: active rules {names:?}, want {want:?}\nlog:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_follows_every_configmap_swap() {
    if !kernel_or_skip("the_agent_follows_every_configmap_swap") {
        return;
    }
    let mut cm = ConfigMapVolume::new();
    cm.update(&[("10-a.toml", &count_rule("a-v1"))]);
    let (_hold, port) = reserve_port();
    let mut agent = AgentProcess::new("configmap", cm.path(), &[port], false);
    agent.start();
    let g1 = wait_rules(&agent, &["a-v1"], "at start");

    // A good update.
    cm.update(&[("10-a.toml", &count_rule("a-v2"))]);
    let g2 = wait_rules(&agent, &["a-v2"], "good update");
    assert!(g2 > g1);

    // A bad update: reported with its position, nothing changes.
    cm.update(&[(
        "10-a.toml",
        "[[rule]]\nname = \"a-v3\"\naction = \"explode\"\n",
    )]);
    agent.wait_log("10-a.toml:3:10: unknown action", 1, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(active(&agent), (vec!["a-v2".to_string()], g2));

    // A new key, with the bad file fixed.
    cm.update(&[
        ("10-a.toml", &count_rule("a-v4")),
        ("20-b.toml", &count_rule("b-v1")),
    ]);
    let g4 = wait_rules(&agent, &["a-v4", "b-v1"], "new key");
    assert!(g4 > g2);

    // Many swaps in a row: the last one is what runs.
    for i in 0..30 {
        cm.update(&[
            ("10-a.toml", &count_rule(&format!("a-s{i}"))),
            ("20-b.toml", &count_rule("b-v1")),
        ]);
        if i % 3 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_rules(&agent, &["a-s29", "b-v1"], "many swaps");

    // A key removed.
    cm.update(&[("20-b.toml", &count_rule("b-v2"))]);
    wait_rules(&agent, &["b-v2"], "key removed");
    assert!(!agent.log().contains("panicked"), "log:\n{}", agent.log());
}
