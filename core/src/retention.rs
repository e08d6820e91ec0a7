//! Which snapshots a retention policy keeps (`bora prune`). Pure: a VM's snapshots in,
//! the ones to keep and to forget out.
//!
//! The rules are restic's: `keep_last` keeps the newest N; `keep_daily` the newest
//! snapshot of each of the N newest days that have one (and likewise weeks — ISO weeks —
//! and months, by the snapshot's UTC time). A snapshot any rule keeps is kept. Any policy
//! keeps the newest snapshot, so the next incremental always finds its parent.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::snapshot::{SnapshotId, SnapshotMeta};

/// How many snapshots of each kind to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Policy {
    /// A policy that keeps nothing would forget every snapshot: refused.
    pub fn is_empty(&self) -> bool {
        self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "give at least one --keep-* of 1 or more: a policy that keeps nothing would forget every snapshot"
    )]
    EmptyPolicy,
    #[error("snapshot {id} has an unreadable time {time:?}")]
    BadTime { id: SnapshotId, time: String },
}

/// The decision for one VM's snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Oldest first, as given.
    pub keep: Vec<SnapshotId>,
    pub forget: Vec<SnapshotId>,
}

/// Applies `policy` to `snaps` (one VM's, oldest first).
pub fn select(snaps: &[SnapshotMeta], policy: Policy) -> Result<Decision, RetentionError> {
    if policy.is_empty() {
        return Err(RetentionError::EmptyPolicy);
    }
    let mut times = Vec::with_capacity(snaps.len());
    for s in snaps {
        let t = OffsetDateTime::parse(&s.time, &Rfc3339).map_err(|_| RetentionError::BadTime {
            id: s.id.clone(),
            time: s.time.clone(),
        })?;
        times.push(t.to_offset(time::UtcOffset::UTC));
    }
    let mut kept: BTreeSet<usize> = BTreeSet::new();
    // Newest first.
    let order: Vec<usize> = (0..snaps.len()).rev().collect();
    kept.extend(order.iter().take(policy.keep_last as usize));
    let mut by_bucket = |n: u32, bucket: &dyn Fn(OffsetDateTime) -> (i32, u32)| {
        let mut seen = BTreeSet::new();
        for &i in &order {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(times[i])) {
                kept.insert(i);
            }
        }
    };
    by_bucket(policy.keep_daily, &|t| (t.year(), u32::from(t.ordinal())));
    by_bucket(policy.keep_weekly, &|t| {
        let (y, w, _) = t.to_iso_week_date();
        (y, u32::from(w))
    });
    by_bucket(policy.keep_monthly, &|t| {
        (t.year(), u32::from(u8::from(t.month())))
    });
    let mut d = Decision::default();
    for (i, s) in snaps.iter().enumerate() {
        if kept.contains(&i) {
            d.keep.push(s.id.clone());
        } else {
            d.forget.push(s.id.clone());
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SNAPSHOT_FORMAT_VERSION;

    fn snap(n: u32, time: &str) -> SnapshotMeta {
        SnapshotMeta {
            format: SNAPSHOT_FORMAT_VERSION,
            id: format!("{n:016x}").parse().expect("id"),
            vm: "vm".into(),
            time: time.into(),
            parent: None,
            disks: vec![],
        }
    }

    fn ids(v: &[SnapshotId]) -> Vec<String> {
        v.iter().map(|i| i.to_string()).collect()
    }

    fn id(n: u32) -> String {
        format!("{n:016x}")
    }

    /// Two snapshots a day from 2026-10-30 to 2026-11-12 (14 days, 28 snapshots).
    fn fortnight() -> Vec<SnapshotMeta> {
        let start = OffsetDateTime::parse("2026-10-30T00:00:00Z", &Rfc3339).expect("t");
        (0..28u32)
            .map(|i| {
                let t = start + time::Duration::hours(i64::from(i) * 12 + 3);
                snap(i, &t.format(&Rfc3339).expect("fmt"))
            })
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let s = fortnight();
        let d = select(
            &s,
            Policy {
                keep_last: 3,
                ..Policy::default()
            },
        )
        .expect("select");
        assert_eq!(ids(&d.keep), [id(25), id(26), id(27)]);
        assert_eq!(d.forget.len(), 25);
    }

    #[test]
    fn daily_weekly_monthly_keep_the_newest_of_each_bucket() {
        let s = fortnight();
        let daily = select(
            &s,
            Policy {
                keep_daily: 2,
                ..Policy::default()
            },
        )
        .expect("select");
        // The newest of 2026-11-12 and of 2026-11-11.
        assert_eq!(ids(&daily.keep), [id(25), id(27)]);
        let weekly = select(
            &s,
            Policy {
                keep_weekly: 3,
                ..Policy::default()
            },
        )
        .expect("select");
        // ISO weeks: 44 ends Sunday 2026-11-01 (snapshot 5), 45 ends 2026-11-08 (19),
        // 46 holds the rest (newest 27).
        assert_eq!(ids(&weekly.keep), [id(5), id(19), id(27)]);
        let monthly = select(
            &s,
            Policy {
                keep_monthly: 5,
                ..Policy::default()
            },
        )
        .expect("select");
        // October's newest is the 31st's second (snapshot 3).
        assert_eq!(ids(&monthly.keep), [id(3), id(27)]);
        let both = select(
            &s,
            Policy {
                keep_last: 1,
                keep_monthly: 2,
                ..Policy::default()
            },
        )
        .expect("select");
        assert_eq!(ids(&both.keep), [id(3), id(27)]);
    }

    #[test]
    fn every_policy_keeps_the_newest_and_an_empty_one_is_refused() {
        let s = fortnight();
        for p in [
            Policy {
                keep_daily: 1,
                ..Policy::default()
            },
            Policy {
                keep_weekly: 1,
                ..Policy::default()
            },
            Policy {
                keep_monthly: 1,
                ..Policy::default()
            },
        ] {
            let d = select(&s, p).expect("select");
            assert_eq!(d.keep.last().map(|i| i.to_string()), Some(id(27)), "{p:?}");
        }
        assert!(matches!(
            select(&s, Policy::default()),
            Err(RetentionError::EmptyPolicy)
        ));
        let mut bad = fortnight();
        bad[3].time = "yesterday".into();
        assert!(matches!(
            select(
                &bad,
                Policy {
                    keep_last: 1,
                    ..Policy::default()
                }
            ),
            Err(RetentionError::BadTime { .. })
        ));
        assert_eq!(
            select(
                &[],
                Policy {
                    keep_last: 1,
                    ..Policy::default()
                }
            )
            .expect("empty"),
            Decision::default()
        );
    }
}
