//! The one path every state change takes: lock the state, read and check it, change it, write the changes
//! through to the store, broadcast the events, then await a durable commit (group commit) before the caller
//! acknowledges anything.

use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;

use super::Scheduler;
use super::error::{SchedulerError, SchedulerResult};
use super::state::State;
use crate::store::{Store, StoreError};

/// The state under the scheduler's lock for one change, plus the store to write through to.
pub(super) struct Transaction<'a> {
    state: MutexGuard<'a, State>,
    store: &'a dyn Store,
    /// Whether the change wrote to the store beyond the jobs and audit entries the state tracks.
    wrote_to_store: bool,
}

impl<'a> Transaction<'a> {
    /// The store for a write the state does not track (an experiment, a worker, a config, an artifact, a
    /// token): the transaction then commits durably.
    pub(super) fn write(&mut self) -> &'a dyn Store {
        self.wrote_to_store = true;
        self.store
    }

    /// The store for reads.
    pub(super) fn read(&self) -> &'a dyn Store {
        self.store
    }

    /// Commits durably even though nothing was written under the lock: what the caller wrote just before the
    /// transaction (metric batches) must be durable before it is acknowledged.
    pub(super) fn commit_earlier_writes(&mut self) {
        self.wrote_to_store = true;
    }
}

impl Deref for Transaction<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Scheduler {
    /// Runs `change` under the state lock. When it succeeds, every job it changed and every audit entry it
    /// added is written to the store, its events are broadcast and lease waiters woken (still under the lock,
    /// so events go out in the order of the changes); then, if anything was written, the store commits
    /// durably before this returns. When `change` fails nothing is written and its error is returned.
    pub(super) async fn transact<T>(
        &self,
        change: impl FnOnce(&mut Transaction<'_>) -> SchedulerResult<T>,
    ) -> SchedulerResult<T> {
        let (value, must_commit) = {
            let mut transaction = Transaction {
                state: self.lock(),
                store: &*self.store,
                wrote_to_store: false,
            };
            let value = change(&mut transaction)?;
            let wrote_state = self.write_through(&mut transaction.state)?;
            self.publish(&mut transaction.state);
            (value, wrote_state || transaction.wrote_to_store)
        };
        if must_commit {
            self.store
                .commit()
                .await
                .map_err(|e| SchedulerError::Store(StoreError::Commit(e)))?;
        }
        Ok(value)
    }

    /// Reads the state under the lock without changing it.
    pub(super) fn read<T>(&self, look: impl FnOnce(&State) -> T) -> T {
        look(&self.lock())
    }

    /// Writes every job changed under the lock and the new audit entries; returns whether it wrote any.
    fn write_through(&self, state: &mut State) -> SchedulerResult<bool> {
        let mut dirty = std::mem::take(&mut state.dirty_jobs);
        dirty.sort();
        dirty.dedup();
        let mut wrote = false;
        for id in dirty {
            if let Some(job) = state.jobs.get(&id) {
                self.store.put_job(job)?;
                wrote = true;
            }
        }
        for entry in std::mem::take(&mut state.audit) {
            self.store.append_audit(&entry)?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Broadcasts the events of the change and wakes lease waiters if a job became ready.
    fn publish(&self, state: &mut State) {
        if !state.events.is_empty() {
            state.change_seq += 1;
        }
        let seq = state.change_seq;
        for event in std::mem::take(&mut state.events) {
            // Every metric batch is an event: update in place, allocating a key only for a job's first change.
            match state.changed_at.get_mut(&event.job_id) {
                Some(at) => *at = seq,
                None => {
                    state.changed_at.insert(event.job_id.clone(), seq);
                }
            }
            let _ = self.events.send(event);
        }
        if std::mem::take(&mut state.became_ready) {
            self.ready_notify.notify_waiters();
        }
    }
}
