//! `dt-agent check PATH...`: validates rule files (or directories of them), no kernel, no root.

use std::{path::PathBuf, process::ExitCode};

use dt_agent::rules;

/// Rule files: each directory expanded into its rule files ([`rules::rule_files`]).
fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, rules::Diagnostic> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(rules::rule_files(p)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
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
            println!("ok: {} rules in {} files", defs.len(), files.len());
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
