//! The sled implementation of [`Store`]: one tree per record type, JSON values, metric batches keyed by
//! `job id \0 seq (big-endian)` so a resent batch is detected with one compare-and-swap, and the audit log indexed
//! by experiment and by job so one experiment's entries are read without the whole log.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::chaos::crash_point;
use serde::de::DeserializeOwned;

use super::{
    ArtifactRecord, AuditEntry, BlobStore, CommitWait, ExperimentRecord, GroupCommit, JobRecord,
    RungRecord, Store, StoreError, StoreResult, TokenRecord, WorkerRecord,
};

pub struct SledStore {
    db: sled::Db,
    experiments: sled::Tree,
    manifests: sled::Tree,
    jobs: sled::Tree,
    job_configs: sled::Tree,
    workers: sled::Tree,
    metrics: sled::Tree,
    artifacts: sled::Tree,
    audit: sled::Tree,
    /// `e <experiment id> \0 <entry id>` and `j <job id> \0 <entry id>` (ids big-endian) -> nothing: which audit
    /// entries name an experiment or a job; [`AUDIT_INDEX_BUILT`] once it covers the whole log.
    audit_index: sled::Tree,
    tokens: sled::Tree,
    /// `<sha256>/<team>` for each team that uploaded a blob's bytes (a digest alone proves nothing).
    blob_holders: sled::Tree,
    /// `<group> \0 <rung, big-endian> \0 <job id>` -> [`RungRecord`] (ASHA).
    rungs: sled::Tree,
    blobs: BlobStore,
    group: GroupCommit,
}

fn encode<T: Serialize>(tree: &'static str, value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| StoreError::Codec { tree, source })
}

fn decode_all<T: DeserializeOwned>(tree: &'static str, t: &sled::Tree) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for item in t.iter() {
        let (_, value) = item?;
        out.push(
            serde_json::from_slice(&value).map_err(|source| StoreError::Codec { tree, source })?,
        );
    }
    Ok(out)
}

/// Key of the id counter in sled's default tree.
const NEXT_ID_KEY: &[u8] = b"next_id";

/// Marks an audit index that covers every entry (a store from before the index gets it built on open).
const AUDIT_INDEX_BUILT: &[u8] = b"built";

/// `<kind> <name> \0`: the index prefix of one experiment (`b'e'`) or job (`b'j'`).
fn audit_prefix(kind: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 10);
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// The index keys of audit entry `id`.
fn audit_index_keys(entry: &AuditEntry, id: u64) -> Vec<Vec<u8>> {
    let named = [(b'e', &entry.experiment_id), (b'j', &entry.job_id)];
    named
        .into_iter()
        .filter_map(|(kind, name)| name.as_deref().map(|name| (kind, name)))
        .map(|(kind, name)| {
            let mut key = audit_prefix(kind, name);
            key.extend_from_slice(&id.to_be_bytes());
            key
        })
        .collect()
}

fn rung_prefix(group: &str, rung: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(&rung.to_be_bytes());
    key.push(0);
    key
}

fn metric_key(job_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(job_id.len() + 9);
    key.extend_from_slice(job_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl SledStore {
    /// Opens (or creates) the store in `dir`: `dir/db` for sled, `dir/blobs` for artifacts.
    pub fn open(dir: &Path) -> StoreResult<SledStore> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        let tree = |name: &str| db.open_tree(name);
        let store = SledStore {
            experiments: tree("experiments")?,
            manifests: tree("manifests")?,
            jobs: tree("jobs")?,
            job_configs: tree("job_configs")?,
            workers: tree("workers")?,
            metrics: tree("metrics")?,
            artifacts: tree("artifacts")?,
            audit: tree("audit")?,
            audit_index: tree("audit_index")?,
            tokens: tree("tokens")?,
            blob_holders: tree("blob_holders")?,
            rungs: tree("rungs")?,
            blobs: BlobStore::open(dir)?,
            group: {
                let flush_db = db.clone();
                GroupCommit::start(move || {
                    crash_point("store.before_flush");
                    let flushed = flush_db.flush().map(|_| ()).map_err(|e| e.to_string());
                    crash_point("store.after_flush");
                    flushed
                })
            },
            db,
        };
        store.build_audit_index()?;
        Ok(store)
    }

    /// Indexes every audit entry when the index does not cover the log yet (a store written before it existed,
    /// or a build cut short): cleared, rebuilt, then marked.
    fn build_audit_index(&self) -> StoreResult<()> {
        if self.audit_index.contains_key(AUDIT_INDEX_BUILT)? {
            return Ok(());
        }
        self.audit_index.clear()?;
        for item in self.audit.iter() {
            let (key, value) = item?;
            let entry: AuditEntry =
                serde_json::from_slice(&value).map_err(|source| StoreError::Codec {
                    tree: "audit",
                    source,
                })?;
            let id = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt(format!("audit entry key of {} bytes", key.len()))
            })?);
            for index_key in audit_index_keys(&entry, id) {
                self.audit_index.insert(index_key, &[])?;
            }
        }
        self.audit_index.insert(AUDIT_INDEX_BUILT, &[])?;
        self.db.flush()?;
        Ok(())
    }
}

impl Store for SledStore {
    fn put_experiment(&self, record: &ExperimentRecord) -> StoreResult<()> {
        self.experiments
            .insert(record.id.as_bytes(), encode("experiments", record)?)?;
        Ok(())
    }

    fn experiments(&self) -> StoreResult<Vec<ExperimentRecord>> {
        decode_all("experiments", &self.experiments)
    }

    fn put_manifest(&self, experiment_id: &str, manifest: &[u8]) -> StoreResult<()> {
        self.manifests.insert(experiment_id.as_bytes(), manifest)?;
        Ok(())
    }

    fn manifest(&self, experiment_id: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .manifests
            .get(experiment_id.as_bytes())?
            .map(|v| v.to_vec()))
    }

    fn put_job(&self, record: &JobRecord) -> StoreResult<()> {
        self.jobs
            .insert(record.id.as_bytes(), encode("jobs", record)?)?;
        Ok(())
    }

    fn jobs(&self) -> StoreResult<Vec<JobRecord>> {
        decode_all("jobs", &self.jobs)
    }

    fn scan_jobs(&self, visit: &mut dyn FnMut(JobRecord)) -> StoreResult<()> {
        for item in self.jobs.iter() {
            let (_, value) = item?;
            visit(
                serde_json::from_slice(&value).map_err(|source| StoreError::Codec {
                    tree: "jobs",
                    source,
                })?,
            );
        }
        Ok(())
    }

    fn job_count(&self) -> usize {
        self.jobs.len()
    }

    fn put_job_config(&self, job_id: &str, config: &[u8]) -> StoreResult<()> {
        self.job_configs.insert(job_id.as_bytes(), config)?;
        Ok(())
    }

    fn job_config(&self, job_id: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.job_configs.get(job_id.as_bytes())?.map(|v| v.to_vec()))
    }

    fn put_worker(&self, record: &WorkerRecord) -> StoreResult<()> {
        self.workers
            .insert(record.id.as_bytes(), encode("workers", record)?)?;
        Ok(())
    }

    fn workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        decode_all("workers", &self.workers)
    }

    fn insert_metric_batch(&self, job_id: &str, seq: u64, encoded: &[u8]) -> StoreResult<bool> {
        let key = metric_key(job_id, seq);
        let swapped = self
            .metrics
            .compare_and_swap(key, None as Option<&[u8]>, Some(encoded))?;
        Ok(swapped.is_ok())
    }

    fn metric_batches(&self, job_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let mut prefix = job_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.metrics.scan_prefix(&prefix) {
            let (key, value) = item?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&key[prefix.len()..]);
            out.push((u64::from_be_bytes(seq), value.to_vec()));
        }
        Ok(out)
    }

    fn put_artifact(&self, record: &ArtifactRecord) -> StoreResult<()> {
        let mut key = record.job_id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(record.name.as_bytes());
        self.artifacts.insert(key, encode("artifacts", record)?)?;
        Ok(())
    }

    fn artifacts(&self, job_id: &str) -> StoreResult<Vec<ArtifactRecord>> {
        let mut prefix = job_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.artifacts.scan_prefix(&prefix) {
            let (_, value) = item?;
            out.push(
                serde_json::from_slice(&value).map_err(|source| StoreError::Codec {
                    tree: "artifacts",
                    source,
                })?,
            );
        }
        Ok(out)
    }

    fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        use sled::Transactional;
        use sled::transaction::TransactionError;
        let id = self.db.generate_id()?;
        let value = encode("audit", entry)?;
        let index_keys = audit_index_keys(entry, id);
        // The entry and its index keys land together or not at all.
        (&self.audit, &self.audit_index)
            .transaction(|(audit, index)| {
                audit.insert(&id.to_be_bytes(), value.as_slice())?;
                for key in &index_keys {
                    index.insert(key.as_slice(), &[])?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Db(e),
                TransactionError::Abort(()) => StoreError::Corrupt("audit append aborted".into()),
            })
    }

    fn audit_entries(&self) -> StoreResult<Vec<AuditEntry>> {
        decode_all("audit", &self.audit)
    }

    fn audit_entries_of(
        &self,
        experiment_id: &str,
        job_ids: &[String],
    ) -> StoreResult<Vec<AuditEntry>> {
        let mut ids = BTreeSet::new();
        let prefixes = std::iter::once(audit_prefix(b'e', experiment_id))
            .chain(job_ids.iter().map(|job| audit_prefix(b'j', job)));
        for prefix in prefixes {
            for item in self.audit_index.scan_prefix(&prefix) {
                let (key, _) = item?;
                let id: [u8; 8] = key[prefix.len()..].try_into().map_err(|_| {
                    StoreError::Corrupt(format!("audit index key of {} bytes", key.len()))
                })?;
                ids.insert(id);
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(value) = self.audit.get(id)? else {
                return Err(StoreError::Corrupt(format!(
                    "audit index names entry {} that the log lacks",
                    u64::from_be_bytes(id)
                )));
            };
            out.push(
                serde_json::from_slice(&value).map_err(|source| StoreError::Codec {
                    tree: "audit",
                    source,
                })?,
            );
        }
        Ok(out)
    }

    fn put_token(&self, record: &TokenRecord) -> StoreResult<()> {
        self.tokens
            .insert(record.id.as_bytes(), encode("tokens", record)?)?;
        Ok(())
    }

    fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        decode_all("tokens", &self.tokens)
    }

    fn add_blob_holder(&self, sha256: &str, team: &str) -> StoreResult<()> {
        let key = format!("{sha256}/{team}");
        self.blob_holders
            .insert(key.as_bytes(), &super::now_ms().to_be_bytes())?;
        Ok(())
    }

    fn put_rung(&self, group: &str, record: &RungRecord) -> StoreResult<()> {
        let mut key = rung_prefix(group, record.rung);
        key.extend_from_slice(record.job_id.as_bytes());
        self.rungs.insert(key, encode("rungs", record)?)?;
        Ok(())
    }

    fn rungs(&self, group: &str, rung: u32) -> StoreResult<Vec<RungRecord>> {
        let mut out = Vec::new();
        for item in self.rungs.scan_prefix(rung_prefix(group, rung)) {
            let (_, value) = item?;
            out.push(
                serde_json::from_slice(&value).map_err(|source| StoreError::Codec {
                    tree: "rungs",
                    source,
                })?,
            );
        }
        Ok(out)
    }

    fn blob_held_by(&self, sha256: &str, team: &str) -> StoreResult<bool> {
        Ok(self
            .blob_holders
            .contains_key(format!("{sha256}/{team}").as_bytes())?)
    }

    /// Dense ids from a counter in the store (sled's own `generate_id` jumps by a million after every
    /// reopen, which would make experiment e000004 followed by e1000005). A store made before the counter
    /// existed starts it at sled's next id, which is above every id sled handed out.
    fn next_id(&self) -> StoreResult<u64> {
        loop {
            let current = self.db.get(NEXT_ID_KEY)?;
            let next = match &current {
                Some(bytes) => {
                    let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                        StoreError::Corrupt(format!(
                            "the id counter holds {} bytes (expected 8)",
                            bytes.len()
                        ))
                    })?;
                    u64::from_be_bytes(bytes) + 1
                }
                None => self.db.generate_id()?,
            };
            let swapped =
                self.db
                    .compare_and_swap(NEXT_ID_KEY, current, Some(&next.to_be_bytes()[..]))?;
            if swapped.is_ok() {
                return Ok(next);
            }
        }
    }

    fn commit(&self) -> CommitWait {
        self.group.commit()
    }

    fn flush_now(&self) -> StoreResult<()> {
        self.db.flush()?;
        Ok(())
    }

    fn blobs(&self) -> &BlobStore {
        &self.blobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRole;
    use crate::store::fixtures::job_record as job;

    #[tokio::test]
    async fn records_survive_reopen_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_job(&job("j1")).unwrap();
            store.put_job_config("j1", b"{\"steps\":3}").unwrap();
            assert!(store.insert_metric_batch("j1", 0, b"a").unwrap());
            assert!(
                !store.insert_metric_batch("j1", 0, b"a").unwrap(),
                "a resent batch is not new"
            );
            assert!(store.insert_metric_batch("j1", 1, b"b").unwrap());
            assert!(store.insert_metric_batch("j10", 0, b"other job").unwrap());
            store
                .put_token(&TokenRecord {
                    id: "t1".into(),
                    secret_sha256: "x".into(),
                    role: TokenRole::Team,
                    name: "a".into(),
                    created_ms: 1,
                    revoked: false,
                })
                .unwrap();
            store
                .append_audit(&AuditEntry {
                    time_ms: 1,
                    actor: "team:a".into(),
                    action: "submit".into(),
                    experiment_id: Some("e1".into()),
                    job_id: None,
                    detail: String::new(),
                })
                .unwrap();
            store.commit().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.jobs().unwrap(), vec![job("j1")]);
        assert_eq!(store.job_config("j1").unwrap().unwrap(), b"{\"steps\":3}");
        let batches = store.metric_batches("j1").unwrap();
        assert_eq!(batches, vec![(0, b"a".to_vec()), (1, b"b".to_vec())]);
        assert_eq!(store.tokens().unwrap().len(), 1);
        assert_eq!(store.audit_entries().unwrap().len(), 1);
        assert_ne!(store.next_id().unwrap(), store.next_id().unwrap());
    }

    fn audit(experiment: Option<&str>, job: Option<&str>, detail: &str) -> AuditEntry {
        AuditEntry {
            time_ms: 1,
            actor: "team:a".into(),
            action: "test".into(),
            experiment_id: experiment.map(str::to_string),
            job_id: job.map(str::to_string),
            detail: detail.into(),
        }
    }

    #[test]
    fn an_experiments_audit_entries_come_from_the_index_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for entry in [
            audit(Some("e1"), None, "submit e1"),
            audit(Some("e10"), None, "submit e10"),
            audit(None, Some("j1"), "lease j1"),
            audit(None, Some("j10"), "lease j10"),
            audit(Some("e1"), Some("j2"), "cancel j2"),
            audit(None, None, "token"),
        ] {
            store.append_audit(&entry).unwrap();
        }
        let details = |entries: Vec<AuditEntry>| -> Vec<String> {
            entries.into_iter().map(|e| e.detail).collect()
        };
        assert_eq!(
            details(
                store
                    .audit_entries_of("e1", &["j1".into(), "j2".into()])
                    .unwrap()
            ),
            ["submit e1", "lease j1", "cancel j2"],
            "e10 and j10 share a prefix with e1 and j1 but are not theirs; an entry naming both comes once"
        );
        assert_eq!(
            details(store.audit_entries_of("e10", &["j10".into()]).unwrap()),
            ["submit e10", "lease j10"]
        );
        assert!(store.audit_entries_of("e9", &[]).unwrap().is_empty());
    }

    #[test]
    fn a_store_without_the_audit_index_gets_it_built_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .append_audit(&audit(Some("e1"), None, "submit"))
                .unwrap();
            store
                .append_audit(&audit(None, Some("j1"), "lease"))
                .unwrap();
            // As a store written before the index existed.
            store.audit_index.clear().unwrap();
            store.flush_now().unwrap();
            assert!(
                store
                    .audit_entries_of("e1", &["j1".into()])
                    .unwrap()
                    .is_empty()
            );
        }
        let store = SledStore::open(dir.path()).unwrap();
        let found = store.audit_entries_of("e1", &["j1".into()]).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found, store.audit_entries().unwrap());
        store
            .append_audit(&audit(Some("e1"), None, "after"))
            .unwrap();
        assert_eq!(store.audit_entries_of("e1", &[]).unwrap().len(), 2);
    }

    #[test]
    fn ids_stay_dense_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<u64> = {
            let store = SledStore::open(dir.path()).unwrap();
            let ids = (0..3).map(|_| store.next_id().unwrap()).collect();
            store.flush_now().unwrap();
            ids
        };
        assert_eq!(first, [0, 1, 2]);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.next_id().unwrap(), 3);
    }
}
