//! Detaching uprobes without holding the agent up.
//!
//! Dropping a uprobe link returns once the kernel knows no handler of that uprobe still runs,
//! which it learns by waiting for every sleepable uprobe handler of the host to end. With
//! `uprobe_fault_in`, one of ours can sleep as long as a page it faults in takes to come, and
//! a page of a hung network file system or of a FUSE server that does not answer never comes:
//! the drop would wait until the process that logs dies. The agent drops each batch of links
//! on a thread of its own (a batch stuck behind one wait does not hold up later ones, which a
//! kernel that waits per uprobe detaches at once) and waits [`WAIT`] for it: long enough for
//! the usual case, where a push returns with its probes detached; past it, the push returns
//! and the detach goes on (logged), so `stats`, `rules`, health and the next push are not held
//! behind it. The ids of links being detached stay reserved until they are gone: a call
//! through such a link must not find another function's entry under its id.

use std::{
    collections::HashSet,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use aya::programs::uprobe::UProbeLink;

/// How long a push waits for its detaches before it lets them go on in the background.
pub const WAIT: Duration = Duration::from_secs(2);

/// The ids being detached, and the condition their going signals.
type Pending = Arc<(Mutex<HashSet<u32>>, Condvar)>;

/// The links being detached.
#[derive(Default)]
pub struct Detacher {
    pending: Pending,
}

/// Takes its ids out of the pending set when dropped: after its links, even if dropping one
/// panicked.
struct Batch {
    links: Vec<UProbeLink>,
    ids: Vec<u32>,
    pending: Pending,
}

impl Drop for Batch {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.links));
        let (set, cv) = &*self.pending;
        let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            set.remove(id);
        }
        cv.notify_all();
    }
}

impl Detacher {
    /// Detaches `links` (with their ids): returns once they are detached, or after [`WAIT`],
    /// leaving the rest to their thread (logged).
    pub fn detach(&self, links: Vec<(u32, UProbeLink)>) {
        if links.is_empty() {
            return;
        }
        let (ids, links): (Vec<u32>, Vec<UProbeLink>) = links.into_iter().unzip();
        let (set, cv) = &*self.pending;
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids.iter().copied());
        let batch = Batch {
            links,
            ids: ids.clone(),
            pending: self.pending.clone(),
        };
        // Dropped on its thread; if no thread can be started, the closure goes, and the batch
        // with it, here.
        if let Err(e) = thread::Builder::new()
            .name("uprobe-detach".into())
            .spawn(move || drop(batch))
        {
            log::warn!("uprobes: no thread to detach on ({e}); detached in place");
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

/// Going (the agent detaches everything: it exits, or uninstalls) waits for the detaches still
/// going on, so that "nothing of dt is attached" is true when it is said.
impl Drop for Detacher {
    fn drop(&mut self) {
        let (set, cv) = &*self.pending;
        let set = set.lock().unwrap_or_else(|e| e.into_inner());
        if set.is_empty() {
            return;
        }
        log::warn!(
            "uprobes: waiting for the kernel to detach {} function(s) (a probed call waits for a \
             page of its message: uprobe_fault_in)",
            set.len()
        );
        let _done = cv
            .wait_while(set, |set| !set.is_empty())
            .unwrap_or_else(|e| e.into_inner());
    }
}
