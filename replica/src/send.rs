//! The sender: replicates snapshots from a [`Source`] to a remote site.
//!
//! For each snapshot of the chosen VMs that the remote lacks (`HasSnapshots`), oldest
//! first: load each disk's index from the source, list the chunks it references (the
//! chunks, then the index pieces; each digest once), and in batches of
//! [`Options::batch`] digests ask the remote which it lacks (`Missing`); read only those
//! in their stored form and push them (`PutRecords`, about [`PUT_BYTES`] per call).
//! Up to [`Options::streams`] `PutRecords` are in flight at once, one per connection, so
//! a high-latency link stays full; an optional [`Limiter`] paces them. Then `Commit`: the remote makes the snapshot
//! visible only once every chunk is there.
//!
//! Resuming is asking again: a run killed halfway left every acknowledged batch durable
//! on the remote, so the next run's `Missing` skips it; only the `PutRecords` in flight
//! when it died (at most one per stream) are sent again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bora_core::chunk::EncodedChunk;
use bora_core::digest::Digest;
use bora_core::index_store::{IndexStoreError, load_index};
use bora_core::snapshot::SnapshotMeta;
use bora_core::store::{ChunkStore, StoreError};
use bora_proto::replica as pb;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::limit::Limiter;
use crate::link::{self, Client, LinkError};
use crate::remote::Remote;

/// Digests per `Missing` question (32 KiB on the wire).
pub const DEFAULT_BATCH: usize = 1024;
/// Record bytes per `PutRecords` call.
pub const PUT_BYTES: usize = 4 << 20;
/// Connections used at once by default.
pub const DEFAULT_STREAMS: usize = 8;
/// Records read from the source ahead of the one being sent, per stream.
const READ_AHEAD: usize = 8;
/// Snapshot ids per `HasSnapshots` question.
const IDS_PER_ASK: usize = 1000;

/// Where snapshots are replicated from: a repository or a cluster.
#[async_trait]
pub trait Source: Send + Sync {
    /// Every snapshot, oldest first.
    async fn snapshots(&self) -> Result<Vec<SnapshotMeta>, SourceError>;
    /// The chunk store indexes are loaded from.
    fn store(&self) -> Arc<dyn ChunkStore>;
    /// One chunk as stored (header + payload), verified.
    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError>;
}

/// The source could not list its snapshots.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// What to replicate and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only these VMs (empty: the remote's `vms`, or every VM if it has none).
    pub vms: Vec<String>,
    /// Connections used at once (at least 1).
    pub streams: usize,
    /// Bytes per second over all streams (0: no limit).
    pub limit: u64,
    /// Digests per `Missing` batch.
    pub batch: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            vms: Vec::new(),
            streams: DEFAULT_STREAMS,
            limit: 0,
            batch: DEFAULT_BATCH,
        }
    }
}

/// What a replication did (the `--json` report).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub remote: String,
    /// The remote site's cluster name.
    pub remote_cluster: String,
    /// Snapshots committed on the remote by this run.
    pub snapshots_sent: u64,
    /// Snapshots the remote had already.
    pub snapshots_present: u64,
    /// Snapshots the remote lacks but not sent: older than the newest it has of their VM
    /// (it pruned them, or never wanted them).
    #[serde(default)]
    pub snapshots_older: u64,
    /// Chunks (data and index pieces) sent.
    pub chunks_sent: u64,
    /// Chunk references the remote already had (not sent).
    pub chunks_skipped: u64,
    /// Record bytes (chunk and index pieces, in stored form) sent.
    pub bytes_sent: u64,
    pub duration_s: f64,
}

/// Called after every batch the remote acknowledged, with the counts so far.
pub type OnProgress = Arc<dyn Fn(&Report) + Send + Sync>;

/// Why a replication stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("remote {remote} refused {what}: {message}")]
    Remote {
        remote: String,
        what: String,
        code: tonic::Code,
        message: String,
    },
    #[error("remote {remote} speaks replication protocol {theirs}, this bora {ours}")]
    Protocol {
        remote: String,
        theirs: u32,
        ours: u32,
    },
    #[error("listing the snapshots to replicate: {0}")]
    Source(#[from] SourceError),
    #[error("snapshot {id} of vm {vm}: loading its index: {source}")]
    Index {
        id: String,
        vm: String,
        #[source]
        source: IndexStoreError,
    },
    #[error("snapshot {id}: reading chunk {digest} here: {source}")]
    Read {
        id: String,
        digest: Digest,
        #[source]
        source: StoreError,
    },
}

#[derive(Default)]
struct Counters {
    chunks_sent: AtomicU64,
    chunks_skipped: AtomicU64,
    bytes_sent: AtomicU64,
    snapshots_sent: AtomicU64,
}

/// One replication run's shared state.
struct Run<'a> {
    source: &'a dyn Source,
    remote: &'a Remote,
    links: Vec<Client>,
    next_link: std::sync::atomic::AtomicUsize,
    limiter: Option<Limiter>,
    counters: Counters,
    progress: Option<OnProgress>,
    batch: usize,
    report: Report,
    started: Instant,
}

impl Run<'_> {
    fn remote_err(&self, what: &str) -> impl Fn(tonic::Status) -> SendError + '_ {
        let what = what.to_string();
        move |s| SendError::Remote {
            remote: self.remote.name.clone(),
            what: what.clone(),
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    fn report(&self) -> Report {
        let c = &self.counters;
        Report {
            snapshots_sent: c.snapshots_sent.load(Ordering::Relaxed),
            chunks_sent: c.chunks_sent.load(Ordering::Relaxed),
            chunks_skipped: c.chunks_skipped.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            duration_s: self.started.elapsed().as_secs_f64(),
            ..self.report.clone()
        }
    }

    /// Pushes one group of records.
    async fn push(
        &self,
        link: &Client,
        records: Vec<pb::Record>,
        bytes: u64,
    ) -> Result<(), SendError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.limiter {
            l.acquire(bytes).await;
        }
        let n = records.len() as u64;
        link.clone()
            .put_records(pb::PutRecordsRequest { records })
            .await
            .map_err(self.remote_err("a batch of chunks"))?;
        self.counters.chunks_sent.fetch_add(n, Ordering::Relaxed);
        self.counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p(&self.report());
        }
        Ok(())
    }

    /// The next connection, round robin.
    fn link(&self) -> &Client {
        let i = self.next_link.fetch_add(1, Ordering::Relaxed);
        &self.links[i % self.links.len()]
    }

    /// Sends the chunks of `digests` the remote lacks: read in stored form a few ahead,
    /// grouped into `PutRecords` of about [`PUT_BYTES`], with one group in flight per
    /// connection.
    async fn batch(&self, meta: &SnapshotMeta, digests: &[Digest]) -> Result<(), SendError> {
        let flags = self
            .link()
            .clone()
            .missing(pb::MissingRequest {
                digests: digests
                    .iter()
                    .map(|d| Bytes::copy_from_slice(d.as_bytes()))
                    .collect(),
            })
            .await
            .map_err(self.remote_err("a digest query"))?
            .into_inner()
            .missing;
        if flags.len() != digests.len() {
            return Err(SendError::Remote {
                remote: self.remote.name.clone(),
                what: "a digest query".into(),
                code: tonic::Code::Internal,
                message: format!(
                    "answered {} flags for {} digests",
                    flags.len(),
                    digests.len()
                ),
            });
        }
        let missing: Vec<Digest> = digests
            .iter()
            .zip(&flags)
            .filter(|(_, m)| **m)
            .map(|(d, _)| *d)
            .collect();
        let skipped = (digests.len() - missing.len()) as u64;
        self.counters
            .chunks_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        let streams = self.links.len();
        let (tx, rx) = tokio::sync::mpsc::channel::<(Vec<pb::Record>, u64)>(streams);
        let produce = async move {
            let mut reads = stream::iter(missing)
                .map(|d| async move {
                    self.source
                        .read_record(&d)
                        .await
                        .map_err(|source| SendError::Read {
                            id: meta.id.to_string(),
                            digest: d,
                            source,
                        })
                })
                .buffered(READ_AHEAD * streams);
            let (mut group, mut bytes) = (Vec::new(), 0u64);
            while let Some(chunk) = reads.next().await {
                let chunk = chunk?;
                bytes += chunk.record.len() as u64;
                group.push(pb::Record {
                    digest: Bytes::copy_from_slice(chunk.digest.as_bytes()),
                    record: Bytes::from(chunk.record),
                });
                if bytes >= PUT_BYTES as u64
                    && tx.send((std::mem::take(&mut group), bytes)).await.is_err()
                {
                    return Ok(());
                }
                if group.is_empty() {
                    bytes = 0;
                }
            }
            let _ = tx.send((group, bytes)).await;
            Ok::<(), SendError>(())
        };
        let consume = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|(group, bytes)| self.push(self.link(), group, bytes))
            .buffer_unordered(streams)
            .try_collect::<()>();
        let (produced, consumed) = tokio::join!(produce, consume);
        consumed.and(produced)
    }

    /// Sends every chunk of `meta` the remote lacks, then commits it there.
    async fn snapshot(&self, meta: &SnapshotMeta) -> Result<(), SendError> {
        let store = self.source.store();
        let mut seen = HashSet::new();
        let mut digests = Vec::new();
        for disk in &meta.disks {
            let index = load_index(store.as_ref(), &disk.index)
                .await
                .map_err(|source| SendError::Index {
                    id: meta.id.to_string(),
                    vm: meta.vm.clone(),
                    source,
                })?;
            let chunks = index.stored_digests().map(|(_, d)| d);
            for d in chunks.chain(disk.index.pieces.iter().copied()) {
                if seen.insert(d) {
                    digests.push(d);
                }
            }
        }
        drop(seen);
        // Owned batches: a closure over borrowed slices makes the future not `Send` for
        // every lifetime (rust-lang/rust#102211). Two batches at once: the next one's
        // digest query overlaps this one's records.
        let batches: Vec<Vec<Digest>> =
            digests.chunks(self.batch).map(<[Digest]>::to_vec).collect();
        drop(digests);
        stream::iter(batches)
            .map(|b| async move { self.batch(meta, &b).await })
            .buffer_unordered(2)
            .try_collect::<()>()
            .await?;
        let json = serde_json::to_string(meta)
            .map_err(|e| SendError::Source(SourceError(e.to_string())))?;
        let r = self.links[0]
            .clone()
            .commit(pb::CommitRequest {
                snapshot_json: json,
            })
            .await
            .map_err(self.remote_err(&format!("snapshot {}", meta.id)))?;
        if !r.into_inner().already {
            self.counters.snapshots_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Replicates to `remote` every snapshot of the chosen VMs it lacks; see the module docs.
pub async fn replicate(
    source: &dyn Source,
    remote: &Remote,
    opts: &Options,
    progress: Option<OnProgress>,
) -> Result<Report, SendError> {
    let started = Instant::now();
    let streams = opts.streams.max(1);
    // Connected at once: each TLS handshake costs round trips on a high-latency link.
    let links = futures::future::try_join_all((0..streams).map(|_| link::connect(remote))).await?;
    let mut run = Run {
        source,
        remote,
        links,
        next_link: Default::default(),
        limiter: Limiter::new(opts.limit),
        counters: Counters::default(),
        progress,
        batch: opts.batch.max(1),
        report: Report {
            remote: remote.name.clone(),
            ..Report::default()
        },
        started,
    };
    let hello = run.links[0]
        .clone()
        .hello(pb::HelloRequest {})
        .await
        .map_err(run.remote_err("the connection"))?
        .into_inner();
    if hello.protocol != crate::PROTOCOL {
        return Err(SendError::Protocol {
            remote: remote.name.clone(),
            theirs: hello.protocol,
            ours: crate::PROTOCOL,
        });
    }
    run.report.remote_cluster = hello.cluster;
    let vms = match opts.vms.is_empty() {
        true => &remote.vms,
        false => &opts.vms,
    };
    let snaps: Vec<SnapshotMeta> = source
        .snapshots()
        .await?
        .into_iter()
        .filter(|m| vms.is_empty() || vms.contains(&m.vm))
        .collect();
    let mut todo = Vec::new();
    for group in snaps.chunks(IDS_PER_ASK) {
        let present = run.links[0]
            .clone()
            .has_snapshots(pb::HasSnapshotsRequest {
                ids: group.iter().map(|m| m.id.to_string()).collect(),
            })
            .await
            .map_err(run.remote_err("a snapshot query"))?
            .into_inner()
            .present;
        for (i, m) in group.iter().enumerate() {
            match present.get(i) {
                Some(true) => {
                    run.report.snapshots_present += 1;
                    // Forward only: what is older than a snapshot the remote has of the
                    // same VM stays on this side, so each site keeps its own retention
                    // (a snapshot the remote pruned is not sent again).
                    let before = todo.len();
                    todo.retain(|t: &&SnapshotMeta| t.vm != m.vm);
                    run.report.snapshots_older += (before - todo.len()) as u64;
                }
                _ => todo.push(m),
            }
        }
    }
    for meta in todo {
        let span = tracing::info_span!("replicate_snapshot", remote = %remote.name, vm = %meta.vm, snapshot = %meta.id);
        run.snapshot(meta).instrument(span).await?;
    }
    Ok(run.report())
}

#[cfg(test)]
mod tests;
