//! The running agent: one [`Agent`] behind a lock, and everything that changes it — pushes,
//! directory reloads, the rip cord, uninstall — each applied whole or not at all — and the
//! drain before the agent detaches (see [`crate::drain`]).

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    Agent, Stats,
    agent::RuleErrors,
    control::{PushedFile, RuleInfo, RulesInfo},
    drain::{self, Holding, UninstallStatus},
    rules,
};

/// How often a waiting agent looks again whether requests are still held.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The agent and its rules directory.
pub struct Daemon {
    inner: Mutex<Inner>,
    rules_dir: PathBuf,
    /// Told when the agent should stop (after `uninstall`).
    pub shutdown: tokio::sync::Notify,
}

struct Inner {
    /// `None` once uninstalled.
    agent: Option<Agent>,
    /// Digest of the rule files the active generation was compiled from.
    digest: u64,
    /// The active rules, for `rules`.
    active: Vec<RuleInfo>,
    /// The agent is about to detach: everything passes, and nothing may turn filtering on.
    stopping: bool,
    /// `uninstall` has begun (it waits for held requests, then detaches and unpins).
    uninstalling: bool,
    /// Why the uninstall failed, once it has.
    uninstall_error: Option<String>,
}

impl Daemon {
    /// Wraps a started agent whose rule set came from `rules_dir`.
    pub fn new(agent: Agent, rules_dir: PathBuf) -> anyhow::Result<Arc<Daemon>> {
        let sources = read_sources(&rules_dir)?;
        let active = agent.active_rules_info();
        Ok(Arc::new(Daemon {
            inner: Mutex::new(Inner {
                agent: Some(agent),
                digest: digest(&sources),
                active,
                stopping: false,
                uninstalling: false,
                uninstall_error: None,
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
        let agent = inner
            .agent
            .as_mut()
            .ok_or_else(|| anyhow!("dt was uninstalled; the agent is stopping"))?;
        f(agent)
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        self.with_agent(|a| a.stats())
    }

    pub fn rules(&self) -> anyhow::Result<RulesInfo> {
        let inner = self.lock();
        let agent = inner
            .agent
            .as_ref()
            .ok_or_else(|| anyhow!("dt was uninstalled; the agent is stopping"))?;
        let stats = agent.stats()?;
        Ok(RulesInfo {
            generation: stats.generation,
            enabled: stats.enabled,
            rules_dir: self.rules_dir.clone(),
            rules: inner.active.clone(),
        })
    }

    pub fn set_enabled(&self, enabled: bool) -> anyhow::Result<()> {
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

    /// `uninstall`: switches to pass-through, waits (in the background, with no deadline) until
    /// no request is held in the kernel, then detaches everything and removes every pin, and
    /// stops the agent. Answers at once with what it still waits for; ask again to follow it.
    /// Held requests complete meanwhile: nothing here blocks them.
    pub fn uninstall(self: &Arc<Self>) -> anyhow::Result<UninstallStatus> {
        let mut guard = self.lock();
        let inner: &mut Inner = &mut guard;
        if let Some(e) = &inner.uninstall_error {
            bail!("{e}");
        }
        let Some(agent) = inner.agent.as_mut() else {
            return Ok(UninstallStatus {
                done: true,
                waiting: Holding::default(),
            });
        };
        if !inner.uninstalling {
            agent.begin_drain()?;
            let waiting = agent.holding()?;
            inner.stopping = true;
            inner.uninstalling = true;
            if waiting.is_empty() {
                finish_uninstall(inner)?;
                return Ok(UninstallStatus {
                    done: true,
                    waiting,
                });
            }
            log::info!(
                "uninstall: every request passes now; waiting until no request is held, then \
                 detaching and removing every pin: {waiting}"
            );
            let d = self.clone();
            std::thread::spawn(move || d.uninstall_when_drained());
            return Ok(UninstallStatus {
                done: false,
                waiting,
            });
        }
        let waiting = agent.holding()?;
        Ok(UninstallStatus {
            done: false,
            waiting,
        })
    }

    /// The background half of `uninstall`: wait, detach, unpin, stop.
    fn uninstall_when_drained(&self) {
        let mut next_log = Instant::now() + drain::LOG_EVERY;
        loop {
            {
                let mut inner = self.lock();
                let Some(agent) = inner.agent.as_ref() else {
                    return;
                };
                match agent.holding() {
                    Ok(h) if !h.is_empty() => {
                        if Instant::now() >= next_log {
                            log::info!("uninstall: waiting before detaching: {h}");
                            next_log = Instant::now() + drain::LOG_EVERY;
                        }
                    }
                    held => {
                        if let Err(e) = held {
                            log::warn!("uninstall: cannot read the held requests ({e:#})");
                        }
                        if let Err(e) = finish_uninstall(&mut inner) {
                            log::error!("uninstall: {e:#}");
                            inner.uninstall_error = Some(format!("{e:#}"));
                        }
                        drop(inner);
                        self.shutdown.notify_one();
                        return;
                    }
                }
            }
            std::thread::sleep(DRAIN_POLL);
        }
    }

    /// Before an exit on SIGINT/SIGTERM: an unpinned agent (or one being uninstalled) switches
    /// to pass-through and waits, with no deadline, until no request is held, saying every few
    /// seconds who holds one; then the agent can be dropped without losing anyone's bytes.
    /// When `force` completes first (a second signal), it stops waiting: dropping the agent
    /// then detaches at once and the held requests are lost. A pinned agent that is not being
    /// uninstalled returns at once: its programs stay, and so do the held requests.
    pub async fn drain_before_exit(&self, force: impl std::future::Future<Output = ()>) {
        {
            let mut inner = self.lock();
            let uninstalling = inner.uninstalling;
            let Some(agent) = inner.agent.as_mut() else {
                return;
            };
            if agent.pins().is_some() && !uninstalling {
                log::info!("stopping: programs and maps stay pinned; filtering goes on");
                return;
            }
            if !uninstalling && let Err(e) = agent.begin_drain() {
                log::warn!("{e:#}");
            }
            inner.stopping = true;
        }
        log::info!(
            "stopping: every request passes now; waiting until no request is held, then \
             detaching (SIGINT/SIGTERM again: detach at once, and the held requests are lost)"
        );
        tokio::pin!(force);
        let mut next_log = Instant::now();
        loop {
            {
                let mut inner = self.lock();
                let uninstalling = inner.uninstalling;
                let Some(agent) = inner.agent.as_mut() else {
                    return;
                };
                match agent.holding() {
                    // An uninstall in progress detaches and unpins by itself, then drops the
                    // agent: wait for that.
                    Ok(h) if h.is_empty() && !uninstalling => return,
                    Ok(h) if h.is_empty() => {}
                    Ok(h) => {
                        if Instant::now() >= next_log {
                            log::info!("waiting before detaching: {h}");
                            next_log = Instant::now() + drain::LOG_EVERY;
                        }
                    }
                    Err(e) => {
                        log::warn!("cannot read the held requests ({e:#}); detaching");
                        return;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = &mut force => {
                    let mut guard = self.lock();
                    let inner: &mut Inner = &mut guard;
                    if let Some(agent) = inner.agent.as_mut() {
                        if let Ok(h) = agent.holding() {
                            log::warn!("stopping at once: the held requests are lost: {h}");
                        }
                        agent.skip_drain();
                        if inner.uninstalling && agent.pins().is_some() {
                            log::warn!(
                                "the uninstall was cut short: the pins stay, with every request \
                                 passing (`dt-agent enable` filters again, `dt-agent uninstall` \
                                 removes them)"
                            );
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Validates the rule set that `files` would make (the directory's files, those of the same
    /// name replaced), kernel checks included; only then writes the files and makes that set
    /// active as one new generation. On any error nothing is written.
    pub fn push(&self, files: &[PushedFile]) -> anyhow::Result<u64> {
        let mut inner = self.lock();
        if inner.stopping {
            bail!("the agent is stopping (it waits for held requests, then detaches)");
        }
        let mut sources = read_sources(&self.rules_dir)?;
        let mut names = Vec::new();
        for f in files {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".toml") && !n.starts_with('.'))
                .ok_or_else(|| {
                    anyhow!(
                        "{}: a rule file's name must end in .toml (and not start with a dot)",
                        f.path.display()
                    )
                })?;
            // The pushed file replaces the directory's file of that name; errors name the path
            // the user gave.
            sources.retain(|(p, _)| {
                p.file_name().map(|n| n.to_string_lossy()) != Some(name.as_str().into())
            });
            sources.push((f.path.clone(), f.text.clone()));
            names.push(name);
        }
        sources.sort_by_key(|(p, _)| p.file_name().map(|n| n.to_owned()));
        let agent = inner
            .agent
            .as_mut()
            .ok_or_else(|| anyhow!("dt was uninstalled; the agent is stopping"))?;
        let defs = rules::load_sources(&sources).map_err(RuleErrors)?;
        // Kernel checks included, and every probe the rules use attaches (then detaches again).
        agent.check_defs(&defs)?;
        // Valid: write every file (each atomically, by rename), then install the set as the
        // directory now holds it (so `rules` names the installed files).
        for (f, name) in files.iter().zip(&names) {
            let target = self.rules_dir.join(name);
            let tmp = self.rules_dir.join(format!(".{name}.dt-push"));
            std::fs::write(&tmp, &f.text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &target)
                .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
        }
        let installed = read_sources(&self.rules_dir)?;
        let defs = rules::load_sources(&installed).map_err(RuleErrors)?;
        let (compiled, slots) = agent.compile_defs(&defs)?;
        agent.install_compiled(&compiled, slots)?;
        let (active, generation) = (agent.active_rules_info(), agent.generation());
        inner.active = active;
        // What is in the directory now is what is active: the watcher's event for these writes
        // finds nothing new.
        inner.digest = digest(&installed);
        log::info!("pushed {}: generation {generation}", names.join(", "));
        Ok(generation)
    }

    /// Re-reads the rules directory; when its files changed, compiles them and makes them the
    /// active set. An invalid set is logged (`file:line:column: message`) and the active one
    /// stays.
    pub fn reload_from_dir(&self) {
        let mut inner = self.lock();
        let sources = match read_sources(&self.rules_dir) {
            Ok(s) => s,
            Err(e) => {
                log::error!("rules directory: {e:#}; the active rule set stays");
                return;
            }
        };
        let d = digest(&sources);
        if d == inner.digest {
            return;
        }
        let Some(agent) = inner.agent.as_mut() else {
            return;
        };
        let result = rules::load_sources(&sources)
            .map_err(|d| anyhow::Error::new(RuleErrors(d)))
            .and_then(|defs| agent.compile_defs(&defs))
            .and_then(|(compiled, slots)| agent.install_compiled(&compiled, slots));
        match result {
            Ok(()) => {
                inner.active = inner
                    .agent
                    .as_ref()
                    .map(|a| a.active_rules_info())
                    .unwrap_or_default();
                inner.digest = d;
                log::info!(
                    "rules directory changed: generation {}",
                    inner.agent.as_ref().map_or(0, |a| a.generation())
                );
            }
            Err(e) => {
                // Remember the digest: the same broken files are not reported again.
                inner.digest = d;
                match e.downcast_ref::<RuleErrors>() {
                    Some(errors) => {
                        for d in &errors.0 {
                            log::error!("{d}");
                        }
                        log::error!("the rules directory is invalid; the active rule set stays");
                    }
                    None => log::error!("reloading the rules: {e:#}; the active rule set stays"),
                }
            }
        }
    }

    /// Watches the rules directory and reloads on changes, until the returned watcher drops.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<impl Drop> {
        use notify_debouncer_mini::{DebounceEventResult, new_debouncer, notify::RecursiveMode};
        let daemon = Arc::downgrade(self);
        let mut debouncer = new_debouncer(
            Duration::from_millis(100),
            move |res: DebounceEventResult| {
                if res.is_err() {
                    return;
                }
                if let Some(d) = daemon.upgrade() {
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

/// Detaches everything, removes every pin, and drops the agent.
fn finish_uninstall(inner: &mut Inner) -> anyhow::Result<()> {
    if let Some(mut agent) = inner.agent.take() {
        agent.uninstall()?;
        drop(agent);
    }
    log::info!("uninstalled: nothing of dt is attached or pinned any more");
    Ok(())
}

/// The `*.toml` files of `dir` (not starting with '.'), in name order, with their text.
fn read_sources(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
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

fn digest(sources: &[(PathBuf, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    for (p, text) in sources {
        p.file_name().hash(&mut h);
        text.hash(&mut h);
    }
    h.finish()
}
