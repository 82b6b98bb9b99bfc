//! Detaching: the drain before it (pass-through, then waiting with no deadline until no request
//! is held corked), `uninstall` (detach everything and remove every pin), and what dropping an
//! agent does, pinned or not.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Agent, pins::remove_pins};
use crate::{drain, hooks::otlp::SockOpsAttachment};

impl Agent {
    /// Switches to pass-through: requests that are not held yet will not be, and the rip cord
    /// stays pulled in the pinned state. The first step of every detach.
    pub fn begin_drain(&mut self) -> anyhow::Result<()> {
        self.set_stopping()
            .context("switching to pass-through before detaching")
    }

    /// Switches to pass-through and waits, with no deadline, until no request is held corked,
    /// so that detaching frees no one's bytes. Says every few seconds who it waits for.
    fn drain(&mut self) {
        if let Err(e) = self.begin_drain() {
            log::warn!("{e:#}");
            return;
        }
        let mut next_log = Instant::now();
        loop {
            let h = match self.holding() {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("cannot read the held requests ({e:#}); detaching");
                    return;
                }
            };
            if h.is_empty() {
                return;
            }
            if Instant::now() >= next_log {
                log::info!("waiting before detaching: {h}");
                next_log = Instant::now() + drain::LOG_EVERY;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes dropping this agent detach at once, without waiting for held requests (they are
    /// lost): the forced stop.
    pub fn skip_drain(&mut self) {
        self.no_drain = true;
    }

    /// Detaches everything and removes every pin: nothing of dt stays in the kernel once the
    /// agent is dropped. Requests already corked are drained first.
    pub fn uninstall(&mut self) -> anyhow::Result<()> {
        if !self.no_drain {
            self.drain();
        }
        // Dropping the sk_msg link detaches the program from the SockHash.
        drop(self.sk_msg.take());
        if let Some(att) = self.sock_ops.take() {
            match att {
                SockOpsAttachment::Pinned(link) => {
                    // Unpinned and dropped: the link, and the program, go.
                    drop(link.unpin().context("unpinning the sock_ops link")?);
                }
                SockOpsAttachment::Owned(link) => drop(link),
            }
        }
        if let Some(dir) = self.pins.take() {
            remove_pins(&dir)?;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        crate::export::own::unregister(self.id);
        // The flusher goes first (it reads the maps).
        self.flusher = None;
        if self.pins.is_some() {
            // Pinned: everything stays attached and filtering goes on; the next agent adopts it.
            // The sk_msg attachment is not a pinnable link and would detach on drop: keep it.
            if let Some(link) = self.sk_msg.take() {
                std::mem::forget(link);
            }
            return;
        }
        if !self.no_drain {
            self.drain();
        }
        // Dropping the links, the Ebpf object and the SockHash detaches the programs and frees
        // the maps.
    }
}
