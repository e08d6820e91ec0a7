//! A progress bar on stderr for operations on a disk, shown only in a terminal (never
//! with `--json` or when stderr is redirected).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use bora_core::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bar {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// Starts a bar of `total` bytes fed by `progress`, labelled `what`.
    pub fn start(what: &str, total: u64, progress: Arc<Progress>, json: bool) -> Bar {
        if json || !std::io::stderr().is_terminal() {
            return Bar {
                bar: None,
                ticker: None,
            };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                b.set_position(progress.done());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    /// Removes the bar.
    pub fn finish(self) {}
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
