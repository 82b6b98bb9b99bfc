//! The control protocol: one JSON [`Request`] per connection, one JSON [`Response`] line back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{drain::UninstallStatus, rules::CompiledRule, stats::Stats};

/// A rule file sent by `push`: the path the user gave (for error messages) and its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushedFile {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    Stats,
    Rules,
    Push {
        files: Vec<PushedFile>,
    },
    Disable,
    Enable,
    Uninstall,
    /// `uninstall --now`: stop waiting for held requests (they are lost), detach and unpin.
    UninstallNow,
    /// Egress these recorders now.
    Flush {
        recorders: Vec<String>,
    },
    /// Turn a state on (for `for_ms`, else its duration) or off.
    State {
        name: String,
        on: bool,
        #[serde(default)]
        for_ms: Option<u64>,
    },
}

/// One active rule, as `rules` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub action: String,
    pub hook: String,
    /// The rule's file and the line of its `[[rule]]` header.
    pub file: PathBuf,
    pub line: usize,
}

/// The `rules --json` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesInfo {
    pub generation: u64,
    pub enabled: bool,
    pub rules_dir: PathBuf,
    pub rules: Vec<RuleInfo>,
    /// As `stats`'s `rules_error`: why the last change of the rule set was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong; for a refused push, one `file:line:column: message` per line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesInfo>,
    /// The active generation after a push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// A push that left the active set's files as they were (no new generation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// How far `uninstall` is: done, or what it still waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uninstall: Option<UninstallStatus>,
    /// What `flush` egressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flushed: Option<Vec<crate::export::flush::Flushed>>,
    /// A refusal because the agent is still starting (`error` says so): a client that can do
    /// without it (`stats` from the pins) may.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    /// What a success means when it is not what the verb usually says (a rip cord pulled while
    /// the agent starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Response {
    /// A success with nothing else to say.
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    /// A refusal; `message` is what the client prints.
    pub fn error(message: String) -> Response {
        Response {
            ok: false,
            error: Some(message),
            ..Response::default()
        }
    }
}

impl RuleInfo {
    /// One entry a rule, in the set's order: a rule on several hooks is compiled once a hook,
    /// and listed once, its hooks joined as `stats` shows them (`"otlp,uprobe:syslog"`).
    pub fn of_rules(rules: &[CompiledRule]) -> Vec<RuleInfo> {
        let mut out: Vec<RuleInfo> = Vec::new();
        for r in rules {
            match out.iter_mut().find(|i| i.name == r.name) {
                Some(info) => {
                    info.hook.push(',');
                    info.hook.push_str(&r.hook.name());
                }
                None => out.push(RuleInfo::from(r)),
            }
        }
        out
    }
}

impl From<&CompiledRule> for RuleInfo {
    fn from(r: &CompiledRule) -> RuleInfo {
        RuleInfo {
            name: r.name.clone(),
            action: r.action.name().to_string(),
            hook: r.hook.name(),
            file: r.file.clone(),
            line: r.line,
        }
    }
}
