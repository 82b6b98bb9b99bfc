//! Detaching uprobes without holding the agent up.
//!
//! Dropping a uprobe link returns once the kernel knows no handler of that uprobe still runs,
//! which it learns by waiting for every sleepable uprobe handler of the host to end. With
//! `uprobe_fault_in`, one of ours can sleep as long as a page it faults in takes to come, and
//! a page of a hung network file system or of a FUSE server that does not answer never comes:
//! the drop would wait until the process that logs dies. The agent drops links here, on a
//! thread of its own, and waits [`WAIT`] for them: long enough for the usual case, where a
//! push returns with its probes detached; past it, the push returns and the detach goes on
//! (logged), so `stats`, `rules`, health and the next push are not held behind it. The ids of
//! links being detached stay reserved until they are gone: a call through such a link must not
//! find another function's entry under its id.

use std::{
    collections::HashSet,
    sync::{Arc, Condvar, Mutex, mpsc},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use aya::programs::uprobe::UProbeLink;

/// How long a push waits for its detaches before it lets them go on in the background.
pub const WAIT: Duration = Duration::from_secs(2);

/// The ids being detached, and the condition their going signals.
type Pending = Arc<(Mutex<HashSet<u32>>, Condvar)>;

/// The thread that drops links, and what it has not dropped yet.
pub struct Detacher {
    /// `None` once the thread could not be reached (it panicked): links are dropped in place.
    tx: Option<mpsc::Sender<Vec<(u32, UProbeLink)>>>,
    pending: Pending,
}

impl Detacher {
    pub fn start() -> anyhow::Result<Detacher> {
        let (tx, rx) = mpsc::channel::<Vec<(u32, UProbeLink)>>();
        let pending: Pending = Arc::default();
        let done = pending.clone();
        thread::Builder::new()
            .name("uprobe-detach".into())
            .spawn(move || {
                for links in rx {
                    let ids: Vec<u32> = links.iter().map(|(id, _)| *id).collect();
                    drop(links);
                    let (set, cv) = &*done;
                    let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
                    for id in &ids {
                        set.remove(id);
                    }
                    cv.notify_all();
                }
            })
            .context("starting the uprobe detach thread")?;
        Ok(Detacher {
            tx: Some(tx),
            pending,
        })
    }

    /// Detaches `links`: returns once they are detached, or after [`WAIT`], leaving the rest
    /// to the thread (logged).
    pub fn detach(&mut self, links: Vec<(u32, UProbeLink)>) {
        if links.is_empty() {
            return;
        }
        let ids: Vec<u32> = links.iter().map(|(id, _)| *id).collect();
        let (set, cv) = &*self.pending;
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids.iter().copied());
        let unsent = match &self.tx {
            Some(tx) => tx.send(links).err().map(|e| e.0),
            None => Some(links),
        };
        if let Some(links) = unsent {
            // The thread is gone: drop them here.
            self.tx = None;
            drop(links);
            let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                set.remove(id);
            }
            return;
        }
        let set = set.lock().unwrap_or_else(|e| e.into_inner());
        let (set, timeout) = cv
            .wait_timeout_while(set, WAIT, |set| ids.iter().any(|id| set.contains(id)))
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            let left = ids.iter().filter(|id| set.contains(id)).count();
            log::warn!(
                "uprobes: detaching {left} function(s) has waited {WAIT:?} for the kernel, which \
                 detaches no uprobe while a probed call waits for a page of its message \
                 (uprobe_fault_in): it goes on in the background (stats: uprobes.detaching)"
            );
        }
    }

    /// The ids being detached now.
    pub fn pending_ids(&self) -> HashSet<u32> {
        self.pending
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
