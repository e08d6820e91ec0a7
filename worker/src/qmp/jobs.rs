//! Block jobs (the backup job that keeps a fleecing image frozen) and their teardown.

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::error::QmpError;
use super::{QmpClient, QmpEvent};

/// A job's state (`JobStatus`); `Null` means it is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
    /// `undefined`, or a state newer than this client.
    #[default]
    #[serde(other)]
    Unknown,
}

/// A block job (`query-block-jobs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BlockJob {
    /// The job id (QMP calls it `device` here).
    #[serde(rename = "device")]
    pub id: String,
    /// `backup`, `mirror`, `commit`, `stream`.
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobStatus,
    pub offset: u64,
    pub len: u64,
}

/// A job of any kind (`query-jobs`), including concluded ones not yet dismissed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Job {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobStatus,
    /// Why the job failed, once it has concluded with an error.
    pub error: Option<String>,
}

impl QmpClient {
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJob>, QmpError> {
        self.query("query-block-jobs", Value::Null).await
    }

    pub async fn query_jobs(&self) -> Result<Vec<Job>, QmpError> {
        self.query("query-jobs", Value::Null).await
    }

    /// The status of job `id`, `None` if there is no such job.
    pub async fn job_status(&self, id: &str) -> Result<Option<JobStatus>, QmpError> {
        let jobs = self.query_jobs().await?;
        Ok(jobs.into_iter().find(|j| j.id == id).map(|j| j.status))
    }

    /// Requests cancellation of a block job; it is gone once `JOB_STATUS_CHANGE` reports
    /// status `null` (see [`QmpClient::block_job_cancel_and_wait`]).
    pub async fn block_job_cancel(&self, job_id: &str) -> Result<(), QmpError> {
        self.run("block-job-cancel", json!({ "device": job_id }))
            .await
    }

    /// Removes a concluded job (needed when it was started with `auto-dismiss: false`).
    pub async fn job_dismiss(&self, id: &str) -> Result<(), QmpError> {
        self.run("job-dismiss", json!({ "id": id })).await
    }

    /// Cancels a block job and waits (up to the command timeout) until it is gone,
    /// dismissing it if it stays concluded. A job that had already concluded is dismissed;
    /// one already gone is fine.
    pub async fn block_job_cancel_and_wait(&self, job_id: &str) -> Result<(), QmpError> {
        let rx = self.events();
        if let Err(e) = self.block_job_cancel(job_id).await {
            if !matches!(e, QmpError::Command { .. }) {
                return Err(e);
            }
            return match self.job_status(job_id).await? {
                None => Ok(()),
                Some(JobStatus::Concluded) => self.dismiss_concluded(job_id).await,
                Some(_) => Err(e),
            };
        }
        self.wait_event_or_state(
            rx,
            |ev| {
                ev.event == "JOB_STATUS_CHANGE"
                    && ev.data_str("id") == Some(job_id)
                    && matches!(ev.data_str("status"), Some("null" | "concluded"))
            },
            Awaited::JobEnded(job_id),
        )
        .await?;
        match self.job_status(job_id).await? {
            Some(JobStatus::Concluded) => self.dismiss_concluded(job_id).await,
            None | Some(JobStatus::Null) => Ok(()),
            Some(other) => {
                // Only a new job reusing the id can be here; it is not ours to cancel.
                tracing::warn!(job_id, ?other, "a job with the cancelled job's id appeared");
                Ok(())
            }
        }
    }

    /// Dismisses a concluded job; fine if it was dismissed automatically in between.
    async fn dismiss_concluded(&self, job_id: &str) -> Result<(), QmpError> {
        match self.job_dismiss(job_id).await {
            Err(e @ QmpError::Command { .. }) => match self.job_status(job_id).await? {
                None => Ok(()),
                Some(_) => Err(e),
            },
            other => other,
        }
    }

    /// Waits (up to the command timeout) for an event matching `pred` on `rx`, which was
    /// subscribed before the command that causes it. If the subscription lags, events may
    /// have been lost: QEMU is then asked whether the `awaited` state was reached. Returns
    /// the event, or `None` when the state answered.
    pub(super) async fn wait_event_or_state(
        &self,
        mut rx: broadcast::Receiver<QmpEvent>,
        pred: impl Fn(&QmpEvent) -> bool,
        awaited: Awaited<'_>,
    ) -> Result<Option<QmpEvent>, QmpError> {
        let timeout = self.command_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match QmpClient::wait_event(&mut rx, &pred, left).await {
                Ok(event) => return Ok(Some(event)),
                Err(QmpError::EventsLagged(n)) => {
                    tracing::debug!(
                        missed = n,
                        ?awaited,
                        "qmp events lagged; asking for the state"
                    );
                    // Subscribe again before asking, so nothing falls in between.
                    rx = self.events();
                    if self.reached(awaited).await? {
                        return Ok(None);
                    }
                }
                Err(QmpError::EventTimeout(_)) => return Err(QmpError::EventTimeout(timeout)),
                Err(e) => return Err(e),
            }
        }
    }

    async fn reached(&self, awaited: Awaited<'_>) -> Result<bool, QmpError> {
        Ok(match awaited {
            Awaited::ExportGone(id) => {
                !self.query_block_exports().await?.iter().any(|e| e.id == id)
            }
            Awaited::JobEnded(id) => matches!(
                self.job_status(id).await?,
                None | Some(JobStatus::Null | JobStatus::Concluded)
            ),
        })
    }
}

/// A state an event announces, checked by query when events were lost.
#[derive(Clone, Copy, Debug)]
pub(super) enum Awaited<'a> {
    /// The export with this id is gone.
    ExportGone(&'a str),
    /// The job with this id is gone or concluded.
    JobEnded(&'a str),
}
