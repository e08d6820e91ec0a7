//! The service over real gRPC on 127.0.0.1, with a hand-driven worker (leases, chunks
//! put into an in-memory store, results) so every request and its timing are the test's.
//! The worker crate's cluster tests run real worker loops against it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use bora_core::chunk::encode;
use bora_core::index_store::load_index;
use bora_core::snapshot::SnapshotMeta;
use bora_core::store::ChunkStore;
use bora_core::store::memory::MemoryChunkStore;
use bora_proto::coordinator as pb;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;
use pb::job_status::State;

use super::*;
use crate::config::StorageNodeEntry;

mod members;

const CS: u32 = 64 << 10;
type Client = CoordinatorClient<Channel>;

struct Node {
    client: Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Node {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn factory(store: Arc<MemoryChunkStore>) -> StoreFactory {
    Arc::new(move |_m, _a| store.clone() as Arc<dyn ChunkStore>)
}

fn config(dir: &Path) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new("c1", "127.0.0.1:0", dir);
    c.storage_nodes = vec![StorageNodeEntry {
        id: "mem".into(),
        addr: "127.0.0.1:1".into(),
    }];
    c.range_bytes = 4 * u64::from(CS);
    c
}

async fn start(config: CoordinatorConfig, store: Arc<MemoryChunkStore>) -> Node {
    let bound = bind(&config, factory(store)).await.unwrap();
    let addr = bound.local_addr();
    assert!(addr.ip().is_loopback());
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(bound.run(async {
        let _ = rx.await;
    }));
    let client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Node { client, stop, task }
}

fn disk(name: &str, size: u64) -> pb::DiskSource {
    pb::DiskSource {
        name: name.into(),
        source: format!("/images/{name}.raw"),
        size,
        ..Default::default()
    }
}

/// A backup of `vm`'s `disks` from host h1, as job `job` when given.
fn request(vm: &str, disks: Vec<pb::DiskSource>, job: Option<&str>) -> pb::StartBackupRequest {
    pb::StartBackupRequest {
        vm: vm.into(),
        host: "h1".into(),
        chunk_size: CS,
        disks,
        job: job.unwrap_or_default().into(),
    }
}

async fn start_job(c: &mut Client, vm: &str, disks: Vec<pb::DiskSource>) -> String {
    c.start_backup(request(vm, disks, None))
        .await
        .unwrap()
        .into_inner()
        .job
}

async fn lease(c: &mut Client, worker: &str) -> Option<pb::RangeLease> {
    c.lease(pb::LeaseRequest {
        worker: worker.into(),
        wait_ms: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .lease
}

/// Chunk `i` of a disk: every third chunk is zeros, the others say which chunk they are.
fn chunk_data(disk: &str, i: u64, len: usize) -> Vec<u8> {
    if i % 3 == 2 {
        return vec![0; len];
    }
    let mut v = format!("{disk} chunk {i} ").into_bytes().repeat(len);
    v.truncate(len);
    v
}

/// Stores the lease's chunks and returns the entries a worker reports for them.
async fn read_range(store: &MemoryChunkStore, l: &pb::RangeLease) -> Vec<pb::ChunkEntry> {
    let cs = u64::from(l.chunk_size);
    let mut entries = Vec::new();
    for i in l.offset / cs..(l.offset + l.length).div_ceil(cs) {
        let len = (l.disk_size - i * cs).min(cs) as usize;
        let data = chunk_data(&l.disk, i, len);
        let digest = if data.iter().all(|b| *b == 0) {
            Bytes::new()
        } else {
            let c = encode(&data, 1).unwrap();
            let d = Bytes::copy_from_slice(c.digest.as_bytes());
            store.put(vec![c]).await.unwrap();
            d
        };
        entries.push(pb::ChunkEntry { index: i, digest });
    }
    entries
}

fn report(
    worker: &str,
    l: &pb::RangeLease,
    entries: Vec<pb::ChunkEntry>,
) -> pb::CompleteRangeRequest {
    pb::CompleteRangeRequest {
        lease_id: l.lease_id,
        worker: worker.into(),
        entries,
        bytes_read: l.length,
        ..Default::default()
    }
}

async fn complete(
    c: &mut Client,
    store: &MemoryChunkStore,
    worker: &str,
    l: &pb::RangeLease,
) -> bool {
    let entries = read_range(store, l).await;
    c.complete_range(report(worker, l, entries))
        .await
        .unwrap()
        .into_inner()
        .accepted
}

async fn wait(c: &mut Client, job: &str, timeout_ms: u32) -> pb::JobStatus {
    c.wait_job(pb::WaitJobRequest {
        job: job.into(),
        timeout_ms,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn heartbeat(c: &mut Client, worker: &str, ids: Vec<u64>) -> Vec<u64> {
    c.heartbeat(pb::HeartbeatRequest {
        worker: worker.into(),
        lease_ids: ids,
    })
    .await
    .unwrap()
    .into_inner()
    .ended
}

async fn list(c: &mut Client) -> Vec<SnapshotMeta> {
    c.list_snapshots(pb::ListSnapshotsRequest { vm: None })
        .await
        .unwrap()
        .into_inner()
        .snapshot_json
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect()
}

/// Checks that every chunk of the committed snapshot's disks reads back as the data.
async fn check_restores(store: &MemoryChunkStore, meta: &SnapshotMeta) {
    for d in &meta.disks {
        let index = load_index(store, &d.index).await.unwrap();
        for i in 0..index.len() {
            let (_, len) = index.chunk_extent(i);
            let want = chunk_data(&d.disk, i as u64, len as usize);
            match index.get(i) {
                None => assert!(want.iter().all(|b| *b == 0), "chunk {i}"),
                Some(dg) => assert_eq!(store.read(&dg).await.unwrap()[..], want[..], "chunk {i}"),
            }
        }
    }
}

#[tokio::test]
async fn a_job_commits_once_every_range_is_done_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    let cs = u64::from(CS);
    let job = start_job(c, "vm1", vec![disk("a", 10 * cs + 100), disk("b", 3 * cs)]).await;
    let st = wait(c, &job, 0).await;
    assert_eq!(
        (st.state(), st.ranges_done, st.ranges_total),
        (State::Running, 0, 4)
    );
    // One VM, one running job.
    let e = c
        .start_backup(request("vm1", vec![disk("a", cs)], None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    let mut leases = Vec::new();
    while let Some(l) = lease(c, "w1").await {
        leases.push(l);
    }
    assert_eq!(leases.len(), 4);
    assert_eq!(leases[0].source, "/images/a.raw");
    assert_eq!(leases[2].length, 2 * cs + 100);
    for l in leases.iter().rev() {
        assert!(complete(c, &store, "w1", l).await);
    }
    let st = wait(c, &job, 10_000).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    let meta: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    assert_eq!(meta.id.as_str(), job);
    assert_eq!(meta.parent, None);
    check_restores(&store, &meta).await;
    // A second report of a range changes nothing.
    assert!(!complete(c, &store, "w1", &leases[0]).await);

    // A second job of the same VM has the first as parent; a third is left running.
    let job2 = start_job(c, "vm1", vec![disk("a", cs)]).await;
    let l = lease(c, "w1").await.unwrap();
    assert!(complete(c, &store, "w1", &l).await);
    let st = wait(c, &job2, 10_000).await;
    let meta2: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    assert_eq!(meta2.parent.as_ref(), Some(&meta.id));
    // A third job is cut by a restart with one of its two ranges done.
    let running = start_job(c, "vm1", vec![disk("a", 8 * cs)]).await;
    let done_before = lease(c, "w1").await.unwrap();
    let old_lease = lease(c, "w1").await.unwrap();
    assert!(complete(c, &store, "w1", &done_before).await);
    node.stop().await;

    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    assert_eq!(list(c).await.len(), 2);
    // The restarted coordinator took the job over, with the range done before.
    let st = wait(c, &running, 0).await;
    assert_eq!(
        (st.state(), st.ranges_done, st.ranges_total),
        (State::Running, 1, 2)
    );
    // A job committed before the restart is found in the catalog.
    let st = wait(c, &job, 0).await;
    assert_eq!(st.state(), State::Committed);
    // The old run's lease is over, and its result changes nothing.
    assert_eq!(
        heartbeat(c, "w1", vec![old_lease.lease_id]).await,
        vec![old_lease.lease_id]
    );
    assert!(!complete(c, &store, "w1", &old_lease).await);
    // The VM's job is still running: no second one.
    let e = c
        .start_backup(request("vm1", vec![disk("a", cs)], None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // Only the range without a result is leased again; the commit has both.
    let l = lease(c, "w1").await.unwrap();
    assert_eq!((l.offset, l.length), (old_lease.offset, old_lease.length));
    assert!(lease(c, "w1").await.is_none());
    assert!(complete(c, &store, "w1", &l).await);
    let st = wait(c, &running, 10_000).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    let meta3: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    assert_eq!(meta3.parent.as_ref(), Some(&meta2.id));
    check_restores(&store, &meta3).await;
    // A job id never started is unknown.
    let unknown = bora_core::snapshot::SnapshotId::random().to_string();
    let e = c
        .wait_job(pb::WaitJobRequest {
            job: unknown.clone(),
            timeout_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        format!(
            "job {unknown} is unknown to this coordinator (it may have restarted); nothing was committed for it"
        )
    );
    // The VM can be backed up again.
    start_job(c, "vm1", vec![disk("a", cs)]).await;
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    let cs = u64::from(CS);
    let e = c
        .start_backup(pb::StartBackupRequest {
            vm: "vm1".into(),
            host: "h1".into(),
            chunk_size: 4096,
            disks: vec![disk("a", cs)],
            job: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("power of two"), "{}", e.message());

    let job = start_job(c, "vm1", vec![disk("a", 8 * cs)]).await;
    let l = lease(c, "w1").await.unwrap();
    let mut entries = read_range(&store, &l).await;
    let expect_invalid = |e: tonic::Status, needle: &str| {
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    };
    // A job id the client chose must be a snapshot id, and not another VM's job.
    let e = c
        .start_backup(request("vm2", vec![disk("a", cs)], Some("not an id")))
        .await
        .unwrap_err();
    expect_invalid(e, "job id \"not an id\"");
    let e = c
        .start_backup(request("vm2", vec![disk("a", cs)], Some(&job)))
        .await
        .unwrap_err();
    expect_invalid(e, "is taken by another VM's job or snapshot");
    // The refused requests changed nothing: vm1's job goes on, vm2 has none.
    assert_eq!(wait(c, &job, 0).await.state(), State::Running);
    assert!(
        c.list_snapshots(pb::ListSnapshotsRequest { vm: None })
            .await
            .unwrap()
            .into_inner()
            .snapshot_json
            .is_empty()
    );

    let mut short = entries.clone();
    short[1].digest = Bytes::from_static(&[7; 31]);
    let e = c.complete_range(report("w1", &l, short)).await.unwrap_err();
    expect_invalid(e, "digest is 31 bytes, expected 32");

    let mut outside = entries.clone();
    outside[3].index = 4;
    let e = c
        .complete_range(report("w1", &l, outside))
        .await
        .unwrap_err();
    expect_invalid(e, "chunk 4 is outside the leased range");

    let e = c
        .complete_range(report("w1", &l, entries[..3].to_vec()))
        .await
        .unwrap_err();
    expect_invalid(e, "3 of the range's 4 chunks");

    let e = c
        .complete_range(report("w2", &l, entries.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    let e = c
        .lease(pb::LeaseRequest {
            worker: "".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    expect_invalid(e, "invalid worker name");
    let e = c
        .wait_job(pb::WaitJobRequest {
            job: "x".into(),
            timeout_ms: 10_000_000,
        })
        .await
        .unwrap_err();
    expect_invalid(e, "timeout_ms");
    let e = c
        .add_storage_node(pb::AddStorageNodeRequest {
            id: "sn-2".into(),
            addr: "no-port".into(),
        })
        .await
        .unwrap_err();
    expect_invalid(e, "not HOST:PORT");
    let e = c
        .plan_disk(pb::PlanDiskRequest {
            disk_size: u64::MAX,
            chunk_size: CS,
        })
        .await
        .unwrap_err();
    expect_invalid(e, "at most");

    // Nothing above changed the lease: the right report is still taken.
    entries.reverse();
    assert!(
        c.complete_range(report("w1", &l, entries))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    node.stop().await;
}

#[tokio::test]
async fn a_silent_workers_range_goes_to_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut cfg = config(dir.path());
    cfg.lease_ms = 200;
    let mut node = start(cfg, store.clone()).await;
    let c = &mut node.client;
    let job = start_job(c, "vm1", vec![disk("a", 2 * u64::from(CS))]).await;
    let dead = lease(c, "dead").await.unwrap();
    assert!(lease(c, "w2").await.is_none());
    // w2 polls for work; the silent worker's lease runs out and its range comes back.
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(l) = lease(c, "w2").await {
            again = Some(l);
            break;
        }
    }
    let again = again.expect("the range was leased again");
    assert_eq!((again.offset, again.length), (dead.offset, dead.length));
    assert_ne!(again.lease_id, dead.lease_id);
    assert_eq!(
        heartbeat(c, "dead", vec![dead.lease_id]).await,
        vec![dead.lease_id]
    );
    assert!(heartbeat(c, "w2", vec![again.lease_id]).await.is_empty());
    assert!(complete(c, &store, "w2", &again).await);
    // The late worker's result comes second and changes nothing.
    assert!(!complete(c, &store, "dead", &dead).await);
    let st = wait(c, &job, 10_000).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    node.stop().await;
}

#[tokio::test]
async fn a_range_that_fails_every_attempt_fails_the_job_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    let job = start_job(c, "vm1", vec![disk("a", u64::from(CS))]).await;
    for attempt in 1..=3 {
        let l = lease(c, "w1").await.expect("leased again");
        c.fail_range(pb::FailRangeRequest {
            lease_id: l.lease_id,
            worker: "w1".into(),
            error: format!("disk on fire ({attempt})"),
        })
        .await
        .unwrap();
    }
    assert!(lease(c, "w1").await.is_none());
    let st = wait(c, &job, 10_000).await;
    assert_eq!(st.state(), State::Failed);
    assert!(
        st.error.contains("gave up after 3 attempts"),
        "{}",
        st.error
    );
    assert!(st.error.contains("disk on fire (3)"), "{}", st.error);
    assert!(list(c).await.is_empty());
    node.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_ends_its_leases_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    let job = start_job(c, "vm1", vec![disk("a", 8 * u64::from(CS))]).await;
    let l = lease(c, "w1").await.unwrap();
    let waiter = {
        let mut c = c.clone();
        let job = job.clone();
        tokio::spawn(async move { wait(&mut c, &job, 60_000).await })
    };
    let st = c
        .cancel_job(pb::CancelJobRequest { job: job.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state(), State::Cancelled);
    // The long poll answers as soon as the job ends.
    let st = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.state(), State::Cancelled);
    assert_eq!(heartbeat(c, "w1", vec![l.lease_id]).await, vec![l.lease_id]);
    assert!(!complete(c, &store, "w1", &l).await);
    assert!(list(c).await.is_empty());
    // Cancelling again answers the same.
    let st = c
        .cancel_job(pb::CancelJobRequest { job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state(), State::Cancelled);
    node.stop().await;
}

#[tokio::test]
async fn membership_persists_and_status_shows_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut cfg = config(dir.path());
    cfg.lease_ms = 100;
    let mut node = start(cfg.clone(), store.clone()).await;
    let c = &mut node.client;
    c.add_storage_node(pb::AddStorageNodeRequest {
        id: "sn-2".into(),
        addr: "127.0.0.1:7202".into(),
    })
    .await
    .unwrap();
    let m = c
        .remove_storage_node(pb::RemoveStorageNodeRequest { id: "mem".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.replicas, 2);
    assert_eq!(m.nodes.len(), 1);
    let e = c
        .remove_storage_node(pb::RemoveStorageNodeRequest { id: "mem".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.register_worker(pb::RegisterWorkerRequest {
        worker: "w1".into(),
        pid: 42,
        hostname: "box".into(),
    })
    .await
    .unwrap();
    let s = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.id, "c1");
    let roles: Vec<_> = s
        .members
        .iter()
        .map(|m| (m.role.as_str(), m.id.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("coordinator", "c1", "up"),
            ("worker", "w1", "up"),
            ("storage-node", "sn-2", "down")
        ]
    );
    assert_eq!(s.members[1].pid, 42);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.members[1].state, "down");
    node.stop().await;

    // The saved membership wins over the config's seed list.
    let mut node = start(cfg, store).await;
    let m = node
        .client
        .membership(pb::MembershipRequest {})
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<_> = m.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(nodes, ["sn-2"]);
    node.stop().await;
}

#[tokio::test]
async fn no_storage_nodes_no_backup_and_one_coordinator_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut cfg = config(dir.path());
    cfg.storage_nodes.clear();
    let mut node = start(cfg.clone(), store.clone()).await;
    let e = node
        .client
        .start_backup(request("vm1", vec![disk("a", 1)], None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = bind(&cfg, factory(store)).await.err().unwrap();
    assert!(
        e.to_string().contains("in use by another coordinator"),
        "{e}"
    );
    node.stop().await;
}

#[tokio::test]
async fn the_catalog_rpcs_work_on_the_same_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    let plan = c
        .plan_disk(pb::PlanDiskRequest {
            disk_size: 9 * u64::from(CS) + 1,
            chunk_size: CS,
        })
        .await
        .unwrap()
        .into_inner();
    let lengths: Vec<_> = plan
        .ranges
        .iter()
        .map(|r| r.length / u64::from(CS))
        .collect();
    assert_eq!(lengths, [4, 4, 1]);

    let record = r#"{"format":1,"id":"s1","vm":"vm9","time":"2026-01-01T00:00:00Z","parent":null,"disks":[]}"#;
    let id = c
        .commit_snapshot(pb::CommitSnapshotRequest {
            snapshot_json: record.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(id, "s1");
    let e = c
        .commit_snapshot(pb::CommitSnapshotRequest {
            snapshot_json: record.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c
        .commit_snapshot(pb::CommitSnapshotRequest {
            snapshot_json: "{".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A job of the same VM commits with the record above as its parent.
    let job = start_job(c, "vm9", vec![disk("a", u64::from(CS))]).await;
    let l = lease(c, "w1").await.unwrap();
    assert!(complete(c, &store, "w1", &l).await);
    assert_eq!(wait(c, &job, 10_000).await.state(), State::Committed);
    let latest = c
        .get_snapshot(pb::GetSnapshotRequest {
            vm: "vm9".into(),
            id: "latest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let latest: SnapshotMeta = serde_json::from_str(&latest.snapshot_json).unwrap();
    assert_eq!(latest.id.as_str(), job);
    assert_eq!(latest.parent.map(|p| p.to_string()), Some("s1".into()));
    assert_eq!(list(c).await.len(), 2);
    let e = c
        .get_snapshot(pb::GetSnapshotRequest {
            vm: "nobody".into(),
            id: "latest".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test]
async fn a_long_polling_lease_answers_when_a_job_starts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let node = start(config(dir.path()), store).await;
    let mut waiter = node.client.clone();
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move {
        waiter
            .lease(pb::LeaseRequest {
                worker: "w1".into(),
                wait_ms: 20_000,
            })
            .await
            .unwrap()
            .into_inner()
            .lease
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "an idle long poll waits");
    let mut c = node.client.clone();
    let job = start_job(&mut c, "vm1", vec![disk("d1", 3 * u64::from(CS))]).await;
    let lease = poll.await.unwrap().expect("the new job's range");
    assert_eq!(lease.job, job);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered when the job started, not at the end of the wait"
    );
    // Nothing waits: a short poll ends empty after its wait.
    let t = std::time::Instant::now();
    let none = c
        .lease(pb::LeaseRequest {
            worker: "w2".into(),
            wait_ms: 300,
        })
        .await
        .unwrap()
        .into_inner()
        .lease;
    assert!(none.is_none());
    assert!(t.elapsed() >= Duration::from_millis(300));
    let e = c
        .lease(pb::LeaseRequest {
            worker: "w2".into(),
            wait_ms: 60_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    node.stop().await;
}

/// A data dir of the single coordinator's files (`snapshots/`, `hosts/`,
/// `membership.json`) is imported into the replicated catalog on its first start, once:
/// a storage node removed afterwards does not come back from `membership.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_catalog_is_imported_once_on_the_first_start() {
    use bora_core::host::{HostSpec, QmpTarget};
    use bora_core::snapshot::SNAPSHOT_FORMAT_VERSION;

    let dir = tempfile::tempdir().unwrap();
    let meta = |id: &str, parent: Option<&str>| SnapshotMeta {
        format: SNAPSHOT_FORMAT_VERSION,
        id: id.parse().unwrap(),
        vm: "vm1".into(),
        time: "2026-11-28T00:00:00Z".into(),
        parent: parent.map(|p| p.parse().unwrap()),
        disks: vec![],
    };
    let files = crate::catalog::Catalog::open(dir.path()).unwrap();
    files.commit(&meta("s1", None)).unwrap();
    files.commit(&meta("s2", Some("s1"))).unwrap();
    let inventory = crate::inventory::Inventory::open(dir.path()).unwrap();
    let host = HostSpec::new("h1".into(), QmpTarget::Dir("/run/qemu".into()), None);
    inventory.add(&host, false).unwrap();
    std::fs::write(
        dir.path().join("membership.json"),
        r#"{"format":1,"replicas":3,"nodes":[{"id":"old","addr":"127.0.0.1:7209"}]}"#,
    )
    .unwrap();

    let store = Arc::new(MemoryChunkStore::default());
    let mut node = start(config(dir.path()), store.clone()).await;
    let c = &mut node.client;
    let listed = c
        .list_snapshots(pb::ListSnapshotsRequest { vm: None })
        .await
        .unwrap()
        .into_inner()
        .snapshot_json;
    let metas: Vec<SnapshotMeta> = listed
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    assert_eq!(metas, vec![meta("s1", None), meta("s2", Some("s1"))]);
    let hosts = c
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .host_json;
    assert_eq!(hosts.len(), 1);
    let m = c
        .membership(pb::MembershipRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.replicas, 3);
    let ids: Vec<_> = m.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["old"], "membership.json wins over the config's seed");
    c.remove_storage_node(pb::RemoveStorageNodeRequest { id: "old".into() })
        .await
        .unwrap();
    node.stop().await;

    let mut cfg = config(dir.path());
    cfg.replicas = Some(1);
    let mut node = start(cfg, store).await;
    let m = node
        .client
        .membership(pb::MembershipRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(m.nodes.is_empty(), "not imported again: {:?}", m.nodes);
    assert_eq!(m.replicas, 1, "the config's replicas apply on every start");
    let listed = node
        .client
        .list_snapshots(pb::ListSnapshotsRequest { vm: None })
        .await
        .unwrap()
        .into_inner()
        .snapshot_json;
    assert_eq!(listed.len(), 2);
    node.stop().await;
}

/// Three coordinators with `[raft]` on 127.0.0.1: a follower answers catalog reads and
/// job requests UNAVAILABLE with the leader in `bora-leader`; the leader serves them and
/// its status names every member.
/// Three coordinators with `[raft]` over gRPC on 127.0.0.1, sharing `store`.
async fn three_coordinators(
    dirs: &[tempfile::TempDir],
    store: &Arc<MemoryChunkStore>,
) -> (Vec<Option<Node>>, Vec<String>) {
    use crate::config::RaftSection;

    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let members: std::collections::BTreeMap<String, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| ((i + 1).to_string(), a.clone()))
        .collect();
    let mut nodes = Vec::new();
    for (i, (dir, addr)) in dirs.iter().zip(&addrs).enumerate() {
        let mut cfg = config(dir.path());
        cfg.id = format!("c{}", i + 1);
        cfg.listen = addr.clone();
        cfg.raft = Some(RaftSection {
            id: i as u64 + 1,
            members: members.clone(),
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 10_000,
            keep_logs: 1_000,
        });
        nodes.push(Some(start(cfg, store.clone()).await));
    }
    (nodes, addrs)
}

/// The running coordinator that leads and serves (it has the storage seed), with its
/// Raft view.
async fn serving_leader(nodes: &mut [Option<Node>]) -> (usize, pb::RaftStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut found = None;
        for (i, n) in nodes.iter_mut().enumerate() {
            let Some(n) = n else { continue };
            let Ok(s) = n.client.status(pb::StatusRequest {}).await else {
                continue;
            };
            let raft = s.into_inner().raft.unwrap();
            if raft.state == "leader" {
                found = Some((i, raft));
            }
        }
        if let Some((i, raft)) = found
            && let Some(n) = nodes[i].as_mut()
            && n.client
                .membership(pb::MembershipRequest {})
                .await
                .is_ok_and(|m| !m.into_inner().nodes.is_empty())
        {
            return (i, raft);
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_on_under_a_new_leader() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let store = Arc::new(MemoryChunkStore::default());
    let (mut nodes, _) = three_coordinators(&dirs, &store).await;
    let (old, _) = serving_leader(&mut nodes).await;
    let id = bora_core::snapshot::SnapshotId::random().to_string();
    let request = request("vm1", vec![disk("d", 8 * u64::from(CS))], Some(&id));
    let c = &mut nodes[old].as_mut().unwrap().client;
    let job = c
        .start_backup(request.clone())
        .await
        .unwrap()
        .into_inner()
        .job;
    assert_eq!(job, id);
    // Asking again with the same id gets the same job.
    let again = c
        .start_backup(request.clone())
        .await
        .unwrap()
        .into_inner()
        .job;
    assert_eq!(again, id);
    let done_before = lease(c, "w1").await.unwrap();
    let cut = lease(c, "w1").await.unwrap();
    assert!(complete(c, &store, "w1", &done_before).await);
    nodes[old].take().unwrap().stop().await;

    let (new, raft) = serving_leader(&mut nodes).await;
    assert_ne!(new, old);
    assert!(raft.term >= 2);
    let c = &mut nodes[new].as_mut().unwrap().client;
    // The client's retry after the leader change finds its job, taken over with the
    // range done before.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match c.start_backup(request.clone()).await {
            Ok(r) => break r.into_inner().job,
            Err(e) if e.code() == Code::Unavailable => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(again, id);
    let st = wait(c, &id, 0).await;
    assert_eq!(
        (st.state(), st.ranges_done, st.ranges_total),
        (State::Running, 1, 2)
    );
    // The old leader's lease is foreign here; its range is leased again.
    assert!(!complete(c, &store, "w1", &cut).await);
    let l = lease(c, "w2").await.unwrap();
    assert_eq!((l.offset, l.length), (cut.offset, cut.length));
    assert_ne!(l.lease_id, cut.lease_id);
    assert!(lease(c, "w2").await.is_none());
    assert!(complete(c, &store, "w2", &l).await);
    let st = wait(c, &id, 10_000).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    let meta: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    check_restores(&store, &meta).await;
    assert_eq!(list(c).await.len(), 1);
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_to_the_leader() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let store = Arc::new(MemoryChunkStore::default());
    let (mut nodes, addrs) = three_coordinators(&dirs, &store).await;
    let (leader, raft) = serving_leader(&mut nodes).await;
    assert_eq!(raft.members.len(), 3);
    assert!(raft.term >= 1);
    let follower = (leader + 1) % 3;
    let expected = format!("{}@{}", leader + 1, addrs[leader]);
    let e = nodes[follower]
        .as_mut()
        .unwrap()
        .client
        .list_snapshots(pb::ListSnapshotsRequest { vm: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    let named = |e: &tonic::Status| {
        e.metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // A follower that has not heard of the leader yet answers without it.
    if let Some(l) = named(&e) {
        assert_eq!(l, expected);
    }
    let e = nodes[follower]
        .as_mut()
        .unwrap()
        .client
        .start_backup(request("vm1", vec![disk("d", 8 * u64::from(CS))], None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert_eq!(named(&e).as_deref(), Some(expected.as_str()));
    let job = start_job(
        &mut nodes[leader].as_mut().unwrap().client,
        "vm1",
        vec![disk("d", 8 * u64::from(CS))],
    )
    .await;
    assert!(!job.is_empty());
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}
