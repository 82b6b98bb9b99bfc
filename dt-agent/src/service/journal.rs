//! Writing a push's files into the rules directory so that, whatever happens (`kill -9`, a
//! full disk, a power cut), the directory holds the old set or the new one: never a
//! half-written file, never some of the new files with some of the old.
//!
//! [`commit`]: every file is written to a temporary name (`.NAME.dt-push`, which the rules
//! directory's listing skips) and synced; then a journal (`.dt-push.journal`, the names, one a
//! line) is written and renamed into place: the commit point. Then each temporary file is
//! renamed over its target, and the journal removed. A failure before the commit point removes
//! the temporary files: nothing changed.
//!
//! [`recover`], at `run`'s start before the rules are read: a journal left by an agent that died
//! after the commit point is rolled forward (its temporary files are whole); temporary files
//! without a journal (it died before) are removed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

const JOURNAL: &str = ".dt-push.journal";
/// Test hook: a pause (milliseconds) after the first rename of a push of several files, so a
/// test can kill the agent in the middle of one.
const PAUSE_ENV: &str = "DT_TEST_PUSH_PAUSE_MS";

fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.dt-push"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes `files` (file name, text) into `dir` as one change (see the module docs).
pub fn commit(dir: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    let mut written: Vec<PathBuf> = Vec::new();
    let undo = |written: &[PathBuf]| {
        for p in written {
            let _ = std::fs::remove_file(p);
        }
    };
    for (name, text) in files {
        let tmp = tmp_path(dir, name);
        if let Err(e) = write_synced(&tmp, text.as_bytes()) {
            written.push(tmp.clone());
            undo(&written);
            return Err(e).with_context(|| {
                format!("writing {} (nothing was changed)", dir.join(name).display())
            });
        }
        written.push(tmp);
    }
    let journal = dir.join(JOURNAL);
    let journal_tmp = dir.join(format!("{JOURNAL}.tmp"));
    let list: String = files.iter().map(|(n, _)| format!("{n}\n")).collect();
    let committed = write_synced(&journal_tmp, list.as_bytes())
        .and_then(|()| std::fs::rename(&journal_tmp, &journal))
        .and_then(|()| sync_dir(dir));
    if let Err(e) = committed {
        written.push(journal_tmp);
        undo(&written);
        let _ = std::fs::remove_file(&journal);
        return Err(e).with_context(|| {
            format!(
                "writing the push journal in {} (nothing was changed)",
                dir.display()
            )
        });
    }
    let pause = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    for (i, (name, _)) in files.iter().enumerate() {
        if i == 1
            && let Some(ms) = pause
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let (tmp, target) = (tmp_path(dir, name), dir.join(name));
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    }
    sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    std::fs::remove_file(&journal).with_context(|| format!("removing {}", journal.display()))?;
    Ok(())
}

/// What `dir` holds under each of `names` now (`None`: no such file), for [`put_back`].
pub fn previous(dir: &Path, names: &[String]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    names
        .iter()
        .map(|n| {
            let path = dir.join(n);
            match std::fs::read_to_string(&path) {
                Ok(t) => Ok((n.clone(), Some(t))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((n.clone(), None)),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            }
        })
        .collect()
}

/// Undoes a committed push whose rule set could not be installed: the files it replaced get
/// their old text back (as one change, like [`commit`]), and the files it added go.
pub fn put_back(dir: &Path, previous: &[(String, Option<String>)]) -> anyhow::Result<()> {
    let old: Vec<(String, String)> = previous
        .iter()
        .filter_map(|(n, t)| t.clone().map(|t| (n.clone(), t)))
        .collect();
    if !old.is_empty() {
        commit(dir, &old)?;
    }
    for (n, _) in previous.iter().filter(|(_, t)| t.is_none()) {
        let path = dir.join(n);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))
}

/// Finishes or undoes a push an earlier agent left midway (see the module docs); returns what
/// it did, for the log.
pub fn recover(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let journal = dir.join(JOURNAL);
    match std::fs::read_to_string(&journal) {
        Ok(list) => {
            let mut names = Vec::new();
            for name in list.lines().filter(|n| !n.is_empty() && !n.contains('/')) {
                let tmp = tmp_path(dir, name);
                if tmp.exists() {
                    std::fs::rename(&tmp, dir.join(name)).with_context(|| {
                        format!("finishing an interrupted push: renaming {}", tmp.display())
                    })?;
                }
                names.push(name.to_string());
            }
            sync_dir(dir)?;
            std::fs::remove_file(&journal)
                .with_context(|| format!("removing {}", journal.display()))?;
            done.push(format!(
                "finished a push an earlier agent left midway: {}",
                names.join(", ")
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(done);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stray = (name.starts_with('.') && name.ends_with(".dt-push"))
            || name == format!("{JOURNAL}.tmp");
        if stray {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            done.push(format!(
                "removed {} (a push that never completed; nothing of it was applied)",
                e.path().display()
            ));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_push_put_back_leaves_the_directory_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), "old a").unwrap();
        std::fs::write(d.path().join("c.toml"), "c").unwrap();
        let names = ["a.toml".to_string(), "b.toml".to_string()];
        let before = previous(d.path(), &names).unwrap();
        assert_eq!(
            before,
            [
                ("a.toml".into(), Some("old a".into())),
                ("b.toml".into(), None)
            ]
        );
        commit(
            d.path(),
            &[
                ("a.toml".into(), "new a".into()),
                ("b.toml".into(), "b".into()),
            ],
        )
        .unwrap();
        assert_eq!(listing(d.path()), ["a.toml", "b.toml", "c.toml"]);
        put_back(d.path(), &before).unwrap();
        assert_eq!(listing(d.path()), ["a.toml", "c.toml"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.toml")).unwrap(),
            "old a"
        );
        assert!(recover(d.path()).unwrap().is_empty());
    }

    #[test]
    fn a_commit_leaves_only_the_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), "old").unwrap();
        commit(
            d.path(),
            &[
                ("a.toml".into(), "new a".into()),
                ("b.toml".into(), "b".into()),
            ],
        )
        .unwrap();
        assert_eq!(listing(d.path()), ["a.toml", "b.toml"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.toml")).unwrap(),
            "new a"
        );
        assert!(recover(d.path()).unwrap().is_empty());
    }

    #[test]
    fn recovery_rolls_a_journal_forward_and_removes_uncommitted_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), "new a").unwrap();
        std::fs::write(d.path().join("b.toml"), "old b").unwrap();
        // Died after renaming a.toml: b's temporary file and the journal remain.
        std::fs::write(tmp_path(d.path(), "b.toml"), "new b").unwrap();
        std::fs::write(d.path().join(JOURNAL), "a.toml\nb.toml\n").unwrap();
        let did = recover(d.path()).unwrap();
        assert_eq!(did.len(), 1, "{did:?}");
        assert_eq!(listing(d.path()), ["a.toml", "b.toml"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("b.toml")).unwrap(),
            "new b"
        );
        // Died before the journal: its temporary files go, the old files stay.
        std::fs::write(tmp_path(d.path(), "a.toml"), "half").unwrap();
        std::fs::write(d.path().join(format!("{JOURNAL}.tmp")), "a.t").unwrap();
        let did = recover(d.path()).unwrap();
        assert_eq!(did.len(), 2, "{did:?}");
        assert_eq!(listing(d.path()), ["a.toml", "b.toml"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.toml")).unwrap(),
            "new a"
        );
    }
}
