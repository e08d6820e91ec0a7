//! What a worker keeps of a job while it has ranges of it: each disk's source, opened once
//! and shared by the job's ranges of that disk, and the digests the job already sent.
//! Kept while a range of the job runs and for [`IDLE`] after, so the job's next range
//! finds them; then dropped (a qemu-nbd child exits with its last connection).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::debug;

use super::throttle::ThrottledSource;
use crate::nbd::parse_nbd_url;
use crate::pipeline::SeenDigests;
use crate::source::image::open_image;
use crate::source::nbd::{CONNECTIONS, NbdSource};
use crate::source::{BlockSource, SourceError};

/// How long a job's sources stay open after its last range.
pub(super) const IDLE: Duration = Duration::from_secs(60);

type SourceCell = Arc<OnceCell<Arc<dyn BlockSource>>>;

struct JobEntry {
    seen: Arc<SeenDigests>,
    disks: HashMap<String, SourceCell>,
    in_use: usize,
    last_used: Instant,
}

pub(super) struct JobCache {
    jobs: Mutex<HashMap<String, JobEntry>>,
    read_limit: Option<u64>,
}

/// One range's use of its job's resources; ends when dropped.
pub(super) struct JobUse {
    cache: Arc<JobCache>,
    job: String,
    pub(super) seen: Arc<SeenDigests>,
    cell: SourceCell,
}

impl JobCache {
    pub(super) fn new(read_limit: Option<u64>) -> JobCache {
        JobCache {
            jobs: Mutex::new(HashMap::new()),
            read_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, JobEntry>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a range's use of `job`'s `disk`.
    pub(super) fn enter(self: &Arc<Self>, job: &str, disk: &str) -> JobUse {
        let mut jobs = self.lock();
        let entry = jobs.entry(job.to_string()).or_insert_with(|| JobEntry {
            seen: Arc::new(SeenDigests::default()),
            disks: HashMap::new(),
            in_use: 0,
            last_used: Instant::now(),
        });
        entry.in_use += 1;
        entry.last_used = Instant::now();
        let cell = entry.disks.entry(disk.to_string()).or_default().clone();
        JobUse {
            cache: self.clone(),
            job: job.to_string(),
            seen: entry.seen.clone(),
            cell,
        }
    }

    /// Drops the jobs no range has used for [`IDLE`].
    pub(super) fn sweep(&self) {
        self.lock().retain(|job, e| {
            let keep = e.in_use > 0 || e.last_used.elapsed() < IDLE;
            if !keep {
                debug!(job = %job, "job idle; its sources are closed");
            }
            keep
        });
    }

    #[cfg(test)]
    pub(super) fn jobs(&self) -> usize {
        self.lock().len()
    }
}

impl JobUse {
    /// The disk's source, opened by the first range that needs it. A failed open is not
    /// kept: the next range tries again.
    pub(super) async fn source(
        &self,
        source: &str,
        bitmap: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>, SourceError> {
        let limit = self.cache.read_limit;
        self.cell
            .get_or_try_init(|| open_source(source, bitmap, limit))
            .await
            .cloned()
    }
}

impl Drop for JobUse {
    fn drop(&mut self) {
        if let Some(e) = self.cache.lock().get_mut(&self.job) {
            e.in_use = e.in_use.saturating_sub(1);
            e.last_used = Instant::now();
        }
    }
}

/// Opens a job's source as the embedded mode does: an NBD URL through the NBD client
/// (with the export's dirty bitmap `bitmap` for an incremental), an image file by its
/// format (raw directly, qcow2 through qemu-nbd); capped to `read_limit` bytes per
/// second when given.
pub(super) async fn open_source(
    source: &str,
    bitmap: Option<&str>,
    read_limit: Option<u64>,
) -> Result<Arc<dyn BlockSource>, SourceError> {
    let open_err = |reason: String| SourceError::Open {
        path: source.to_string(),
        reason,
    };
    let opened: Arc<dyn BlockSource> = if source.starts_with("nbd://")
        || source.starts_with("nbd+unix://")
    {
        let (addr, export) = parse_nbd_url(source).map_err(open_err)?;
        Arc::new(NbdSource::connect(&addr, &export, bitmap, CONNECTIONS, source.to_string()).await?)
    } else if bitmap.is_some() {
        return Err(open_err(
            "an incremental needs an NBD source with a dirty bitmap, not an image file".into(),
        ));
    } else {
        let path = Path::new(source);
        if !path.is_absolute() {
            return Err(open_err(
                    "expected an absolute image path or an NBD URL (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)".into(),
                ));
        }
        open_image(path).await?
    };
    Ok(match read_limit {
        Some(rate) => Arc::new(ThrottledSource::new(opened, rate)),
        None => opened,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_job_is_kept_while_used_and_for_a_while_after() {
        let cache = Arc::new(JobCache::new(None));
        let a = cache.enter("j1", "d1");
        let b = cache.enter("j1", "d2");
        assert!(
            Arc::ptr_eq(&a.seen, &b.seen),
            "one job, one set of seen digests"
        );
        drop(b);
        tokio::time::advance(IDLE * 2).await;
        cache.sweep();
        assert_eq!(cache.jobs(), 1, "still in use");
        drop(a);
        cache.sweep();
        assert_eq!(cache.jobs(), 1, "just used");
        tokio::time::advance(IDLE).await;
        cache.sweep();
        assert_eq!(cache.jobs(), 0);
    }

    #[tokio::test]
    async fn relative_paths_are_refused() {
        let cache = Arc::new(JobCache::new(None));
        let e = cache
            .enter("j", "d")
            .source("disk.raw", None)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("absolute image path"), "{e}");
    }
}
