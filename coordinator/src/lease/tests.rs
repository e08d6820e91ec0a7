//! Scenarios of the lease table, one policy each.

use bora_core::{ByteRange, Digest};

use super::*;

const CS: u32 = 1 << 16;

/// Ranges of 4 chunks, leases of 1 s, 3 attempts.
fn config() -> LeaseConfig {
    LeaseConfig {
        lease_ms: 1000,
        max_attempts: 3,
        per_host_limit: None,
        range_bytes: 4 * u64::from(CS),
    }
}

fn spec(id: &str, host: &str, chunks: &[u64]) -> JobSpec {
    JobSpec {
        id: id.into(),
        host: host.into(),
        disks: chunks
            .iter()
            .enumerate()
            .map(|(i, n)| DiskSpec {
                name: format!("d{i}"),
                size: n * u64::from(CS),
                chunk_size: CS,
            })
            .collect(),
    }
}

fn w(name: &str) -> WorkerId {
    name.into()
}

/// A result naming every chunk of the lease's range, with a digest that says which lease
/// produced it.
fn result_of(lease: &Lease) -> RangeResult {
    let cs = u64::from(CS);
    let first = (lease.range.offset / cs) as usize;
    let n = lease.range.length.div_ceil(cs) as usize;
    RangeResult {
        entries: (first..first + n)
            .map(|c| (c, Some(Digest::of(&lease.id.0.to_le_bytes()))))
            .collect(),
        ..Default::default()
    }
}

fn accepted(c: Completion) -> (Option<JobCommit>, Option<Lease>) {
    match c {
        Completion::Accepted { commit, superseded } => (commit, superseded),
        other => panic!("expected accepted, got {other:?}"),
    }
}

#[test]
fn the_commit_holds_every_range_in_order_whatever_order_they_finish_in() {
    let mut t = LeaseTable::new(config());
    assert_eq!(t.add_job(spec("j", "h", &[10, 5])).unwrap(), 5);
    let leases: Vec<_> = (0..5).map(|_| t.lease(&w("w"), 0).unwrap()).collect();
    assert!(t.lease(&w("w"), 0).is_none());
    for l in leases[1..].iter().rev() {
        let (commit, _) = accepted(t.complete(l.id, result_of(l)).unwrap());
        assert!(commit.is_none());
    }
    assert_eq!(
        t.status(&"j".into()),
        Some(JobStatus::Running { done: 4, total: 5 })
    );
    let (commit, _) = accepted(t.complete(leases[0].id, result_of(&leases[0])).unwrap());
    let commit = commit.unwrap();
    assert_eq!(commit.disks.len(), 2);
    let d0: Vec<_> = commit.disks[0].ranges.iter().map(|r| r.range).collect();
    let cs = u64::from(CS);
    assert_eq!(
        d0,
        [(0, 4), (4, 4), (8, 2)].map(|(o, l)| ByteRange {
            offset: o * cs,
            length: l * cs
        })
    );
    let used: Vec<_> = commit
        .disks
        .iter()
        .flat_map(|d| &d.ranges)
        .map(|r| r.lease)
        .collect();
    assert_eq!(used, leases.iter().map(|l| l.id).collect::<Vec<_>>());
    assert_eq!(t.status(&"j".into()), Some(JobStatus::Committed));
    assert!(t.active_leases().next().is_none());
}

#[test]
fn running_jobs_take_turns() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("a", "h", &[8])).unwrap();
    t.add_job(spec("b", "h", &[4])).unwrap();
    t.add_job(spec("c", "h", &[8])).unwrap();
    let jobs: Vec<String> = std::iter::from_fn(|| t.lease(&w("w"), 0))
        .map(|l| l.job.0)
        .collect();
    assert_eq!(jobs, ["a", "b", "c", "a", "c"]);
}

#[test]
fn a_host_at_its_limit_is_skipped_until_a_lease_ends() {
    let mut t = LeaseTable::new(LeaseConfig {
        per_host_limit: Some(1),
        ..config()
    });
    t.add_job(spec("a", "h1", &[8])).unwrap();
    t.add_job(spec("b", "h1", &[8])).unwrap();
    t.add_job(spec("c", "h2", &[8])).unwrap();
    let first = t.lease(&w("w"), 0).unwrap();
    assert_eq!(first.job.0, "a");
    assert_eq!(t.lease(&w("w"), 0).unwrap().job.0, "c");
    assert!(
        t.lease(&w("w"), 0).is_none(),
        "both hosts are at their limit"
    );
    t.complete(first.id, result_of(&first)).unwrap();
    assert_eq!(t.lease(&w("w"), 0).unwrap().job.0, "b");
}

#[test]
fn a_heartbeat_keeps_a_lease_and_expiry_requeues_its_range_first() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[8])).unwrap();
    let l = t.lease(&w("w1"), 0).unwrap();
    assert_eq!(l.expires_ms, 1000);
    assert_eq!(t.next_deadline(), Some(1000));
    assert_eq!(
        t.heartbeat(&w("w1"), l.id, 900).unwrap(),
        Heartbeat::Extended { expires_ms: 1900 }
    );
    assert!(t.expire(1500).is_empty());
    let expired = t.expire(1900);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].lease.id, l.id);
    assert_eq!(expired[0].retry, Retry::Requeued { attempts: 1 });
    assert_eq!(
        t.heartbeat(&w("w1"), l.id, 1901).unwrap(),
        Heartbeat::Ended(Stale::LeaseExpired)
    );
    let again = t.lease(&w("w2"), 2000).unwrap();
    assert_eq!((again.index, again.attempt), (0, 2));
}

#[test]
fn an_expired_leases_result_is_taken_if_it_comes_first() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[4])).unwrap();
    let old = t.lease(&w("w1"), 0).unwrap();
    t.expire(1000);
    let new = t.lease(&w("w2"), 1000).unwrap();
    let (commit, superseded) = accepted(t.complete(old.id, result_of(&old)).unwrap());
    assert_eq!(superseded.map(|l| l.id), Some(new.id));
    assert_eq!(commit.unwrap().disks[0].ranges[0].lease, old.id);
    assert_eq!(
        t.complete(new.id, result_of(&new)).unwrap(),
        Completion::Ignored(Stale::JobEnded)
    );
}

#[test]
fn the_superseded_holder_is_told_the_range_is_done() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[8])).unwrap();
    let old = t.lease(&w("w1"), 0).unwrap();
    t.expire(1000);
    let new = t.lease(&w("w2"), 1000).unwrap();
    assert_eq!(new.index, old.index);
    accepted(t.complete(old.id, result_of(&old)).unwrap());
    assert_eq!(
        t.heartbeat(&w("w2"), new.id, 1100).unwrap(),
        Heartbeat::Ended(Stale::RangeDone)
    );
    assert_eq!(
        t.complete(new.id, result_of(&new)).unwrap(),
        Completion::Ignored(Stale::RangeDone)
    );
    assert_eq!(
        t.fail(new.id, "late").unwrap(),
        FailOutcome::Ignored(Stale::RangeDone)
    );
}

#[test]
fn a_second_report_of_a_range_is_ignored() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[8])).unwrap();
    let old = t.lease(&w("w1"), 0).unwrap();
    t.expire(1000);
    let new = t.lease(&w("w2"), 1000).unwrap();
    accepted(t.complete(new.id, result_of(&new)).unwrap());
    for id in [old.id, new.id] {
        assert_eq!(
            t.complete(id, result_of(&old)).unwrap(),
            Completion::Ignored(Stale::RangeDone)
        );
    }
    assert_eq!(
        t.status(&"j".into()),
        Some(JobStatus::Running { done: 1, total: 2 })
    );
}

#[test]
fn failures_requeue_the_range_until_the_last_attempt_fails_the_job() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[8])).unwrap();
    let other = t.lease(&w("w2"), 0).unwrap();
    for attempt in 1..=3 {
        let l = t.lease(&w("w1"), 0).unwrap();
        assert_eq!((l.index, l.attempt), (1, attempt));
        let out = t.fail(l.id, "read error").unwrap();
        if attempt < 3 {
            assert_eq!(
                out,
                FailOutcome::Retry(Retry::Requeued { attempts: attempt })
            );
            assert_eq!(
                t.fail(l.id, "again").unwrap(),
                FailOutcome::Ignored(Stale::LeaseFailed)
            );
            continue;
        }
        let FailOutcome::Retry(Retry::JobFailed(f)) = out else {
            panic!("{out:?}");
        };
        assert_eq!((f.index, f.attempts), (1, 3));
        assert_eq!(f.cause, FailCause::Error("read error".into()));
        assert_eq!(f.released, vec![other.clone()]);
        assert!(f.to_string().contains("job j disk d0 range 1"), "{f}");
    }
    assert_eq!(t.status(&"j".into()), Some(JobStatus::Failed));
    assert!(t.lease(&w("w1"), 0).is_none());
    assert_eq!(
        t.complete(other.id, result_of(&other)).unwrap(),
        Completion::Ignored(Stale::JobEnded)
    );
}

#[test]
fn an_expiry_on_the_last_attempt_fails_the_job() {
    let mut t = LeaseTable::new(LeaseConfig {
        max_attempts: 1,
        ..config()
    });
    t.add_job(spec("j", "h", &[8])).unwrap();
    t.add_job(spec("k", "h", &[4])).unwrap();
    let a = t.lease(&w("w1"), 0).unwrap();
    let k = t.lease(&w("w1"), 0).unwrap();
    let b = t.lease(&w("w1"), 500).unwrap();
    t.heartbeat(&w("w1"), k.id, 500).unwrap();
    let expired = t.expire(1000);
    assert_eq!(expired.len(), 1, "{expired:?}");
    let Retry::JobFailed(f) = &expired[0].retry else {
        panic!("{expired:?}");
    };
    assert_eq!(f.cause, FailCause::Expired { worker: w("w1") });
    assert_eq!(f.released, vec![b]);
    assert_eq!(t.active_leases().map(|l| l.id).collect::<Vec<_>>(), [k.id]);
    assert_eq!(
        t.fail(a.id, "late").unwrap(),
        FailOutcome::Ignored(Stale::JobEnded)
    );
}

#[test]
fn a_failure_after_expiry_uses_no_second_attempt() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[4])).unwrap();
    let l = t.lease(&w("w1"), 0).unwrap();
    t.expire(1000);
    assert_eq!(
        t.fail(l.id, "late").unwrap(),
        FailOutcome::Ignored(Stale::LeaseExpired)
    );
    assert_eq!(t.lease(&w("w2"), 1000).unwrap().attempt, 2);
}

#[test]
fn a_cancelled_job_releases_its_leases_and_never_commits() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[8])).unwrap();
    let a = t.lease(&w("w"), 0).unwrap();
    let b = t.lease(&w("w"), 0).unwrap();
    accepted(t.complete(a.id, result_of(&a)).unwrap());
    assert_eq!(
        t.cancel(&"j".into()).unwrap(),
        CancelOutcome::Cancelled {
            released: vec![b.clone()]
        }
    );
    assert_eq!(
        t.complete(b.id, result_of(&b)).unwrap(),
        Completion::Ignored(Stale::JobEnded)
    );
    assert_eq!(
        t.heartbeat(&w("w"), b.id, 1).unwrap(),
        Heartbeat::Ended(Stale::JobEnded)
    );
    assert_eq!(
        t.cancel(&"j".into()).unwrap(),
        CancelOutcome::AlreadyEnded(JobStatus::Cancelled)
    );
    assert!(t.lease(&w("w"), 0).is_none());
    assert_eq!(
        t.add_job(spec("j", "h", &[8])),
        Err(LeaseError::DuplicateJob("j".into()))
    );
    assert!(t.forget(&"j".into()));
    assert_eq!(t.status(&"j".into()), None);
    assert_eq!(t.add_job(spec("j", "h", &[8])), Ok(2));
    assert!(!t.forget(&"j".into()), "a running job is not forgotten");
}

#[test]
fn input_naming_nothing_known_is_an_error_and_changes_nothing() {
    let mut t = LeaseTable::new(config());
    assert_eq!(
        t.cancel(&"nope".into()),
        Err(LeaseError::UnknownJob("nope".into()))
    );
    for id in [LeaseId(0), LeaseId(1), LeaseId(u64::MAX)] {
        assert_eq!(
            t.complete(id, RangeResult::default()),
            Err(LeaseError::UnknownLease(id))
        );
        assert_eq!(t.fail(id, "x"), Err(LeaseError::UnknownLease(id)));
        assert_eq!(
            t.heartbeat(&w("w"), id, 0),
            Err(LeaseError::UnknownLease(id))
        );
    }
    t.add_job(spec("j", "h", &[8])).unwrap();
    let l = t.lease(&w("w1"), 0).unwrap();
    assert!(matches!(
        t.heartbeat(&w("w2"), l.id, 0),
        Err(LeaseError::WrongWorker { .. })
    ));
    let mut bad = result_of(&l);
    bad.entries.push((4, None));
    let err = t.complete(l.id, bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "job j disk d0 range 0 (0+{}): result names chunk 4 outside the range",
            4 * CS
        )
    );
    assert_eq!(
        t.status(&"j".into()),
        Some(JobStatus::Running { done: 0, total: 2 })
    );
    accepted(t.complete(l.id, result_of(&l)).unwrap());
}

#[test]
fn a_job_spec_is_checked_when_added() {
    let mut t = LeaseTable::new(config());
    let mut s = spec("j", "h", &[]);
    assert_eq!(t.add_job(s.clone()), Err(LeaseError::NoDisks("j".into())));
    s.disks = spec("j", "h", &[4, 4]).disks;
    s.disks[1].name = "d0".into();
    assert!(matches!(
        t.add_job(s.clone()),
        Err(LeaseError::DuplicateDisk { .. })
    ));
    s.disks[1].name = "d1".into();
    s.disks[1].size = 0;
    assert!(matches!(
        t.add_job(s.clone()),
        Err(LeaseError::EmptyDisk { .. })
    ));
    s.disks[1].size = 1;
    s.disks[1].chunk_size = 0;
    assert!(matches!(
        t.add_job(s.clone()),
        Err(LeaseError::ZeroChunkSize { .. })
    ));
    assert_eq!(t.status(&"j".into()), None);
    s.disks[1].chunk_size = CS;
    assert_eq!(t.add_job(s), Ok(2));
}

#[test]
fn get_lease_finds_leases_of_running_jobs_in_any_state() {
    let mut t = LeaseTable::new(config());
    t.add_job(spec("j", "h", &[8])).unwrap();
    let a = t.lease(&w("a"), 0).unwrap();
    assert_eq!(t.get_lease(a.id), Some(&a));
    t.expire(a.expires_ms);
    assert_eq!(t.get_lease(a.id).map(|l| l.worker.clone()), Some(w("a")));
    assert_eq!(t.get_lease(LeaseId(99)), None);
    t.cancel(&"j".into()).unwrap();
    assert_eq!(t.get_lease(a.id), None);
}
