//! Stopping the running agent: `uninstall` (pass-through, wait for held requests in the
//! background, then detach and unpin) and the wait before an exit on SIGINT/SIGTERM.

use std::{sync::Arc, time::Instant};

use anyhow::bail;

use super::{DRAIN_POLL, Inner, Service};
use crate::drain::{self, Holding, UninstallStatus};

impl Service {
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
                cut_short: inner.cut_short.clone(),
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
                    cut_short: None,
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
                cut_short: None,
            });
        }
        let waiting = agent.holding()?;
        Ok(UninstallStatus {
            done: false,
            waiting,
            cut_short: None,
        })
    }

    /// `uninstall --now`: as [`Service::uninstall`], without waiting for held requests (a
    /// sender that never finishes its request would make `uninstall` wait for ever): they are
    /// lost, and logged with who held them. Also cuts short an uninstall that is waiting.
    pub fn uninstall_now(self: &Arc<Self>) -> anyhow::Result<UninstallStatus> {
        let mut guard = self.lock();
        let inner: &mut Inner = &mut guard;
        if let Some(e) = &inner.uninstall_error {
            bail!("{e}");
        }
        let Some(agent) = inner.agent.as_mut() else {
            return Ok(UninstallStatus {
                done: true,
                waiting: Holding::default(),
                cut_short: None,
            });
        };
        let cuts_a_wait = inner.uninstalling;
        if !inner.stopping
            && let Err(e) = agent.begin_drain()
        {
            log::warn!("{e:#}");
        }
        let lost = agent.holding().unwrap_or_default();
        if !lost.is_empty() {
            log::warn!("uninstall --now: detaching at once; the held requests are lost: {lost}");
        }
        agent.skip_drain();
        inner.stopping = true;
        inner.uninstalling = true;
        finish_uninstall(inner)?;
        if cuts_a_wait && !lost.is_empty() {
            inner.cut_short = Some(lost.clone());
        }
        // The control server stops the agent once this answer is written.
        Ok(UninstallStatus {
            done: true,
            waiting: lost,
            cut_short: None,
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
}

/// Detaches everything, removes every pin, and drops the agent. A failure is kept: the next
/// `uninstall` answers it, and `run` exits with it.
fn finish_uninstall(inner: &mut Inner) -> anyhow::Result<()> {
    if let Some(mut agent) = inner.agent.take()
        && let Err(e) = agent.uninstall()
    {
        inner.uninstall_error = Some(format!("{e:#}"));
        return Err(e);
    }
    inner.uninstalled = true;
    log::info!("uninstalled: nothing of dt is attached or pinned any more");
    Ok(())
}
