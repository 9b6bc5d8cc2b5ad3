//! Which metric names each job has logged, kept in memory beside the state: the dashboard chooses its panels and
//! finds a curve's jobs from it instead of decoding every job's stored batches on each refresh.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message;
use tandem_proto as pb;

use super::Scheduler;
use super::error::{SchedulerError, SchedulerResult};

/// A job's names, read from the store on first use and extended as its batches arrive.
#[derive(Default)]
pub(super) struct MetricNames {
    known: Mutex<HashMap<String, Arc<BTreeSet<String>>>>,
}

impl MetricNames {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<BTreeSet<String>>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the names of a batch just stored. A job not read yet is left out: its first read sees the batch in the
    /// store.
    pub(super) fn add<'a>(&self, job_id: &str, names: impl IntoIterator<Item = &'a String>) {
        let mut known = self.lock();
        if let Some(set) = known.get_mut(job_id) {
            let new: Vec<&String> = names.into_iter().filter(|n| !set.contains(*n)).collect();
            if !new.is_empty() {
                Arc::make_mut(set).extend(new.into_iter().cloned());
            }
        }
    }
}

impl Scheduler {
    /// The names of the metrics `job_id` has logged. The first call reads the job's stored batches (under the
    /// index's lock, so a batch stored meanwhile is either read or added after); later calls cost a lookup.
    pub fn metric_names(&self, job_id: &str) -> SchedulerResult<Arc<BTreeSet<String>>> {
        let mut known = self.metric_names.lock();
        if let Some(names) = known.get(job_id) {
            return Ok(names.clone());
        }
        let mut names = BTreeSet::new();
        for (_, encoded) in self.store.metric_batches(job_id)? {
            let batch = pb::MetricBatch::decode(encoded.as_slice()).map_err(|e| {
                SchedulerError::DataLoss(format!(
                    "stored metric batch of {job_id} undecodable: {e}"
                ))
            })?;
            names.extend(batch.points.into_iter().map(|point| point.name));
        }
        let names = Arc::new(names);
        known.insert(job_id.to_string(), names.clone());
        Ok(names)
    }
}
