//! Repair: make every chunk's owners hold it.
//!
//! # Semantics
//!
//! [`repair`] lists the digests of every member it can reach (`ListDigests`, page by
//! page, ascending) and merges the lists, so each distinct digest is seen once together
//! with the set of nodes holding it. For each digest, every owner by the full membership
//! ([`Membership::owners`](bora_core::placement::Membership::owners): where the
//! chunk belongs, whether or not a node is down) that is reachable and lacks it gets a
//! copy: the chunk's stored record is read from a node that has it (`ReadRecord`, owners
//! first, verified on arrival; a corrupt or missing copy means trying the next holder) and
//! put to the owner. Nothing is ever deleted: copies handed off to non-owners while an
//! owner was down stay where they are.
//!
//! This is what brings a restarted node up to date (it gets the chunks written while it
//! was down) and fills a new node (it gets exactly the digests it now owns, nothing
//! else moves). Members that cannot be listed are reported and skipped — nothing is copied
//! to them, and chunks only they hold are not seen; run repair again once they are back.
//! Repair is idempotent, and chunks put while it runs are either seen or left for the
//! next run. Nodes are asked through the store's identity check
//! ([`PlacedChunkStore::verified`]): a node answering at a member's address as another
//! node is that member being unreachable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bora_core::digest::Digest;
use bora_core::placement::NodeId;
use bora_core::store::StoreError;
use bora_proto::storage::ChunkRecord;
use futures::StreamExt;
use futures::future::join_all;
use tracing::Instrument;

use crate::grpc::chunk_to_wire;
use crate::placed::{PlacedChunkStore, is_node_failure};

/// Digests asked for per `ListDigests` page.
pub const LIST_PAGE: u32 = 4096;
/// Copies whose records are read before they are put (bounds memory: chunks of this many
/// digests are held at once).
const COPY_ROUND: usize = 32;
/// Records read at once.
const READ_CONCURRENCY: usize = 8;

/// What a repair run found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Distinct digests listed by the reachable nodes.
    pub digests_seen: u64,
    /// Copies put to owners that lacked them.
    pub copies_made: u64,
    /// Record bytes (header + payload) of those copies.
    pub bytes_copied: u64,
    /// Digests an owner lacks and no node could provide a verified copy of (every holder's
    /// copy is corrupt or gone).
    pub unrecoverable: Vec<Digest>,
    /// Copies an owner still lacks because a node failed during the run (reading the
    /// record or putting it); a later run retries them.
    pub copies_failed: u64,
    /// Members that could not be listed; nothing was checked on or copied to them.
    pub nodes_unreachable: Vec<NodeId>,
}

impl RepairReport {
    /// Whether every reachable owner now holds every chunk seen, and every member was
    /// reachable.
    pub fn is_complete(&self) -> bool {
        self.unrecoverable.is_empty()
            && self.copies_failed == 0
            && self.nodes_unreachable.is_empty()
    }
}

/// Why a repair run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// No member could be listed at all.
    #[error("repair: no storage node could be listed (unreachable: {nodes})")]
    NoNodes { nodes: String },
    /// A node failed after its listing had begun; a merge without it would be wrong.
    #[error("repair: listing the digests of storage node {node} failed part way: {source}")]
    List {
        node: NodeId,
        #[source]
        source: StoreError,
    },
}

/// One node's digest list, read a page at a time.
struct Cursor {
    node: NodeId,
    page: VecDeque<Digest>,
    last: Option<Digest>,
    done: bool,
}

impl Cursor {
    /// The node's smallest digest not consumed yet, fetching the next page when needed.
    async fn head(&mut self, store: &PlacedChunkStore) -> Result<Option<Digest>, StoreError> {
        while self.page.is_empty() && !self.done {
            let last = self.last;
            let page = store
                .ask(&self.node, |c| async move {
                    c.list_digests(last, LIST_PAGE).await
                })
                .await?;
            // An empty page ends the list even if the node says otherwise.
            self.done = page.done || page.digests.is_empty();
            if let Some(last) = page.digests.last() {
                self.last = Some(*last);
            }
            self.page.extend(page.digests);
        }
        Ok(self.page.front().copied())
    }
}

/// Makes every chunk held by a reachable member present on each of its reachable owners;
/// see the module docs.
pub async fn repair(store: &PlacedChunkStore) -> Result<RepairReport, RepairError> {
    let span = tracing::info_span!("repair", nodes = store.membership().len());
    async {
        let report = run(store).await?;
        tracing::info!(
            digests_seen = report.digests_seen,
            copies_made = report.copies_made,
            bytes_copied = report.bytes_copied,
            unrecoverable = report.unrecoverable.len(),
            copies_failed = report.copies_failed,
            unreachable = report.nodes_unreachable.len(),
            "repair done"
        );
        Ok(report)
    }
    .instrument(span)
    .await
}

async fn run(store: &PlacedChunkStore) -> Result<RepairReport, RepairError> {
    let mut report = RepairReport::default();
    let mut cursors = Vec::new();
    for node in store.membership().nodes() {
        let mut cursor = Cursor {
            node: node.clone(),
            page: VecDeque::new(),
            last: None,
            done: false,
        };
        match cursor.head(store).await.map(|_| cursor) {
            Ok(cursor) => {
                store.mark_up(node);
                cursors.push(cursor);
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "storage node cannot be listed; skipped");
                store.mark_down(node, &e);
                report.nodes_unreachable.push(node.clone());
            }
        }
    }
    if cursors.is_empty() {
        let nodes: Vec<&str> = report
            .nodes_unreachable
            .iter()
            .map(|n| n.0.as_str())
            .collect();
        return Err(RepairError::NoNodes {
            nodes: nodes.join(", "),
        });
    }
    let reachable: BTreeSet<NodeId> = cursors.iter().map(|c| c.node.clone()).collect();
    let mut copier = Copier {
        store,
        queued: Vec::new(),
        failed: BTreeSet::new(),
    };
    loop {
        let mut smallest: Option<Digest> = None;
        for c in &mut cursors {
            let head = c.head(store).await.map_err(|source| RepairError::List {
                node: c.node.clone(),
                source,
            })?;
            if let Some(h) = head {
                smallest = Some(smallest.map_or(h, |s| s.min(h)));
            }
        }
        let Some(digest) = smallest else { break };
        let mut holders = BTreeSet::new();
        for c in &mut cursors {
            if c.page.front() == Some(&digest) {
                c.page.pop_front();
                holders.insert(c.node.clone());
            }
        }
        report.digests_seen += 1;
        let targets: Vec<NodeId> = store
            .membership()
            .owners(&digest)
            .into_iter()
            .filter(|o| !holders.contains(o) && reachable.contains(o))
            .collect();
        if !targets.is_empty() {
            // Read from owners first, then the others, each in ranking order.
            let ranking = store.membership().ranking(&digest);
            let sources = ranking
                .into_iter()
                .filter(|n| holders.contains(n))
                .collect();
            copier.queued.push(CopyJob {
                digest,
                sources,
                targets,
            });
            if copier.queued.len() >= COPY_ROUND {
                copier.flush(&mut report).await;
            }
        }
    }
    copier.flush(&mut report).await;
    Ok(report)
}

/// A digest some owners lack.
struct CopyJob {
    digest: Digest,
    /// Nodes that listed it, in the order to read from.
    sources: Vec<NodeId>,
    /// Owners to copy it to.
    targets: Vec<NodeId>,
}

/// What reading a record from its holders came to.
enum Read {
    Record(ChunkRecord),
    /// Every holder answered, none with a good copy.
    Unrecoverable,
    /// Some holder could not be asked; maybe a later run can.
    Failed,
}

/// Reads records and puts them to the owners lacking them, a round at a time.
struct Copier<'a> {
    store: &'a PlacedChunkStore,
    queued: Vec<CopyJob>,
    /// Nodes that failed during this run: not asked again.
    failed: BTreeSet<NodeId>,
}

impl Copier<'_> {
    async fn read(&self, copy: &CopyJob) -> Read {
        let mut node_failed = false;
        for node in copy.sources.iter().filter(|n| !self.failed.contains(*n)) {
            let got = self
                .store
                .ask(node, |c| async move { c.read_record(&copy.digest).await })
                .await;
            match got {
                Ok(chunk) => return Read::Record(chunk_to_wire(chunk)),
                Err(e) => {
                    tracing::warn!(chunk = %copy.digest, %node, error = %e, "cannot read the record to copy; trying the next holder");
                    node_failed |= is_node_failure(&e);
                }
            }
        }
        match node_failed || copy.sources.iter().any(|n| self.failed.contains(n)) {
            true => Read::Failed,
            false => Read::Unrecoverable,
        }
    }

    async fn flush(&mut self, report: &mut RepairReport) {
        let copies = std::mem::take(&mut self.queued);
        if copies.is_empty() {
            return;
        }
        let this = &*self;
        let read: Vec<(CopyJob, Read)> = futures::stream::iter(copies)
            .map(|copy| async move {
                let r = this.read(&copy).await;
                (copy, r)
            })
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut puts: BTreeMap<NodeId, Vec<ChunkRecord>> = BTreeMap::new();
        for (copy, r) in read {
            match r {
                Read::Record(record) => {
                    for t in copy.targets {
                        puts.entry(t).or_default().push(record.clone());
                    }
                }
                Read::Unrecoverable => {
                    tracing::error!(chunk = %copy.digest, holders = copy.sources.len(), "no holder has a good copy");
                    report.unrecoverable.push(copy.digest);
                }
                Read::Failed => report.copies_failed += copy.targets.len() as u64,
            }
        }
        let results = join_all(puts.into_iter().map(|(node, records)| async move {
            let count = records.len() as u64;
            let bytes: u64 = records.iter().map(|r| r.record.len() as u64).sum();
            let r = match this.failed.contains(&node) {
                true => Err(StoreError::Backend("failed earlier in this run".into())),
                false => {
                    this.store
                        .ask(&node, |c| async move { c.put_records(records).await })
                        .await
                }
            };
            (node, count, bytes, r)
        }))
        .await;
        for (node, count, bytes, r) in results {
            match r {
                Ok(_) => {
                    report.copies_made += count;
                    report.bytes_copied += bytes;
                }
                Err(e) => {
                    tracing::warn!(%node, copies = count, error = %e, "cannot copy chunks to their owner");
                    report.copies_failed += count;
                    if is_node_failure(&e) {
                        self.store.mark_down(&node, &e);
                        self.failed.insert(node);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
