//! `dt-agent check PATH...`: validates rule files (or directories of them), no kernel, no root.

use std::{path::PathBuf, process::ExitCode};

use dt_agent::rules;

/// Rule files: each directory expanded into its rule files ([`rules::rule_files`]). A file that
/// an earlier argument already gave (`check rules/ rules/10.toml`) is read once: its rules are
/// not duplicates of themselves. Within one directory every file counts, as `run` reads them
/// (two links to one file there are two files). A directory that holds no rule file is said on
/// stderr.
fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, rules::Diagnostic> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut earlier = std::collections::HashSet::new();
    for p in paths {
        let found = if p.is_dir() {
            let files = rules::rule_files(p)?;
            if files.is_empty() {
                eprintln!(
                    "note: {} holds no rule file (*.toml whose name does not start with a dot)",
                    p.display()
                );
            }
            files
        } else {
            vec![p.clone()]
        };
        let canonical = |f: &PathBuf| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        let this: Vec<PathBuf> = found.iter().map(canonical).collect();
        for (f, c) in found.into_iter().zip(&this) {
            if !earlier.contains(c) {
                out.push(f);
            }
        }
        earlier.extend(this);
    }
    Ok(out)
}

/// `n` and the noun, in the singular for one.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn check(paths: &[PathBuf]) -> ExitCode {
    let files = match rule_files(paths) {
        Ok(files) => files,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    match rules::check_files(&files) {
        Ok(defs) => {
            println!(
                "ok: {} in {}",
                count(defs.len(), "rule"),
                count(files.len(), "file")
            );
            ExitCode::SUCCESS
        }
        Err(mut diags) => {
            if paths.iter().any(|p| !p.is_dir()) {
                scope_hint(&mut diags);
            }
            for d in &diags {
                eprintln!("{d}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Files picked out of a directory: a probe, recorder or state one of them uses may be defined
/// in a file left out, and be missing only here.
fn scope_hint(diags: &mut [rules::Diagnostic]) {
    for d in diags {
        if d.message.starts_with("no [[") {
            d.message.push_str(
                " (check sees only the files and directories it is given: if it is defined in \
                 another file, check that too, or the whole directory)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_definition_checked_from_single_files_may_be_in_another() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("10-use.toml");
        std::fs::write(
            &file,
            "[[rule]]\nname = \"u\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n",
        )
        .unwrap();
        let mut e = rules::check_files(std::slice::from_ref(&file)).unwrap_err();
        assert!(e[0].message.ends_with("in the rule set"), "{e:?}");
        scope_hint(&mut e);
        assert!(
            e[0].message.ends_with(
                "in the rule set (check sees only the files and directories it is given: if it \
                 is defined in another file, check that too, or the whole directory)"
            ),
            "{e:?}"
        );
    }
}
