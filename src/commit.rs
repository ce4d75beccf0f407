//! Group commit: many writers share one disk sync.
//!
//! A writer first writes to the store, then calls [`GroupCommit::wait_durable`]. It waits for
//! the first sync that *started* after its write, because a sync already running may have
//! begun before the write. One thread runs the syncs back to back while anyone waits, so a
//! lone writer is never delayed by a timer and a crowd of writers pays for about two syncs.
//!
//! A failed sync is sticky: after fsync reports an error, Linux may have dropped the dirty
//! pages, so nothing written since can be trusted to reach the disk. Every later wait fails
//! and the service must be restarted.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::store::Store;

/// Handle to the sync thread. Dropping the last handle stops the thread after its current sync.
pub struct GroupCommit {
    shared: Arc<Shared>,
    done: watch::Receiver<Progress>,
    thread: Option<JoinHandle<()>>,
}

/// Whether waits pay for a real disk sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every wait returns after an fsync of the store's data file that covers the write.
    Fsync,
    /// Writes are handed to the OS without a disk sync: they survive a crash of the process but
    /// not a power loss. Meant for benchmarks that measure the cost of durability.
    OsBuffers,
}

/// A sync failure, shared by every waiter it affects.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store sync failed, restart the service to recover: {0}")]
pub struct SyncFailed(Arc<String>);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Highest sync number any writer waits for.
    requested: u64,
    /// Number of the last sync the thread started.
    started: u64,
    stopping: bool,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    completed: u64,
    failure: Option<SyncFailed>,
}

impl GroupCommit {
    /// Starts the sync thread for `store`.
    pub fn start(store: Arc<Store>, durability: Durability) -> GroupCommit {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { requested: 0, started: 0, stopping: false }),
            wake: Condvar::new(),
        });
        let (done_tx, done) = watch::channel(Progress::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("store-sync".to_owned())
            .spawn(move || run_syncs(&thread_shared, &store, durability, &done_tx))
            .expect("spawning the store sync thread");
        GroupCommit { shared, done, thread: Some(thread) }
    }

    /// Waits until everything written to the store before this call is durable.
    pub async fn wait_durable(&self) -> Result<(), SyncFailed> {
        let ticket = {
            let mut state = self.shared.state.lock().expect("sync state lock poisoned");
            let ticket = state.started + 1;
            state.requested = state.requested.max(ticket);
            ticket
        };
        self.shared.wake.notify_one();
        let mut done = self.done.clone();
        let progress = done
            .wait_for(|progress| progress.completed >= ticket || progress.failure.is_some())
            .await
            .map_err(|_| SyncFailed(Arc::new("the sync thread has stopped".to_owned())))?;
        match &progress.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stopping = true;
        }
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_syncs(
    shared: &Shared,
    store: &Store,
    durability: Durability,
    done: &watch::Sender<Progress>,
) {
    loop {
        let number = {
            let mut state = shared.state.lock().expect("sync state lock poisoned");
            while state.requested <= state.started && !state.stopping {
                state = shared.wake.wait(state).expect("sync state lock poisoned");
            }
            if state.requested <= state.started {
                return;
            }
            state.started += 1;
            state.started
        };
        let result = match durability {
            Durability::Fsync => store.sync(),
            Durability::OsBuffers => store.flush_to_os(),
        };
        match result {
            Ok(()) => done.send_modify(|progress| progress.completed = number),
            Err(err) => {
                tracing::error!(error = %err, "store sync failed; no further trigger is acknowledged");
                done.send_modify(|progress| {
                    progress.failure = Some(SyncFailed(Arc::new(err.to_string())));
                });
                return;
            }
        }
    }
}
