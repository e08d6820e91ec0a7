//! The optional bandwidth limit of a replication: every stream asks the one [`Limiter`]
//! before it sends a batch, and waits for the batch's turn at `bytes_per_s`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Paces sends to an average of `bytes_per_s` (a batch goes at once if the link has been
/// idle; the next waits for the time the previous one's bytes take at the rate).
#[derive(Debug)]
pub struct Limiter {
    bytes_per_s: f64,
    next: Mutex<Instant>,
}

impl Limiter {
    /// `None` for no limit (0).
    pub fn new(bytes_per_s: u64) -> Option<Limiter> {
        (bytes_per_s > 0).then(|| Limiter {
            bytes_per_s: bytes_per_s as f64,
            next: Mutex::new(Instant::now()),
        })
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sends_are_paced_to_the_rate() {
        let l = Limiter::new(1000).unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            l.acquire(500).await;
        }
        // The fifth batch may start once four have had their 0.5 s each.
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t1 = Instant::now();
        l.acquire(500).await;
        assert_eq!(t1.elapsed(), Duration::ZERO, "an idle link sends at once");
        assert!(Limiter::new(0).is_none());
    }
}
