//! Committing a job: each disk's index is built from its ranges' results and stored
//! through the chunk store of the current membership ([`crate::backup::finish_disk`], as
//! the embedded mode does), then `EndJob { Committed }` commits the snapshot record in the
//! replicated catalog with the VM's latest snapshot as its parent. A full read reports
//! every chunk; an incremental reports the changed ones, laid over the parent's index
//! loaded when the job started.
//!
//! The catalog is the replicated one (`crate::raft`): snapshot records are written by a
//! job's `EndJob`, by [`Coordinator::commit_record`] (the `CommitSnapshot` RPC and the
//! import) and forgotten by `ForgetSnapshots`; reads go through here too, linearizably.
//! A job whose commit is proposed after this coordinator lost the leadership stays
//! running in the catalog: the new leader takes it over and commits it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, info, info_span, warn};

use bora_core::snapshot::{
    CbtRecord, SNAPSHOT_FORMAT_VERSION, SnapshotId, SnapshotMeta, now_rfc3339,
};

use super::error::RequestError;
use super::jobs::Phase;
use super::state::Coordinator;
use crate::backup::{BackupError, DiskOutcome, finish_disk};
use crate::catalog::CatalogError;
use crate::lease::JobCommit;
use crate::lease::JobId;
use crate::raft::command::{Applied, Command, JobEnd, JobStatus as ReplicatedStatus, Parent};
use crate::raft::{RaftCatalogError, Refusal};

/// Why a job's commit failed. Nothing is committed when this happens.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Disk(#[from] BackupError),
}

impl Coordinator {
    /// Commits a job whose ranges are all done, and ends it (committed or failed).
    pub(super) async fn commit_job(self: Arc<Self>, commit: JobCommit) {
        let job = commit.job.clone();
        match self.try_commit(commit).await {
            Ok(snapshot_json) => self
                .core()
                .set_phase(&job, Phase::Committed { snapshot_json }),
            // The job is still running in the catalog: the new leader commits it.
            Err(CommitError::Request(RequestError::Raft(RaftCatalogError::NotLeader {
                ..
            }))) => {
                info!(job = %job, "lost the leadership while committing; the new leader commits the job");
            }
            Err(CommitError::Request(RequestError::Raft(RaftCatalogError::Refused(
                Refusal::JobEnded { status, .. },
            )))) => {
                info!(job = %job, ?status, "the job ended before this commit");
                let phase = self.ended_phase(&job, status).await;
                self.core().set_phase(&job, phase);
            }
            Err(e) => {
                warn!(job = %job, error = %e, "commit failed; nothing was committed");
                self.end_job(job, format!("commit failed, nothing was committed: {e}"))
                    .await;
            }
        }
    }

    /// Ends a job as failed: proposed to the replicated catalog (retried while this
    /// coordinator leads and the catalog cannot answer), then shown to clients. A new
    /// leader takes the job over instead if this one stops leading first.
    pub(super) async fn end_job(self: Arc<Self>, job: JobId, error: String) {
        let mut wait = Duration::from_millis(200);
        loop {
            let end = Command::EndJob {
                job: job.0.clone(),
                end: JobEnd::Failed {
                    error: error.clone(),
                },
            };
            match self.raft.propose(end).await {
                Ok(_) => {
                    self.core().set_phase(&job, Phase::Failed { error });
                    return;
                }
                Err(RaftCatalogError::Refused(Refusal::JobEnded { status, .. })) => {
                    let phase = self.ended_phase(&job, status).await;
                    self.core().set_phase(&job, phase);
                    return;
                }
                Err(RaftCatalogError::Refused(r)) => {
                    warn!(job = %job, refusal = %r, "ending the job was refused");
                    self.core().set_phase(&job, Phase::Failed { error });
                    return;
                }
                Err(RaftCatalogError::NotLeader { .. }) => {
                    info!(job = %job, "lost the leadership; the new leader takes the job over");
                    return;
                }
                Err(e) => {
                    warn!(job = %job, error = %e, "recording the job's failure; will retry");
                }
            }
            if *self.stopping.borrow() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_commit(&self, commit: JobCommit) -> Result<String, CommitError> {
        let (vm, sources) = {
            let core = self.core();
            let rec = core.jobs.get(&commit.job).ok_or_else(|| {
                RequestError::Internal(format!("no record of job {}", commit.job))
            })?;
            (rec.vm.clone(), rec.disks.clone())
        };
        let span = info_span!("commit", job = %commit.job, vm = %vm);
        async move {
            let id: SnapshotId = commit
                .job
                .0
                .parse()
                .map_err(|e| RequestError::Internal(format!("job id as snapshot id: {e}")))?;
            let store = self.storage.store()?;
            let mut disks = Vec::with_capacity(commit.disks.len());
            for (d, source) in commit.disks.into_iter().zip(sources) {
                let span = info_span!("commit_disk", disk = %d.name);
                let base = source
                    .incremental
                    .as_ref()
                    .and_then(|i| i.base.as_deref().cloned());
                let incremental = base.is_some();
                let mut snap = finish_disk(
                    store.as_ref(),
                    base,
                    DiskOutcome {
                        vm: vm.clone(),
                        disk: d.name,
                        size: d.size,
                        chunk_size: d.chunk_size,
                        source: source.source,
                        incremental,
                    },
                    d.ranges.into_iter().map(|r| r.result),
                )
                .instrument(span)
                .await?;
                snap.cbt = Some(source.cbt.unwrap_or_else(|| match &source.incremental {
                    Some(i) => CbtRecord {
                        mode: "incremental".into(),
                        reason: None,
                        base: Some(i.bitmap.clone()),
                        bitmap: Some(i.bitmap.clone()),
                    },
                    None => CbtRecord {
                        mode: "full".into(),
                        reason: Some("no dirty bitmap given".into()),
                        base: None,
                        bitmap: None,
                    },
                }));
                disks.push(snap);
            }
            let meta = SnapshotMeta {
                format: SNAPSHOT_FORMAT_VERSION,
                id,
                vm: vm.clone(),
                time: now_rfc3339(),
                parent: None,
                disks,
            };
            let end = Command::EndJob {
                job: commit.job.0.clone(),
                end: JobEnd::Committed { meta },
            };
            let meta = match self.raft.propose(end).await.map_err(RequestError::from)? {
                Applied::JobEnded {
                    snapshot: Some(meta),
                    ..
                } => meta,
                other => {
                    return Err(RequestError::Internal(format!(
                        "a job commit was applied as {other:?}"
                    ))
                    .into());
                }
            };
            info!(parent = ?meta.parent.as_ref().map(SnapshotId::as_str), "snapshot committed");
            serde_json::to_string(&meta).map_err(|e| {
                RequestError::Internal(format!("encoding snapshot {}: {e}", meta.id)).into()
            })
        }
        .instrument(span)
        .await
    }

    /// Commits a snapshot record: a proposal to the replicated catalog. With
    /// [`Parent::Latest`] the record's parent becomes the VM's newest snapshot as the
    /// command is applied (log order replaces the old commit lock). The only catalog
    /// write besides [`Self::catalog_forget`].
    pub(super) async fn commit_record(
        &self,
        meta: SnapshotMeta,
        parent: Parent,
    ) -> Result<SnapshotMeta, RequestError> {
        match self
            .raft
            .propose(Command::CommitSnapshot { meta, parent })
            .await?
        {
            Applied::Snapshot { meta } => Ok(meta),
            other => Err(RequestError::Internal(format!(
                "a snapshot commit was applied as {other:?}"
            ))),
        }
    }

    /// Forgets snapshots `ids` of `vm`: a proposal. Returns the ids that were there.
    pub(super) async fn catalog_forget(
        &self,
        vm: String,
        ids: Vec<SnapshotId>,
    ) -> Result<Vec<SnapshotId>, RequestError> {
        let ids = ids.iter().map(ToString::to_string).collect();
        let gone = match self
            .raft
            .propose(Command::ForgetSnapshots { vm, ids })
            .await?
        {
            Applied::Forgotten { ids } => ids,
            other => {
                return Err(RequestError::Internal(format!(
                    "a forget was applied as {other:?}"
                )));
            }
        };
        info!(forgotten = gone.len(), "snapshots forgotten");
        gone.iter()
            .map(|i| {
                i.parse()
                    .map_err(|e| RequestError::Internal(format!("forgotten id {i:?}: {e}")))
            })
            .collect()
    }

    /// Every snapshot (of `vm`), read linearizably.
    pub(super) async fn catalog_list(
        &self,
        vm: Option<String>,
    ) -> Result<Vec<SnapshotMeta>, RequestError> {
        Ok(self.raft.read(|s| s.list(vm.as_deref())).await?)
    }

    /// The newest snapshot of `vm`, read linearizably.
    pub(super) async fn catalog_latest(
        &self,
        vm: String,
    ) -> Result<Option<SnapshotMeta>, RequestError> {
        Ok(self.raft.read(|s| s.latest(&vm).cloned()).await?)
    }

    /// A snapshot of `vm` by id (or `"latest"`), read linearizably.
    pub(super) async fn catalog_get(
        &self,
        vm: String,
        id: String,
    ) -> Result<SnapshotMeta, RequestError> {
        let found = self.raft.read(|s| s.get(&vm, &id).cloned()).await?;
        found.ok_or_else(|| {
            if id == "latest" {
                CatalogError::NoSnapshots(vm).into()
            } else {
                CatalogError::NotFound { vm, id }.into()
            }
        })
    }
}

impl Coordinator {
    /// How a job that ended in the replicated catalog shows to clients; a committed one
    /// with its snapshot (committed by another proposal of this job, e.g. an earlier
    /// leadership's).
    pub(super) async fn ended_phase(&self, job: &JobId, status: ReplicatedStatus) -> Phase {
        match status {
            ReplicatedStatus::Failed { error } => Phase::Failed { error },
            ReplicatedStatus::Cancelled => Phase::Cancelled,
            ReplicatedStatus::Running => Phase::Running,
            ReplicatedStatus::Committed => {
                let meta = self.raft.read(|s| s.find(&job.0).cloned()).await;
                match meta.map(|m| m.map(|m| serde_json::to_string(&m))) {
                    Ok(Some(Ok(snapshot_json))) => Phase::Committed { snapshot_json },
                    _ => Phase::Failed {
                        error: "committed, but its snapshot cannot be read now; see bora snapshots"
                            .into(),
                    },
                }
            }
        }
    }
}
