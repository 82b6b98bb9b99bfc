//! The running agent: one [`Agent`] behind a lock, and everything that changes it (pushes,
//! directory reloads, the rip cord, uninstall), each applied whole or not at all; the drain
//! before the agent detaches (see [`crate::drain`]); and [`run`], `dt-agent run` itself.
//!
//! The pieces: `stop` (uninstall and the wait before an exit), [`run`] (sockets, tasks,
//! signals).

mod journal;
mod run;
mod stop;

pub use journal::recover as recover_push;

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

pub use run::{RESCAN_EVERY, run};

use crate::{
    Agent, Stats,
    control::{Handler, PushedFile, Request, Response, RuleInfo, RulesInfo},
    rules::{self, RuleErrors},
};

/// How often a waiting agent looks again whether requests are still held.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long an agent whose waiting `uninstall` another's `--now` cut short stays up after
/// detaching, answering that `uninstall` (which asks every 200 ms) what was lost.
const CUT_SHORT_LINGER: Duration = Duration::from_secs(1);

/// The agent and its rules directory (and the remote part of its rule set).
pub struct Service {
    inner: Mutex<Inner>,
    rules_dir: PathBuf,
    /// Told when the agent should stop (after `uninstall`).
    pub shutdown: tokio::sync::Notify,
}

struct Inner {
    /// `None` once uninstalled.
    agent: Option<Agent>,
    /// Digest of the rule files the active generation was compiled from (or that were refused
    /// last); `None` after the rules directory could not be read.
    digest: Option<u64>,
    /// The remote part of the rule set (`opamp/NAME.toml` labels and texts, in name order),
    /// after the rules directory's files: what an OpAMP server gave last and was applied.
    remote: Vec<(PathBuf, String)>,
    /// The rule files (labels and texts) the active generation was compiled from.
    active_sources: Vec<(PathBuf, String)>,
    /// Why the last change of the rule set was refused, until one succeeds.
    last_error: Option<String>,
    /// That refusal was of the rules directory's files (what SIGHUP tries again), not of a
    /// remote config.
    refused_dir: bool,
    /// The last remote config, refused (`None` once one applies): tried again with the rules
    /// directory when its files change, since a clash with a local file may be what refused it.
    pending_remote: Option<Vec<(PathBuf, String)>>,
    /// The pending remote config applied with a change of the directory: the OpAMP client
    /// reports it applied ([`Service::take_pending_applied`]).
    pending_applied: bool,
    /// The agent is about to detach: everything passes, and nothing may turn filtering on.
    stopping: bool,
    /// `uninstall` has begun (it waits for held requests, then detaches and unpins).
    uninstalling: bool,
    /// Why the uninstall failed, once it has.
    uninstall_error: Option<String>,
    /// The uninstall is done: nothing of dt is attached or pinned.
    uninstalled: bool,
    /// A waiting `uninstall` was cut short by `uninstall --now`: the requests lost.
    cut_short: Option<crate::drain::Holding>,
    /// The agent stays up a moment to say so (see `stop`).
    lingering: bool,
}

impl Service {
    /// Wraps a started agent whose rule set came from `rules_dir` and then `remote` (see
    /// [`Service::apply_remote`]).
    pub fn new(
        mut agent: Agent,
        rules_dir: PathBuf,
        remote: Vec<(PathBuf, String)>,
        last_error: Option<String>,
    ) -> anyhow::Result<Arc<Service>> {
        // The files the agent compiled, not the directory read again: a file changed since is
        // not active, and the watcher's first look must see it as a change.
        let sources = agent.take_started_sources();
        Ok(Arc::new(Service {
            inner: Mutex::new(Inner {
                agent: Some(agent),
                digest: Some(digest(&sources)),
                remote,
                active_sources: sources,
                last_error,
                refused_dir: false,
                pending_remote: None,
                pending_applied: false,
                stopping: false,
                uninstalling: false,
                uninstall_error: None,
                uninstalled: false,
                cut_short: None,
                lingering: false,
            }),
            rules_dir,
            shutdown: tokio::sync::Notify::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_agent<T>(&self, f: impl FnOnce(&mut Agent) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut inner = self.lock();
        let agent = inner.agent.as_mut().ok_or(crate::stats::Uninstalled)?;
        f(agent)
    }

    /// Whether `uninstall` is done (nothing of dt attached or pinned).
    pub fn uninstalled(&self) -> bool {
        self.lock().uninstalled
    }

    /// Why the uninstall failed, once it has.
    pub fn uninstall_error(&self) -> Option<String> {
        self.lock().uninstall_error.clone()
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let mut stats = self.with_agent(|a| a.stats())?;
        stats.rules_error = self.lock().last_error.clone();
        Ok(stats)
    }

    /// `stats` without the parts read entry by entry (see [`crate::kernel::Agent::summary`]).
    pub fn summary(&self) -> anyhow::Result<Stats> {
        self.with_agent(|a| a.summary())
    }

    pub fn rules(&self) -> anyhow::Result<RulesInfo> {
        let inner = self.lock();
        let agent = inner.agent.as_ref().ok_or(crate::stats::Uninstalled)?;
        let stats = agent.summary()?;
        Ok(RulesInfo {
            generation: stats.generation,
            enabled: stats.enabled,
            rules_dir: self.rules_dir.clone(),
            rules: RuleInfo::of_rules(agent.active_rules()),
            rules_error: inner.last_error.clone(),
        })
    }

    /// Egresses the named recorders now (the agent's lock is not held while they are sent).
    pub fn flush(&self, names: &[String]) -> anyhow::Result<Vec<crate::export::flush::Flushed>> {
        let (requester, slots) = self.with_agent(|a| a.flush_request(names))?;
        requester.flush(slots)
    }

    /// Turns a state on (for `duration`, else its own) or off, by hand.
    pub fn set_state(
        &self,
        name: &str,
        on: bool,
        duration: Option<Duration>,
    ) -> anyhow::Result<()> {
        if let Some(d) = duration {
            anyhow::ensure!(
                (rules::MIN_STATE_DURATION..=rules::MAX_STATE_DURATION).contains(&d),
                "a state is on for 1s to 24h, as a state's duration in a rule file (asked: {} s)",
                d.as_secs_f64()
            );
        }
        self.with_agent(|a| a.set_state(name, on, duration))?;
        log::info!(
            "state {name} {}",
            if on {
                "turned on by hand"
            } else {
                "turned off by hand"
            }
        );
        Ok(())
    }

    pub fn set_enabled(&self, enabled: bool) -> anyhow::Result<()> {
        if self.uninstalled() {
            // Nothing is attached: everything passes already, and nothing can filter again.
            if enabled {
                return Err(crate::stats::Uninstalled.into());
            }
            return Ok(());
        }
        if enabled && self.lock().stopping {
            bail!(
                "the agent is stopping: every request passes until it has detached, so it \
                 cannot be enabled"
            );
        }
        self.with_agent(|a| a.set_enabled(enabled))?;
        log::info!(
            "{}",
            if enabled {
                "enabled: rules are evaluated again"
            } else {
                "disabled: every request passes untouched"
            }
        );
        Ok(())
    }

    /// Validates the rule set that `files` would make (the directory's files, those of the same
    /// name replaced), kernel checks included; only then writes the files and makes that set
    /// active as one new generation (none when the set's files are as they were: the second
    /// value). On any error nothing is written.
    pub fn push(&self, files: &[PushedFile]) -> anyhow::Result<(u64, bool)> {
        let mut guard = self.lock();
        // Its fields borrowed apart (the agent, and the active set's files).
        let inner = &mut *guard;
        if inner.uninstalled {
            return Err(crate::stats::Uninstalled.into());
        }
        if inner.stopping {
            bail!("the agent is stopping (it waits for held requests, then detaches)");
        }
        let mut sources = read_sources(&self.rules_dir)?;
        let names =
            rules::pushed_names(files.iter().map(|f| f.path.as_path())).map_err(|e| anyhow!(e))?;
        for (f, name) in files.iter().zip(&names) {
            // The pushed file replaces the directory's file of that name; errors name the path
            // the user gave.
            sources.retain(|(p, _)| {
                p.file_name().map(|n| n.to_string_lossy()) != Some(name.as_str().into())
            });
            sources.push((f.path.clone(), f.text.clone()));
        }
        sources.sort_by_key(|(p, _)| p.file_name().map(|n| n.to_owned()));
        let remote = inner.remote.clone();
        sources.extend(remote.iter().cloned());
        let agent = inner.agent.as_mut().ok_or(crate::stats::Uninstalled)?;
        let defs = rules::load_sources(&sources).map_err(RuleErrors)?;
        // Kernel checks included, and every probe the rules use attaches (then detaches again).
        agent.check_defs(&defs)?;
        // Valid: write the files as one change (the directory holds the old set or the new,
        // whatever happens: see `journal`), then install the set as the directory now holds it
        // (so `rules` names the installed files).
        let writes: Vec<(String, String)> = names
            .iter()
            .zip(files)
            .map(|(name, f)| (name.clone(), f.text.clone()))
            .collect();
        let before = journal::previous(&self.rules_dir, &names)?;
        journal::commit(&self.rules_dir, &writes)?;
        let active = &inner.active_sources;
        let mut unchanged = false;
        let installed = read_sources(&self.rules_dir).and_then(|mut installed| {
            installed.extend(remote);
            if installed == *active {
                // The files the active set was made of, as they were: no new generation.
                unchanged = true;
                return Ok(installed);
            }
            let defs = rules::load_sources(&installed).map_err(RuleErrors)?;
            let (compiled, slots) = agent.compile_defs(&defs)?;
            agent.install_compiled(&compiled, slots)?;
            Ok(installed)
        });
        // Not installed after all (a probe's binary gone since the check, a map update
        // refused): the files go back as they were, so that the watcher does not install later
        // what failed now.
        let installed = match installed {
            Ok(i) => i,
            Err(e) => {
                return Err(match journal::put_back(&self.rules_dir, &before) {
                    Ok(()) => e.context("the push was not installed; its files were put back"),
                    Err(b) => e.context(format!(
                        "the push was not installed, and putting its files back failed: {b:#}"
                    )),
                });
            }
        };
        let generation = agent.generation();
        // What is in the directory now is what is active: the watcher's event for these writes
        // finds nothing new.
        inner.digest = Some(digest(&installed));
        inner.active_sources = installed;
        inner.last_error = None;
        if unchanged {
            log::info!(
                "pushed {}: the rule set is as it was (generation {generation} stays)",
                names.join(", ")
            );
        } else {
            log::info!("pushed {}: generation {generation}", names.join(", "));
        }
        Ok((generation, unchanged))
    }

    /// Re-reads the rules directory; when its files changed, compiles them and makes them the
    /// active set. An invalid set is logged (`file:line:column: message`) and the active one
    /// stays.
    pub fn reload_from_dir(&self) {
        self.reload_dir(false);
    }

    /// SIGHUP: [`Service::reload_from_dir`], and a refused change is tried again even when the
    /// files are as they were (what refused it may have changed: a probe's binary installed).
    pub fn reread_dir(&self) {
        self.reload_dir(true);
    }

    fn reload_dir(&self, retry_refused: bool) {
        let mut inner = self.lock();
        if inner.stopping {
            // Detaching: no new generation (push and remote configs are refused too).
            return;
        }
        let dir = match read_sources(&self.rules_dir) {
            Ok(s) => s,
            Err(e) => {
                log::error!("rules directory: {e:#}; the active rule set stays");
                inner.last_error = Some(format!("the rules directory could not be read:\n{e:#}"));
                inner.refused_dir = true;
                // Whatever the next reading finds is reloaded (and this error cleared), even
                // the active set's files.
                inner.digest = None;
                return;
            }
        };
        let dir_files = dir.len();
        let mut sources = dir;
        sources.extend(inner.remote.iter().cloned());
        let d = digest(&sources);
        let retry = retry_refused && inner.last_error.is_some() && inner.refused_dir;
        if inner.digest == Some(d) && !retry {
            return;
        }
        if inner.agent.is_none() {
            return;
        }
        if Self::apply_pending_remote(&mut inner, &sources[..dir_files]) {
            return;
        }
        if sources == inner.active_sources {
            // Back to the files of the active set (a refused edit undone): no new generation.
            inner.digest = Some(d);
            inner.last_error = None;
            log::info!(
                "rules directory holds the active rule set's files again: generation {} stays",
                inner.agent.as_ref().map_or(0, |a| a.generation())
            );
            return;
        }
        let Some(agent) = inner.agent.as_mut() else {
            return;
        };
        let result = install_sources(agent, &sources, false);
        match result {
            Ok(()) => {
                inner.digest = Some(d);
                inner.active_sources = sources;
                inner.last_error = None;
                log::info!(
                    "rules directory changed: generation {}",
                    inner.agent.as_ref().map_or(0, |a| a.generation())
                );
            }
            Err(e) => {
                // Remember the digest: the same broken files are not reported again.
                inner.digest = Some(d);
                match e.downcast_ref::<RuleErrors>() {
                    Some(errors) => {
                        for d in &errors.0 {
                            log::error!("{d}");
                        }
                        log::error!("the rules directory is invalid; the active rule set stays");
                    }
                    None => log::error!("reloading the rules: {e:#}; the active rule set stays"),
                }
                inner.last_error = Some(format!("the rules directory is invalid:\n{e:#}"));
                inner.refused_dir = true;
            }
        }
    }

    /// Makes `remote` (labelled `opamp/NAME.toml`, see [`remote_sources`]) the remote part of
    /// the rule set, replacing the one before whole: the set it makes with the directory's files
    /// is validated as `push` validates (kernel checks included) and installed as one new
    /// generation. On any error the active set stays, and the error lists every problem.
    pub fn apply_remote(&self, remote: Vec<(PathBuf, String)>) -> anyhow::Result<u64> {
        let mut inner = self.lock();
        if inner.stopping {
            bail!("the agent is stopping (it waits for held requests, then detaches)");
        }
        let mut sources = read_sources(&self.rules_dir)?;
        sources.extend(remote.iter().cloned());
        let unchanged = sources == inner.active_sources;
        let agent = inner.agent.as_mut().ok_or(crate::stats::Uninstalled)?;
        // The files of the active set, as they were: no new generation.
        let result = if unchanged {
            Ok(())
        } else {
            install_sources(agent, &sources, true)
        };
        if let Err(e) = result {
            inner.last_error = Some(format!("a remote config was refused:\n{e:#}"));
            inner.refused_dir = false;
            inner.pending_remote = Some(remote);
            inner.pending_applied = false;
            return Err(e);
        }
        let generation = agent.generation();
        inner.digest = Some(digest(&sources));
        inner.active_sources = sources;
        inner.remote = remote;
        inner.last_error = None;
        inner.pending_remote = None;
        inner.pending_applied = false;
        Ok(generation)
    }

    /// With the rules directory changed (its files now `dir`): the refused remote config,
    /// tried again with them; `true` when that set is active.
    fn apply_pending_remote(inner: &mut Inner, dir: &[(PathBuf, String)]) -> bool {
        let Some(remote) = inner.pending_remote.clone() else {
            return false;
        };
        let mut sources = dir.to_vec();
        sources.extend(remote.iter().cloned());
        let Some(agent) = inner.agent.as_mut() else {
            return false;
        };
        if install_sources(agent, &sources, true).is_err() {
            return false;
        }
        log::info!(
            "rules directory changed, and the remote config refused before applies with it: \
             generation {}",
            agent.generation()
        );
        inner.digest = Some(digest(&sources));
        inner.active_sources = sources;
        inner.remote = remote;
        inner.last_error = None;
        inner.pending_remote = None;
        inner.pending_applied = true;
        true
    }

    /// Whether the refused remote config applied since last asked (with a change of the rules
    /// directory): the OpAMP client then reports it applied.
    pub fn take_pending_applied(&self) -> bool {
        std::mem::take(&mut self.lock().pending_applied)
    }

    /// A remote config refused before it could be tried (its files' names or text): it stands
    /// as the refused change, as one [`Service::apply_remote`] refuses.
    pub fn refuse_remote(&self, why: &str) {
        let mut inner = self.lock();
        inner.last_error = Some(format!("a remote config was refused:\n{why}"));
        inner.refused_dir = false;
        // Nothing in it to try again.
        inner.pending_remote = None;
        inner.pending_applied = false;
    }

    /// The rule files the active generation was compiled from, as (name, text): a file of the
    /// rules directory by its file name, a remote one by its `opamp/NAME.toml` label.
    pub fn effective_config(&self) -> Vec<(String, String)> {
        let inner = self.lock();
        inner
            .active_sources
            .iter()
            .map(|(p, text)| {
                let name = match p.strip_prefix(&self.rules_dir) {
                    Ok(rel) => rel.to_string_lossy().into_owned(),
                    Err(_) => p.to_string_lossy().into_owned(),
                };
                (name, text.clone())
            })
            .collect()
    }

    /// Its programs' run time, runs and waits for pages so far, and the enable epoch (see
    /// [`crate::ceiling`]); `None` once uninstalled.
    pub fn run_time(&self) -> Option<crate::ceiling::Sample> {
        self.lock().agent.as_ref().map(|a| {
            let (ns, runs, waited_ns) = a.run_time();
            crate::ceiling::Sample {
                ns,
                runs,
                waited_ns,
                epoch: a.enabled_epoch(),
            }
        })
    }

    /// Keeps the ceiling's last measurement for `stats`; with `trip`, pulls the rip cord for
    /// that reason, unless it is pulled already or the agent is stopping. Returns the reason
    /// when it pulled it.
    pub fn record_cost(
        &self,
        cost: crate::stats::CostStats,
        trip: Option<String>,
    ) -> Option<String> {
        let mut inner = self.lock();
        let stopping = inner.stopping;
        let agent = inner.agent.as_mut()?;
        agent.set_cost(cost);
        let reason = trip?;
        if stopping || !agent.summary().is_ok_and(|s| s.enabled) {
            return None;
        }
        match agent.trip(reason.clone()) {
            Ok(()) => Some(reason),
            Err(e) => {
                log::error!("ceiling: could not pull the rip cord: {e:#}");
                None
            }
        }
    }

    /// Whether the agent is attached and filtering, or why not.
    pub fn health(&self) -> Health {
        let inner = self.lock();
        let last_error = inner.last_error.clone();
        let (healthy, status) = match &inner.agent {
            None => (false, "uninstalled: the agent is stopping".to_string()),
            Some(_) if inner.stopping => (
                false,
                "stopping: every request passes until the agent has detached".to_string(),
            ),
            Some(agent) => match agent.summary() {
                Err(e) => (false, format!("error: reading the kernel's state: {e:#}")),
                Ok(s) if !s.enabled => (
                    false,
                    format!(
                        "disabled: {}",
                        s.disabled_reason
                            .as_deref()
                            .unwrap_or("the rip cord is pulled")
                    ),
                ),
                Ok(_) if agent.active_count() == 0 => (
                    false,
                    "no rules: attached, but the rule set is empty".to_string(),
                ),
                Ok(s) => (
                    true,
                    format!(
                        "filtering: attached, generation {}, {} rules",
                        s.generation,
                        agent.active_count()
                    ),
                ),
            },
        };
        Health {
            healthy,
            status,
            last_error,
        }
    }

    /// Watches the rules directory and reloads on changes, until the returned watcher drops.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<impl Drop> {
        use notify_debouncer_mini::{DebounceEventResult, new_debouncer, notify::RecursiveMode};
        let service = Arc::downgrade(self);
        let mut debouncer = new_debouncer(
            Duration::from_millis(100),
            move |res: DebounceEventResult| {
                if res.is_err() {
                    return;
                }
                if let Some(d) = service.upgrade() {
                    d.reload_from_dir();
                }
            },
        )
        .context("starting the rules directory watcher")?;
        debouncer
            .watcher()
            .watch(&self.rules_dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", self.rules_dir.display()))?;
        Ok(debouncer)
    }

    /// The agent, for dropping at exit (drain and detach, or keep the pins).
    pub fn take_agent(&self) -> Option<Agent> {
        self.lock().agent.take()
    }
}

/// What [`Service::health`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Attached, enabled, and some rules are active.
    pub healthy: bool,
    /// `filtering: …`, or why not (`disabled: …`, `no rules: …`, `stopping: …`, `error: …`).
    pub status: String,
    /// Why the last change of the rule set was refused (the active set stayed), if it was.
    pub last_error: Option<String>,
}

/// The label of a remote rule file: `opamp/NAME`.
pub const REMOTE_LABEL: &str = "opamp";

/// The remote part of a rule set from a remote config's entries `(name, text)`: the `*.toml`
/// ones, in name order, labelled `opamp/NAME` (other entries are not rule files and are left
/// out). A `.toml` name that is not a plain file name (a `/`, or a leading `.`) is an error.
pub fn remote_sources(
    entries: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(PathBuf, String)>, RuleErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in entries {
        if !name.ends_with(".toml") {
            continue;
        }
        let label = Path::new(REMOTE_LABEL).join(&name);
        if name.contains('/') || name.starts_with('.') || name == ".toml" {
            errors.push(rules::Diagnostic::new(
                &label,
                rules::Pos::START,
                "a remote rule file's name must be a plain file name ending in .toml (no `/`, \
                 not starting with a dot)",
            ));
            continue;
        }
        out.push((label, text));
    }
    if !errors.is_empty() {
        return Err(RuleErrors(errors));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The rule files of `dir` ([`rules::rule_files`]) with their text.
fn read_sources(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let files = rules::rule_files(dir).map_err(|d| anyhow!("{d}"))?;
    let mut out = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => out.push((f, text)),
            // Removed between the listing and the read: gone from the set.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("reading {}: {e}", f.display()),
        }
    }
    Ok(out)
}

/// Makes the rule files `sources` (labels and texts) the agent's active set: read, checked
/// against the kernel first when `check` (its features, the probes attaching), compiled and
/// installed as one generation. On any error the active set stays.
fn install_sources(
    agent: &mut Agent,
    sources: &[(PathBuf, String)],
    check: bool,
) -> anyhow::Result<()> {
    let defs = rules::load_sources(sources).map_err(RuleErrors)?;
    if check {
        agent.check_defs(&defs)?;
    }
    let (compiled, slots) = agent.compile_defs(&defs)?;
    agent.install_compiled(&compiled, slots)
}

fn digest(sources: &[(PathBuf, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    for (p, text) in sources {
        p.hash(&mut h);
        text.hash(&mut h);
    }
    h.finish()
}

impl Handler for Arc<Service> {
    fn answer(&self, request: Request) -> Response {
        let result = match request {
            Request::Stats => self.stats().map(|s| Response {
                stats: Some(s),
                ..Response::ok()
            }),
            Request::Rules => self.rules().map(|r| Response {
                rules: Some(r),
                ..Response::ok()
            }),
            Request::Push { files } => self.push(&files).map(|(g, unchanged)| Response {
                generation: Some(g),
                unchanged,
                ..Response::ok()
            }),
            Request::Disable => self.set_enabled(false).map(|_| Response::ok()),
            Request::Enable => self.set_enabled(true).map(|_| Response::ok()),
            Request::Uninstall => self.uninstall().map(|u| Response {
                uninstall: Some(u),
                ..Response::ok()
            }),
            Request::UninstallNow => self.uninstall_now().map(|u| Response {
                uninstall: Some(u),
                ..Response::ok()
            }),
            Request::Flush { recorders } => self.flush(&recorders).map(|f| Response {
                flushed: Some(f),
                ..Response::ok()
            }),
            Request::State { name, on, for_ms } => self
                .set_state(&name, on, for_ms.map(Duration::from_millis))
                .map(|_| Response::ok()),
        };
        result.unwrap_or_else(|e| Response::error(format!("{e:#}")))
    }

    fn stop(&self) {
        {
            let mut inner = self.lock();
            if inner.lingering {
                // The thread below stops the agent.
                return;
            }
            if inner.cut_short.is_some() {
                // A waiting `uninstall` asks again within 200 ms: it is told its wait was cut
                // short (and what was lost) instead of finding the agent gone, as after a wait
                // that ended well. Then the news is old: a later `uninstall` (an agent that
                // stays up, `idle_after_uninstall`) is not told.
                inner.lingering = true;
                let me = self.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(CUT_SHORT_LINGER);
                    {
                        let mut inner = me.lock();
                        inner.cut_short = None;
                        inner.lingering = false;
                    }
                    me.shutdown.notify_one();
                });
                return;
            }
        }
        self.shutdown.notify_one();
    }
}
