//! Live-VM backups and the host inventory. `BackupVm` finds the VM on a registered host,
//! has the [`LiveVms`] implementation freeze its disks at one point in time (incremental
//! per disk when the parent's dirty bitmap is on it), starts an ordinary job over the
//! frozen NBD exports, and releases the disks when the job ends — committed, failed or
//! cancelled. If the leader changes first, the job goes on under the new leader (workers
//! keep reading the frozen exports), which cleans the VM up when the job ends (see
//! `takeover`); if that fails too, the VM's next backup cleans it up.

use std::sync::Arc;

use tracing::{Instrument, info, info_span, warn};

use bora_core::host::HostSpec;
use bora_core::index::DEFAULT_CHUNK_SIZE;
use bora_core::snapshot::SnapshotId;

use bora_core::snapshot::check_name;

use super::error::RequestError;
use super::jobs::{DiskSource, Incremental, JobRequest, Phase};
use super::state::Coordinator;
use crate::catalog::CatalogError;
use crate::lease::JobId;
use crate::live::{FrozenVm, LiveVms, VmListing};
use crate::raft::command::Command;
use crate::raft::{RaftCatalogError, Refusal};

/// Removes a VM from the set of VMs being prepared, however preparing ends.
struct Preparing<'a> {
    c: &'a Coordinator,
    vm: String,
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        self.c.core().preparing.remove(&self.vm);
    }
}

/// Host refusals as the file inventory's errors (same messages and codes as before).
fn host_error(e: RaftCatalogError) -> RequestError {
    match e {
        RaftCatalogError::Refused(Refusal::HostExists { name }) => {
            CatalogError::HostExists(name).into()
        }
        RaftCatalogError::Refused(Refusal::NoHost { name }) => CatalogError::NoHost(name).into(),
        e => e.into(),
    }
}

impl Coordinator {
    fn live(&self) -> Result<Arc<dyn LiveVms>, RequestError> {
        self.live.get().cloned().ok_or(RequestError::NoLiveVms)
    }

    /// Registers a host: a proposal to the replicated catalog.
    pub(super) async fn add_host(&self, host: HostSpec, replace: bool) -> Result<(), RequestError> {
        check_name("host", &host.name).map_err(RequestError::Invalid)?;
        self.raft
            .propose(Command::AddHost { host, replace })
            .await
            .map_err(host_error)?;
        Ok(())
    }

    /// Every registered host, by name (read linearizably).
    pub(super) async fn list_hosts(&self) -> Result<Vec<HostSpec>, RequestError> {
        Ok(self
            .raft
            .read(|s| s.hosts.values().cloned().collect())
            .await?)
    }

    pub(super) async fn remove_host(&self, name: String) -> Result<(), RequestError> {
        self.raft
            .propose(Command::RemoveHost { name })
            .await
            .map_err(host_error)?;
        Ok(())
    }

    async fn get_host(&self, name: String) -> Result<HostSpec, RequestError> {
        self.raft
            .read(|s| s.hosts.get(&name).cloned())
            .await?
            .ok_or_else(|| CatalogError::NoHost(name).into())
    }

    /// The VMs of every registered host (or of `host`), with their disks.
    pub(super) async fn list_vms(
        &self,
        host: Option<String>,
    ) -> Result<Vec<VmListing>, RequestError> {
        let live = self.live()?;
        let hosts = match host {
            Some(name) => {
                vec![self.get_host(name).await?]
            }
            None => self.list_hosts().await?,
        };
        let mut vms = Vec::new();
        for h in hosts {
            match live.list(&h).await {
                Ok(v) => vms.extend(v),
                Err(e) => warn!(host = %h.name, error = %e, "cannot list VMs"),
            }
        }
        Ok(vms)
    }

    /// The registered host that has `vm`.
    async fn find_vm(&self, live: &dyn LiveVms, vm: &str) -> Result<HostSpec, RequestError> {
        let hosts = self.list_hosts().await?;
        if hosts.is_empty() {
            return Err(RequestError::UnknownVm(
                "no hosts are registered: bora host add NAME --qmp unix:PATH | --qmp-dir DIR"
                    .into(),
            ));
        }
        for h in hosts {
            match live.vm_names(&h).await {
                Ok(names) if names.iter().any(|n| n == vm) => return Ok(h),
                Ok(_) => {}
                Err(e) => warn!(host = %h.name, error = %e, "cannot list VMs"),
            }
        }
        Err(RequestError::UnknownVm(format!(
            "no registered host has a vm {vm:?} (see bora vm list)"
        )))
    }

    /// Starts a live backup of `vm`; its disks are released when the job ends.
    pub(super) async fn backup_vm(
        self: Arc<Self>,
        vm: String,
        full: bool,
        id: Option<SnapshotId>,
    ) -> Result<JobId, RequestError> {
        let live = self.live()?;
        if self.storage.is_empty() {
            return Err(RequestError::NoStorageNodes);
        }
        if let Some(id) = &id
            && self.started_before(&vm, id).await?
        {
            return Ok(JobId(id.to_string()));
        }
        // One backup of a VM at a time: a second freeze would tear down the first one's.
        {
            let mut core = self.core();
            if let Some(job) = core.running_job_of(&vm) {
                return Err(RequestError::VmBusy { vm, job });
            }
            if !core.preparing.insert(vm.clone()) {
                return Err(RequestError::VmBusy {
                    vm,
                    job: JobId("(being prepared)".into()),
                });
            }
        }
        let _preparing = Preparing {
            c: &self,
            vm: vm.clone(),
        };
        let host = self.find_vm(live.as_ref(), &vm).await?;
        let parent = self.catalog_latest(vm.clone()).await?;
        let id = id.unwrap_or_else(SnapshotId::random);
        let chunk_size = DEFAULT_CHUNK_SIZE;
        let span = info_span!("backup_vm", job = %id, vm = %vm, host = %host.name);
        let frozen = live
            .freeze(&host, &vm, &id, parent.as_ref(), full, chunk_size)
            .instrument(span.clone())
            .await
            .map_err(RequestError::Hypervisor)?;
        let disks = frozen
            .sources()
            .into_iter()
            .map(|s| DiskSource {
                incremental: match (&s.bitmap, &parent) {
                    (Some(bitmap), Some(p)) => Some(Incremental {
                        bitmap: bitmap.clone(),
                        parent: p.id.to_string(),
                        base: None,
                    }),
                    _ => None,
                },
                name: s.disk,
                source: s.source,
                size: s.size,
                cbt: Some(s.cbt),
            })
            .collect();
        let mut req = JobRequest {
            vm: vm.clone(),
            host: host.name.clone(),
            chunk_size,
            disks,
            id: Some(id),
        };
        let started = match self.load_bases(&mut req).await {
            Ok(()) => self.start_backup(req, true).await,
            Err(e) => Err(e),
        };
        let job = match started {
            Ok(job) => job,
            Err(e) => {
                if let Err(r) = frozen.release(false).await {
                    warn!(vm = %vm, error = %r, "releasing the VM's disks failed; the next backup cleans up");
                }
                return Err(e);
            }
        };
        info!(parent: &span, "frozen; job started");
        tokio::spawn(
            self.clone()
                .release_when_ended(job.clone(), frozen)
                .instrument(span),
        );
        Ok(job)
    }

    /// Whether job `id` of `vm` was started already (a client's retry after a lost
    /// answer or a leader change): it must not be frozen again.
    async fn started_before(&self, vm: &str, id: &SnapshotId) -> Result<bool, RequestError> {
        if self
            .core()
            .jobs
            .get(&JobId(id.to_string()))
            .is_some_and(|r| r.vm == vm)
        {
            return Ok(true);
        }
        let id = id.to_string();
        Ok(self.raft.read(|s| s.job_of_vm(&id, vm)).await?)
    }

    /// Waits for `job` to end, then releases its VM's disks.
    async fn release_when_ended(self: Arc<Self>, job: JobId, frozen: Box<dyn FrozenVm>) {
        let rx = self.core().jobs.get(&job).map(|r| r.view.subscribe());
        let committed = match rx {
            Some(mut rx) => match rx.wait_for(|v| v.phase.is_ended()).await {
                Ok(v) => matches!(v.phase, Phase::Committed { .. }),
                // The coordinator is going away: leave the freeze for the next backup.
                Err(_) => return,
            },
            None => false,
        };
        match frozen.release(committed).await {
            Ok(()) => info!(committed, "VM disks released"),
            Err(e) => {
                warn!(error = %e, "releasing the VM's disks failed; the next backup cleans up")
            }
        }
    }
}
