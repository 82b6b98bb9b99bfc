//! `dt-agent push PATH...`: sends rule files (a directory: its rule files) to the running agent, which validates the whole
//! resulting set before it writes anything.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use dt_agent::control::{self, PushedFile, Request};
use dt_agent::rules;

use super::{AgentAt, cannot_reach, locate};

pub fn push(paths: &[PathBuf], at: &AgentAt) -> anyhow::Result<()> {
    // A directory stands for its rule files, as for `check`.
    let mut expanded = Vec::new();
    for p in paths {
        if p.is_dir() {
            let files = rules::rule_files(p).map_err(|d| anyhow!("{d}"))?;
            if files.is_empty() {
                bail!(
                    "{}: a directory with no rule file (*.toml) in it; nothing to push",
                    p.display()
                );
            }
            expanded.extend(files);
        } else {
            expanded.push(p.clone());
        }
    }
    let paths = &expanded;
    // Names the agent would refuse are refused before it is asked (it checks them again).
    rules::pushed_names(paths.iter().map(PathBuf::as_path)).map_err(|e| anyhow!(e))?;
    let (socket, pins) = locate(at)?;
    let mut files = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
        files.push(PushedFile {
            path: p.clone(),
            text,
        });
    }
    let response = control::call_within(&socket, &Request::Push { files }, control::PUSH_DEADLINE)
        .map_err(|e| cannot_reach("push", &socket, &pins, e))?;
    println!(
        "pushed {} file(s): generation {}{}",
        paths.len(),
        response.generation.unwrap_or_default(),
        if response.unchanged {
            " (unchanged: the rule set's files are as they were)"
        } else {
            ""
        }
    );
    Ok(())
}
