//! Rule directories for tests.

use std::path::{Path, PathBuf};

use crate::model::{RuleSpec, rules_toml};

/// A temporary rules directory, removed on drop.
pub struct TempRules {
    dir: tempfile::TempDir,
}

impl TempRules {
    /// An empty directory.
    pub fn new() -> TempRules {
        TempRules {
            dir: tempfile::Builder::new()
                .prefix("dt-rules-")
                .tempdir()
                .expect("create temp rules dir"),
        }
    }

    /// A directory holding `files` (`(file name, TOML text)`).
    pub fn with_files(files: &[(&str, &str)]) -> TempRules {
        let r = TempRules::new();
        for (name, text) in files {
            r.write(name, text);
        }
        r
    }

    /// A directory holding one file, `50-test.toml`, with `rules` in order.
    pub fn from_rules(rules: &[RuleSpec]) -> TempRules {
        let r = TempRules::new();
        r.write("50-test.toml", &rules_toml(rules));
        r
    }

    /// Writes (or replaces) `name` and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of `name` inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TempRules {
    fn default() -> Self {
        TempRules::new()
    }
}
