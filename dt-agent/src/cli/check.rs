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
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            ExitCode::FAILURE
        }
    }
}
