//! Faults around `push`: the agent killed (`kill -9`) in the middle of a push of several files,
//! and a full disk under the rules directory. The rules directory never holds a half-written
//! file or a mix of old and new files, the next agent starts on a whole set, and a push that
//! cannot be written fails with a clear error and changes nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dt_tests::agent_process::{AgentProcess, output_text};
use dt_tests::{TempRules, kernel_or_skip, reserve_port};

fn count_rule(name: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\naction = \"count\"\n")
}

/// The directory's entries, sorted (hidden ones included).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn active(agent: &AgentProcess) -> Vec<String> {
    agent.rules().rules.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn kill_9_in_the_middle_of_a_push_leaves_a_whole_set() {
    if !kernel_or_skip("kill_9_in_the_middle_of_a_push_leaves_a_whole_set") {
        return;
    }
    // Old set: a.toml holds "shared", b.toml holds "b-old". New set: a.toml takes "shared"'s
    // place with "shared" moved to b.toml. Old a.toml with new b.toml (or new a with old b)
    // would be fine here, so the new a.toml also names "b-old": new a + old b has that name
    // twice and is invalid. Only the whole new set is valid.
    let rules = TempRules::with_files(&[
        ("a.toml", &count_rule("shared")),
        ("b.toml", &count_rule("b-old")),
    ]);
    let (_hold, port) = reserve_port();
    let mut agent = AgentProcess::new("push-kill9", rules.path(), &[port], false);
    // The test hook: the push pauses 3 s after its first rename.
    agent.set_env("DT_TEST_PUSH_PAUSE_MS", Some("3000"));
    agent.start();
    assert_eq!(active(&agent), ["shared", "b-old"]);

    let new = tempfile::tempdir().unwrap();
    let (na, nb) = (new.path().join("a.toml"), new.path().join("b.toml"));
    std::fs::write(&na, count_rule("b-old")).unwrap();
    std::fs::write(&nb, count_rule("shared")).unwrap();
    let mut push = agent.verb_command("push", &[na.to_str().unwrap(), nb.to_str().unwrap()]);
    let pusher = std::thread::spawn(move || push.output().unwrap());
    // Midway: the first file renamed, the second still a temporary file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(rules.path().join("a.toml")).unwrap() != count_rule("b-old") {
        assert!(std::time::Instant::now() < deadline, "the push never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    let entries = listing(rules.path());
    assert!(
        entries.contains(&".b.toml.dt-push".to_string())
            && entries.contains(&".dt-push.journal".to_string()),
        "{entries:?}"
    );
    agent.kill9();
    let out = pusher.join().unwrap();
    assert!(!out.status.success(), "the push cannot have completed");

    // The next agent finishes the push before it reads the rules: the whole new set.
    agent.set_env("DT_TEST_PUSH_PAUSE_MS", None);
    agent.start();
    assert_eq!(active(&agent), ["b-old", "shared"]);
    assert_eq!(listing(rules.path()), ["a.toml", "b.toml"]);
    assert!(
        agent
            .log()
            .contains("finished a push an earlier agent left midway: a.toml, b.toml"),
        "{}",
        agent.log()
    );

    // A push killed before its commit point leaves the old set: temporary files only.
    std::fs::write(
        rules.path().join(".c.toml.dt-push"),
        "[[rule]]\nname = \"c\"",
    )
    .unwrap();
    agent.kill9();
    agent.start();
    assert_eq!(active(&agent), ["b-old", "shared"]);
    assert_eq!(listing(rules.path()), ["a.toml", "b.toml"]);
    assert!(agent.log().contains("a push that never completed"));
}

/// A tmpfs of `size` mounted at a new temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("dt-full-disk-")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "dt-test-full"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", output_text(&out));
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

#[test]
fn a_full_disk_fails_the_push_and_changes_nothing() {
    if !kernel_or_skip("a_full_disk_fails_the_push_and_changes_nothing") {
        return;
    }
    let disk = SmallDisk::mount("64k");
    let dir = disk.path().join("rules");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.toml"), count_rule("a")).unwrap();
    let (_hold, port) = reserve_port();
    let mut agent = AgentProcess::new("push-full-disk", &dir, &[port], false);
    agent.start();
    let generation = agent.rules().generation;

    // Fill the disk but for a little.
    let filler = disk.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len - 8192)
        .unwrap();

    // A valid rule file much larger than what is left (a long comment), and a small one.
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("b.toml");
    let comment: String = (0..800)
        .map(|i| format!("# line {i} of a long comment\n"))
        .collect();
    std::fs::write(&big, format!("{comment}{}", count_rule("b"))).unwrap();
    let small = src.path().join("c.toml");
    std::fs::write(&small, count_rule("c")).unwrap();
    let before = listing(&dir);
    let out = agent.push(&[&small, &big]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("No space left on device") && text.contains("b.toml"),
        "the error names the cause and the file: {text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(
        listing(&dir),
        before,
        "no file written, no temporary file left"
    );
    assert_eq!(agent.rules().generation, generation);
    assert_eq!(active(&agent), ["a"]);

    // With room again, the same push goes through.
    std::fs::remove_file(&filler).unwrap();
    let out = agent.push(&[&small, &big]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(active(&agent), ["a", "b", "c"]);
    drop(agent);
}
