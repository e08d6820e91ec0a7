//! Worker loops against a real coordinator service, all in this process over gRPC on
//! 127.0.0.1, with an in-memory chunk store standing in for the storage nodes and raw
//! image files written by the test as sources.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use bora_coordinator::config::{CoordinatorConfig, StorageNodeEntry};
use bora_coordinator::service::{ServiceError, StoreFactory, bind};
use bora_core::index_store::load_index;
use bora_core::snapshot::SnapshotMeta;
use bora_core::store::ChunkStore;
use bora_core::store::memory::MemoryChunkStore;
use bora_proto::coordinator as pb;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;
use pb::job_status::State;

use super::*;

const CS: u32 = 64 << 10;

struct Coordinator {
    addr: SocketAddr,
    client: CoordinatorClient<Channel>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Coordinator {
    async fn start(
        dir: &Path,
        store: Arc<MemoryChunkStore>,
        tweak: impl FnOnce(&mut CoordinatorConfig),
    ) -> Coordinator {
        let mut config = CoordinatorConfig::new("c1", "127.0.0.1:0", dir);
        config.storage_nodes = vec![StorageNodeEntry {
            id: "mem".into(),
            addr: "127.0.0.1:1".into(),
        }];
        config.range_bytes = 512 << 10;
        tweak(&mut config);
        let factory: StoreFactory = Arc::new(move |_m, _a| store.clone() as Arc<dyn ChunkStore>);
        let bound = bind(&config, factory).await.unwrap();
        let addr = bound.local_addr();
        assert!(addr.ip().is_loopback());
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(bound.run(async {
            let _ = rx.await;
        }));
        let client = CoordinatorClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Coordinator {
            addr,
            client,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    async fn start_job(&mut self, vm: &str, disks: &[(&str, &str, u64)]) -> String {
        self.client
            .start_backup(pb::StartBackupRequest {
                vm: vm.into(),
                host: "localhost".into(),
                chunk_size: CS,
                disks: disks
                    .iter()
                    .map(|(name, source, size)| pb::DiskSource {
                        name: name.to_string(),
                        source: source.to_string(),
                        size: *size,
                        ..Default::default()
                    })
                    .collect(),
                job: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
    }

    /// Waits for the job to end (a minute at most).
    async fn wait(&mut self, job: &str) -> pb::JobStatus {
        for _ in 0..12 {
            let st = self
                .client
                .wait_job(pb::WaitJobRequest {
                    job: job.into(),
                    timeout_ms: 5000,
                })
                .await
                .unwrap()
                .into_inner();
            if st.state() != State::Running {
                return st;
            }
        }
        panic!("job {job} did not end within a minute");
    }

    async fn status(&mut self) -> pb::StatusResponse {
        self.client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ClusterError>>,
}

impl Worker {
    fn start(config: WorkerConfig, store: Arc<MemoryChunkStore>) -> Worker {
        let stores: StoreFactoryFn = Arc::new(move |m: &StorageMembership| {
            assert!(m.nodes.contains_key("mem"), "{m:?}");
            store.clone() as Arc<dyn ChunkStore>
        });
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(run(config, stores, async {
            let _ = rx.await;
        }));
        Worker { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn worker_config(id: &str, coordinators: &[SocketAddr]) -> WorkerConfig {
    let addrs: Vec<String> = coordinators.iter().map(ToString::to_string).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut c = WorkerConfig::new(id, &addrs);
    c.heartbeat_ms = 100;
    c
}

/// Writes a sparse raw image of `size` bytes: random runs, holes, and blocks repeated
/// inside the image and across images (so deduplication has work). Returns its path and
/// contents.
fn image(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data = vec![0u8; size as usize];
    let shared: Vec<u8> = (0..CS as usize).map(|i| (i % 251) as u8).collect();
    let mut pos = 0usize;
    while pos < data.len() {
        let len = (next() % (3 * CS as u64)) as usize + 1;
        let end = (pos + len).min(data.len());
        match next() % 4 {
            0 => {} // a hole
            1 => {
                for (i, b) in data[pos..end].iter_mut().enumerate() {
                    *b = shared[i % shared.len()];
                }
            }
            _ => data[pos..end].iter_mut().for_each(|b| *b = next() as u8),
        }
        pos = end;
    }
    let path = dir.join(format!("{name}.raw"));
    let f = File::create(&path).unwrap();
    f.set_len(size).unwrap();
    for (i, block) in data.chunks(4096).enumerate() {
        if block.iter().any(|b| *b != 0) {
            f.write_all_at(block, (i * 4096) as u64).unwrap();
        }
    }
    f.sync_all().unwrap();
    (path, data)
}

/// Reads every disk of the snapshot back through the store and compares it with the
/// image it was taken from.
async fn assert_restores(store: &MemoryChunkStore, meta: &SnapshotMeta, images: &[(&str, &[u8])]) {
    assert_eq!(meta.disks.len(), images.len());
    for (name, want) in images {
        let disk = meta.disk(name).unwrap();
        assert_eq!(disk.size, want.len() as u64);
        let index = load_index(store, &disk.index).await.unwrap();
        let mut got = Vec::with_capacity(want.len());
        for i in 0..index.len() {
            let (_, len) = index.chunk_extent(i);
            match index.get(i) {
                None => got.resize(got.len() + len as usize, 0),
                Some(d) => got.extend_from_slice(&store.read(&d).await.unwrap()),
            }
        }
        assert!(got == *want, "disk {name} does not restore byte-identical");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_back_up_two_disks_into_one_snapshot_that_restores() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut coord = Coordinator::start(&dir.path().join("coord"), store.clone(), |_| {}).await;
    let (a, a_data) = image(dir.path(), "a", 3 * (1 << 20) + 12345, 7);
    let (b, b_data) = image(dir.path(), "b", 2 * (1 << 20), 11);
    let job = coord
        .start_job(
            "vm1",
            &[
                ("a", a.to_str().unwrap(), a_data.len() as u64),
                ("b", b.to_str().unwrap(), b_data.len() as u64),
            ],
        )
        .await;
    // The second worker's first coordinator is not there: it moves on to the next.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let w1 = Worker::start(worker_config("w1", &[coord.addr]), store.clone());
    let w2 = Worker::start(worker_config("w2", &[gone_addr, coord.addr]), store.clone());

    let st = coord.wait(&job).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    assert_eq!((st.ranges_done, st.ranges_total), (11, 11));
    let meta: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    assert_eq!(meta.id.as_str(), job);
    assert_restores(&store, &meta, &[("a", &a_data), ("b", &b_data)]).await;
    let stats = &meta.disk("a").unwrap().stats;
    assert!(
        stats.chunks_reused > 0,
        "repeated blocks are stored once: {stats:?}"
    );

    // w2 registers once it has moved past its dead first coordinator, which may be after
    // w1 did all the work.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = coord.status().await;
        let workers: Vec<_> = status
            .members
            .iter()
            .filter(|m| m.role == "worker")
            .map(|m| (m.id.clone(), m.state.clone()))
            .collect();
        if workers.len() == 2 || tokio::time::Instant::now() > deadline {
            let workers: Vec<(&str, &str)> = workers
                .iter()
                .map(|(i, s)| (i.as_str(), s.as_str()))
                .collect();
            assert_eq!(workers, [("w1", "up"), ("w2", "up")]);
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status
            .members
            .iter()
            .any(|m| m.role == "worker" && m.pid == std::process::id())
    );
    w1.stop().await;
    w2.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_holding_leases_loses_them_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut coord = Coordinator::start(&dir.path().join("coord"), store.clone(), |c| {
        c.lease_ms = 500;
        c.range_bytes = 1 << 20;
    })
    .await;
    let (a, a_data) = image(dir.path(), "a", 2 << 20, 3);
    let job = coord
        .start_job("vm1", &[("a", a.to_str().unwrap(), a_data.len() as u64)])
        .await;
    // A slow worker (a range takes about 4 s) takes both ranges...
    let mut slow = worker_config("slow", &[coord.addr]);
    slow.read_limit_bytes_per_s = Some(256 << 10);
    let slow = Worker::start(slow, store.clone());
    let mut held = 0;
    for _ in 0..100 {
        held = coord
            .status()
            .await
            .members
            .iter()
            .find(|m| m.id == "slow")
            .map_or(0, |m| m.leases);
        if held == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 2);
    // ...and dies without a word.
    slow.task.abort();
    let _ = slow.task.await;
    let other = Worker::start(worker_config("other", &[coord.addr]), store.clone());
    let st = coord.wait(&job).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    let meta: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    assert_restores(&store, &meta, &[("a", &a_data)]).await;
    let status = coord.status().await;
    let dead = status.members.iter().find(|m| m.id == "slow").unwrap();
    assert_eq!(dead.leases, 0);
    other.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_source_fails_the_job_after_its_attempts_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut coord = Coordinator::start(&dir.path().join("coord"), store.clone(), |c| {
        c.max_attempts = 3;
    })
    .await;
    let missing = dir.path().join("missing.raw");
    let job = coord
        .start_job("vm1", &[("a", missing.to_str().unwrap(), 1 << 20)])
        .await;
    let w = Worker::start(worker_config("w1", &[coord.addr]), store.clone());
    let st = coord.wait(&job).await;
    assert_eq!(st.state(), State::Failed);
    assert!(
        st.error.contains("gave up after 3 attempts"),
        "{}",
        st.error
    );
    assert!(st.error.contains("missing.raw"), "{}", st.error);
    let listed = coord
        .client
        .list_snapshots(pb::ListSnapshotsRequest { vm: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.snapshot_json.is_empty());

    // A source of another size than the job says is refused too.
    let (a, a_data) = image(dir.path(), "a", 1 << 20, 5);
    let job = coord
        .start_job(
            "vm1",
            &[("a", a.to_str().unwrap(), a_data.len() as u64 + 4096)],
        )
        .await;
    let st = coord.wait(&job).await;
    assert_eq!(st.state(), State::Failed);
    assert!(st.error.contains("the job expects"), "{}", st.error);
    w.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_ranges_stop_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    let mut coord = Coordinator::start(&dir.path().join("coord"), store.clone(), |_| {}).await;
    let (a, a_data) = image(dir.path(), "a", 2 << 20, 9);
    let source = a.to_str().unwrap();
    let job = coord
        .start_job("vm1", &[("a", source, a_data.len() as u64)])
        .await;
    let mut w = worker_config("w1", &[coord.addr]);
    w.read_limit_bytes_per_s = Some(256 << 10);
    let w = Worker::start(w, store.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = coord
        .client
        .cancel_job(pb::CancelJobRequest { job: job.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state(), State::Cancelled);
    // The worker takes the next job at once (its slots were freed by the heartbeat's
    // answer, not by the slow reads finishing).
    let started = tokio::time::Instant::now();
    let (b, b_data) = image(dir.path(), "b", 64 << 10, 13);
    let job = coord
        .start_job("vm2", &[("b", b.to_str().unwrap(), b_data.len() as u64)])
        .await;
    let st = coord.wait(&job).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    w.stop().await;
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shut_down_mid_range_gives_its_ranges_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryChunkStore::default());
    // Leases of 30 s: the ranges come back long before they would expire.
    let mut coord = Coordinator::start(&dir.path().join("coord"), store.clone(), |_| {}).await;
    let (a, a_data) = image(dir.path(), "a", 1 << 20, 17);
    let job = coord
        .start_job("vm1", &[("a", a.to_str().unwrap(), a_data.len() as u64)])
        .await;
    let mut slow = worker_config("slow", &[coord.addr]);
    slow.read_limit_bytes_per_s = Some(64 << 10);
    let slow = Worker::start(slow, store.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    slow.stop().await;
    let fast = Worker::start(worker_config("fast", &[coord.addr]), store.clone());
    let st = coord.wait(&job).await;
    assert_eq!(st.state(), State::Committed, "{}", st.error);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let meta: SnapshotMeta = serde_json::from_str(&st.snapshot_json).unwrap();
    assert_restores(&store, &meta, &[("a", &a_data)]).await;
    fast.stop().await;
    coord.stop().await;
}
