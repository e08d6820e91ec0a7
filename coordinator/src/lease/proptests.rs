//! Property tests of the lease table: random interleavings of workers leasing, beating,
//! completing (sometimes twice, sometimes late), failing and vanishing across several jobs
//! and hosts. A small model predicts every answer; after every call the table's leases must
//! be the model's, and every commit must hold, for every range of every disk in order, the
//! result of the first completion accepted for it. At the end a faithful worker drains the
//! table and every job must have ended.

use std::collections::BTreeMap;

use bora_core::{ByteRange, Digest};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::planner::split_disk;

#[derive(Clone, Debug)]
enum Op {
    /// A worker (one of 4) asks for a range.
    Lease(usize),
    /// The owner of a lease (any lease ever given, picked by index) beats.
    Heartbeat(usize),
    /// Someone else beats for it.
    ForeignHeartbeat(usize),
    /// A lease's result arrives (again, if it did before).
    Complete(usize),
    /// A result naming a chunk outside its range arrives.
    BadComplete(usize),
    Fail(usize),
    Advance(u64),
    Expire,
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize).prop_map(Op::Lease),
        3 => any::<usize>().prop_map(Op::Heartbeat),
        1 => any::<usize>().prop_map(Op::ForeignHeartbeat),
        6 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::BadComplete),
        2 => any::<usize>().prop_map(Op::Fail),
        3 => (0..800u64).prop_map(Op::Advance),
        2 => Just(Op::Expire),
        1 => (0..5usize).prop_map(Op::Cancel),
    ]
}

fn config() -> impl Strategy<Value = LeaseConfig> {
    (
        100u64..1000,
        0u32..=4,
        proptest::option::of(1usize..=3),
        16_384u64..=65_536,
    )
        .prop_map(
            |(lease_ms, max_attempts, per_host_limit, range_bytes)| LeaseConfig {
                lease_ms,
                max_attempts,
                per_host_limit,
                range_bytes,
            },
        )
}

/// 1–4 jobs on 2 hosts, 1–3 disks each, chunk sizes 4–32 KiB, sizes not chunk-aligned.
fn jobs() -> impl Strategy<Value = Vec<JobSpec>> {
    let disks = vec((12u32..=15, 1u64..=200_000), 1..=3);
    vec((0..2usize, disks), 1..=4).prop_map(|jobs| {
        jobs.into_iter()
            .enumerate()
            .map(|(j, (host, disks))| JobSpec {
                id: format!("j{j}").into(),
                host: format!("h{host}"),
                disks: disks
                    .into_iter()
                    .enumerate()
                    .map(|(d, (shift, size))| DiskSpec {
                        name: format!("d{d}"),
                        size,
                        chunk_size: 1 << shift,
                    })
                    .collect(),
            })
            .collect()
    })
}

/// A result for every chunk of the lease's range; `nonce` makes each report distinct, so
/// a commit shows which report it kept.
fn result_of(lease: &Lease, chunk_size: u32, nonce: u64) -> RangeResult {
    let cs = u64::from(chunk_size);
    let (first, end) = (lease.range.offset / cs, lease.range.end().div_ceil(cs));
    let digest = Digest::of(&[lease.id.0.to_le_bytes(), nonce.to_le_bytes()].concat());
    RangeResult {
        entries: (first..end).map(|c| (c as usize, Some(digest))).collect(),
        ..Default::default()
    }
}

struct MLease {
    lease: Lease,
    expired: bool,
    failed: bool,
    completed: bool,
}

type RangeKey = (JobId, usize, usize);

/// What the table must hold, kept the simple way.
struct Model {
    config: LeaseConfig,
    specs: BTreeMap<JobId, JobSpec>,
    ranges: BTreeMap<(JobId, usize), Vec<ByteRange>>,
    /// Jobs, the one served longest ago first.
    order: Vec<JobId>,
    /// Every lease given, in order (lease n at n - 1).
    leases: Vec<MLease>,
    /// The first accepted result of each range.
    done: BTreeMap<RangeKey, (LeaseId, RangeResult)>,
    ended: BTreeMap<JobId, JobStatus>,
    now: u64,
    nonce: u64,
}

fn key(l: &Lease) -> RangeKey {
    (l.job.clone(), l.disk, l.index)
}

impl Model {
    fn new(config: LeaseConfig, specs: &[JobSpec]) -> Model {
        let mut ranges = BTreeMap::new();
        for s in specs {
            for (d, disk) in s.disks.iter().enumerate() {
                let r = split_disk(disk.size, disk.chunk_size, config.range_bytes);
                ranges.insert((s.id.clone(), d), r);
            }
        }
        Model {
            specs: specs.iter().map(|s| (s.id.clone(), s.clone())).collect(),
            order: specs.iter().map(|s| s.id.clone()).collect(),
            config,
            ranges,
            leases: Vec::new(),
            done: BTreeMap::new(),
            ended: BTreeMap::new(),
            now: 0,
            nonce: 0,
        }
    }

    fn running(&self, job: &JobId) -> bool {
        !self.ended.contains_key(job)
    }

    fn is_active(&self, m: &MLease) -> bool {
        self.running(&m.lease.job)
            && !(m.expired || m.failed || m.completed)
            && !self.done.contains_key(&key(&m.lease))
    }

    fn active(&self) -> Vec<&Lease> {
        let active = self.leases.iter().filter(|m| self.is_active(m));
        active.map(|m| &m.lease).collect()
    }

    fn active_of(&self, job: &JobId) -> Vec<Lease> {
        let all = self.active().into_iter();
        all.filter(|l| l.job == *job).cloned().collect()
    }

    fn host_load(&self, host: &str) -> usize {
        let active = self.active().into_iter();
        active.filter(|l| self.specs[&l.job].host == host).count()
    }

    /// Ranges of `job` with no result and no active lease.
    fn pending(&self, job: &JobId) -> Vec<(usize, usize)> {
        let held: Vec<_> = self.active().into_iter().map(key).collect();
        let mut out = Vec::new();
        for d in 0..self.specs[job].disks.len() {
            for i in 0..self.ranges[&(job.clone(), d)].len() {
                let k = (job.clone(), d, i);
                if !self.done.contains_key(&k) && !held.contains(&k) {
                    out.push((d, i));
                }
            }
        }
        out
    }

    fn eligible(&self, job: &JobId) -> bool {
        let under = |limit| self.host_load(&self.specs[job].host) < limit;
        self.running(job)
            && !self.pending(job).is_empty()
            && self.config.per_host_limit.is_none_or(under)
    }

    /// Why a heartbeat or failure report on lease `n` changes nothing.
    fn stale(&self, m: &MLease) -> Option<Stale> {
        if !self.running(&m.lease.job) {
            Some(Stale::JobEnded)
        } else if m.completed {
            Some(Stale::RangeDone)
        } else if m.expired {
            Some(Stale::LeaseExpired)
        } else if m.failed {
            Some(Stale::LeaseFailed)
        } else if self.done.contains_key(&key(&m.lease)) {
            Some(Stale::RangeDone)
        } else {
            None
        }
    }

    /// Why a result on lease `m` is not taken (expired leases' results are).
    fn stale_result(&self, m: &MLease) -> Option<Stale> {
        if !self.running(&m.lease.job) {
            Some(Stale::JobEnded)
        } else if self.done.contains_key(&key(&m.lease)) {
            Some(Stale::RangeDone)
        } else if m.failed {
            Some(Stale::LeaseFailed)
        } else {
            None
        }
    }

    fn chunk_size(&self, l: &Lease) -> u32 {
        self.specs[&l.job].disks[l.disk].chunk_size
    }

    /// The range used its last attempt.
    fn exhausted(&self, l: &Lease) -> bool {
        l.attempt >= self.config.max_attempts.max(1)
    }

    /// Checks a commit: every disk tiled once, each range holding its first accepted result.
    fn check_commit(&self, c: &JobCommit) -> Result<(), TestCaseError> {
        let spec = &self.specs[&c.job];
        prop_assert_eq!(&c.host, &spec.host);
        prop_assert_eq!(c.disks.len(), spec.disks.len());
        for (d, (dc, ds)) in c.disks.iter().zip(&spec.disks).enumerate() {
            prop_assert_eq!(
                (&dc.name, dc.size, dc.chunk_size),
                (&ds.name, ds.size, ds.chunk_size)
            );
            let planned = &self.ranges[&(c.job.clone(), d)];
            prop_assert_eq!(dc.ranges.len(), planned.len());
            let mut offset = 0;
            for (i, cr) in dc.ranges.iter().enumerate() {
                prop_assert_eq!(cr.range.offset, offset);
                prop_assert!(cr.range.length > 0);
                prop_assert_eq!(cr.range.offset % u64::from(ds.chunk_size), 0);
                prop_assert_eq!(cr.range, planned[i]);
                let first = &self.done[&(c.job.clone(), d, i)];
                prop_assert_eq!((&cr.lease, &cr.result), (&first.0, &first.1));
                offset = cr.range.end();
            }
            prop_assert_eq!(offset, ds.size);
        }
        Ok(())
    }

    /// Runs `op` on the table and checks the answer. Returns the lease given, if any.
    fn step(&mut self, t: &mut LeaseTable, op: &Op) -> Result<Option<Lease>, TestCaseError> {
        let lease_ms = self.config.lease_ms;
        let pick = |n: usize| (!self.leases.is_empty()).then(|| n % self.leases.len());
        match *op {
            Op::Lease(w) => {
                let worker = WorkerId(format!("w{w}"));
                let got = t.lease(&worker, self.now);
                let first = self.order.iter().position(|j| self.eligible(j));
                let (Some(l), Some(pos)) = (&got, first) else {
                    prop_assert!(got.is_none() && first.is_none(), "{got:?} {first:?}");
                    return Ok(None);
                };
                prop_assert_eq!(&self.order[pos], &l.job, "not the job's turn");
                let served = self.order.remove(pos);
                self.order.push(served);
                prop_assert_eq!(l.id.0, self.leases.len() as u64 + 1);
                prop_assert!(self.pending(&l.job).contains(&(l.disk, l.index)));
                prop_assert_eq!(l.range, self.ranges[&(l.job.clone(), l.disk)][l.index]);
                let before = self.leases.iter().filter(|m| key(&m.lease) == key(l));
                prop_assert_eq!(l.attempt as usize, before.count() + 1);
                prop_assert_eq!((&l.worker, l.expires_ms), (&worker, self.now + lease_ms));
                self.leases.push(MLease {
                    lease: l.clone(),
                    expired: false,
                    failed: false,
                    completed: false,
                });
                return Ok(got);
            }
            Op::Heartbeat(n) => {
                let Some(n) = pick(n) else { return Ok(None) };
                let l = &self.leases[n].lease;
                let got = t.heartbeat(&l.worker.clone(), l.id, self.now);
                match self.stale(&self.leases[n]) {
                    Some(s) => prop_assert_eq!(got, Ok(Heartbeat::Ended(s))),
                    None => {
                        let expires_ms = l.expires_ms.max(self.now + lease_ms);
                        prop_assert_eq!(got, Ok(Heartbeat::Extended { expires_ms }));
                        self.leases[n].lease.expires_ms = expires_ms;
                    }
                }
            }
            Op::ForeignHeartbeat(n) => {
                let Some(n) = pick(n) else { return Ok(None) };
                let l = &self.leases[n].lease;
                let got = t.heartbeat(&"intruder".into(), l.id, self.now);
                if self.running(&l.job) {
                    let wrong = matches!(got, Err(LeaseError::WrongWorker { .. }));
                    prop_assert!(wrong, "{:?}", got);
                } else {
                    prop_assert_eq!(got, Ok(Heartbeat::Ended(Stale::JobEnded)));
                }
            }
            Op::Complete(n) | Op::BadComplete(n) => {
                let Some(n) = pick(n) else { return Ok(None) };
                self.nonce += 1;
                let l = self.leases[n].lease.clone();
                let cs = self.chunk_size(&l);
                let mut result = result_of(&l, cs, self.nonce);
                let bad = matches!(op, Op::BadComplete(_));
                if bad {
                    result
                        .entries
                        .push((l.range.end().div_ceil(u64::from(cs)) as usize, None));
                }
                let got = t.complete(l.id, result.clone());
                if let Some(s) = self.stale_result(&self.leases[n]) {
                    prop_assert_eq!(got, Ok(Completion::Ignored(s)));
                    return Ok(None);
                }
                if bad {
                    let outside = matches!(got, Err(LeaseError::ChunkOutsideRange { .. }));
                    prop_assert!(outside, "{:?}", got);
                    return Ok(None);
                }
                let holder = self
                    .active()
                    .into_iter()
                    .find(|a| key(a) == key(&l) && a.id != l.id);
                let holder = holder.map(|h| h.id);
                let Ok(Completion::Accepted { commit, superseded }) = got else {
                    return Err(TestCaseError::fail(format!("{got:?}")));
                };
                prop_assert_eq!(superseded.map(|s| s.id), holder);
                prop_assert!(self.done.insert(key(&l), (l.id, result)).is_none());
                self.leases[n].completed = true;
                let all = self.pending(&l.job).is_empty() && self.active_of(&l.job).is_empty();
                prop_assert_eq!(commit.is_some(), all);
                if let Some(c) = commit {
                    prop_assert_eq!(&c.job, &l.job);
                    self.check_commit(&c)?;
                    prop_assert!(self.ended.insert(c.job, JobStatus::Committed).is_none());
                }
            }
            Op::Fail(n) => {
                let Some(n) = pick(n) else { return Ok(None) };
                let l = self.leases[n].lease.clone();
                let got = t.fail(l.id, "boom");
                if let Some(s) = self.stale(&self.leases[n]) {
                    prop_assert_eq!(got, Ok(FailOutcome::Ignored(s)));
                    return Ok(None);
                }
                self.leases[n].failed = true;
                let retry = self.retry(&l, FailCause::Error("boom".into()));
                prop_assert_eq!(got, Ok(FailOutcome::Retry(retry)));
            }
            Op::Advance(ms) => self.now += ms,
            Op::Expire => {
                let got = t.expire(self.now);
                let mut want = Vec::new();
                for job in self.specs.keys().cloned().collect::<Vec<_>>() {
                    let mut due = self.active_of(&job);
                    due.retain(|l| l.expires_ms <= self.now);
                    for l in due {
                        self.leases[l.id.0 as usize - 1].expired = true;
                        let cause = FailCause::Expired {
                            worker: l.worker.clone(),
                        };
                        let retry = self.retry(&l, cause);
                        let failed = matches!(retry, Retry::JobFailed(_));
                        want.push(Expired { lease: l, retry });
                        if failed {
                            break;
                        }
                    }
                }
                prop_assert_eq!(got, want);
            }
            Op::Cancel(j) => {
                let job = JobId(format!("j{j}"));
                let got = t.cancel(&job);
                if !self.specs.contains_key(&job) {
                    prop_assert_eq!(got, Err(LeaseError::UnknownJob(job)));
                } else if let Some(status) = self.ended.get(&job) {
                    prop_assert_eq!(got, Ok(CancelOutcome::AlreadyEnded(*status)));
                } else {
                    let released = self.active_of(&job);
                    prop_assert_eq!(got, Ok(CancelOutcome::Cancelled { released }));
                    self.ended.insert(job, JobStatus::Cancelled);
                }
            }
        }
        Ok(None)
    }

    /// What a failed or expired lease `l` (already marked) must do to its range.
    fn retry(&mut self, l: &Lease, cause: FailCause) -> Retry {
        if !self.exhausted(l) {
            return Retry::Requeued {
                attempts: l.attempt,
            };
        }
        let released = self.active_of(&l.job);
        self.ended.insert(l.job.clone(), JobStatus::Failed);
        Retry::JobFailed(JobFailure {
            job: l.job.clone(),
            disk: self.specs[&l.job].disks[l.disk].name.clone(),
            index: l.index,
            range: l.range,
            attempts: l.attempt,
            cause,
            released,
        })
    }

    /// The table's leases, statuses and next deadline are the model's.
    fn check_table(&self, t: &LeaseTable) -> Result<(), TestCaseError> {
        let mut active: Vec<_> = t.active_leases().cloned().collect();
        active.sort_by_key(|l| l.id);
        let want: Vec<Lease> = self.active().into_iter().cloned().collect();
        prop_assert_eq!(&active, &want);
        let mut held: Vec<_> = active.iter().map(key).collect();
        held.sort();
        held.dedup();
        prop_assert_eq!(held.len(), active.len(), "a range leased twice");
        if let Some(limit) = self.config.per_host_limit {
            for host in ["h0", "h1"] {
                prop_assert!(self.host_load(host) <= limit);
            }
        }
        let deadline = active.iter().map(|l| l.expires_ms).min();
        prop_assert_eq!(t.next_deadline(), deadline);
        for (job, spec) in &self.specs {
            let want = self.ended.get(job).copied().unwrap_or_else(|| {
                let total = (0..spec.disks.len())
                    .map(|d| self.ranges[&(job.clone(), d)].len())
                    .sum();
                let done = self.done.keys().filter(|k| k.0 == *job).count();
                JobStatus::Running { done, total }
            });
            prop_assert_eq!(t.status(job), Some(want));
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn every_interleaving_commits_each_range_once(
        config in config(),
        specs in jobs(),
        ops in vec(op(), 0..300),
    ) {
        let mut t = LeaseTable::new(config.clone());
        for s in &specs {
            t.add_job(s.clone()).unwrap();
        }
        let mut m = Model::new(config.clone(), &specs);
        for op in &ops {
            m.step(&mut t, op)?;
            m.check_table(&t)?;
        }
        // Liveness: the random phase's workers vanish; one faithful worker then completes
        // every range it is given, and every job must end.
        m.step(&mut t, &Op::Advance(config.lease_ms * 10))?;
        m.step(&mut t, &Op::Expire)?;
        let total: usize = m.ranges.values().map(Vec::len).sum();
        let mut drained = false;
        for _ in 0..=total {
            let Some(l) = m.step(&mut t, &Op::Lease(0))? else {
                drained = true;
                break;
            };
            m.step(&mut t, &Op::Complete(l.id.0 as usize - 1))?;
            m.check_table(&t)?;
        }
        prop_assert!(drained);
        for s in &specs {
            let status = t.status(&s.id);
            prop_assert!(!matches!(status, Some(JobStatus::Running { .. })), "{status:?}");
        }
    }
}
