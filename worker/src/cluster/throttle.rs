//! A read-rate cap around a [`BlockSource`]: a token bucket refilled at the cap, from
//! which every read takes its length before it is issued. Allocation maps are not
//! counted (they read metadata, not data).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use bora_core::ByteRange;
use bora_core::blockmap::Extent;

use crate::source::{BlockSource, SourceError};

/// Bytes per second, with a burst of a quarter second. A take larger than the tokens at
/// hand goes into debt and waits it off, so the long-run rate holds for any read size
/// and for readers taking at once.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_s: u64) -> TokenBucket {
        let rate = bytes_per_s.max(1) as f64;
        let burst = rate / 4.0;
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until `n` bytes may be read.
    pub async fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            if s.0 < 0.0 { -s.0 / self.rate } else { 0.0 }
        };
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// A source whose reads are capped to a rate.
pub struct ThrottledSource {
    inner: Arc<dyn BlockSource>,
    bucket: TokenBucket,
}

impl ThrottledSource {
    pub fn new(inner: Arc<dyn BlockSource>, bytes_per_s: u64) -> ThrottledSource {
        ThrottledSource {
            inner,
            bucket: TokenBucket::new(bytes_per_s),
        }
    }
}

#[async_trait]
impl BlockSource for ThrottledSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn extents(&self, range: ByteRange) -> Result<Vec<Extent>, SourceError> {
        self.inner.extents(range).await
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, SourceError> {
        self.bucket.take(u64::from(len)).await;
        self.inner.read(offset, len).await
    }

    async fn dirty(&self, range: ByteRange) -> Result<Option<Vec<Extent>>, SourceError> {
        self.inner.dirty(range).await
    }
}

#[cfg(test)]
mod tests {
    use bora_core::blockmap::ExtentKind;

    use super::*;

    struct Zeros;

    #[async_trait]
    impl BlockSource for Zeros {
        fn size(&self) -> u64 {
            1 << 30
        }
        fn name(&self) -> &str {
            "zeros"
        }
        async fn extents(&self, range: ByteRange) -> Result<Vec<Extent>, SourceError> {
            Ok(vec![Extent {
                offset: range.offset,
                length: range.length,
                kind: ExtentKind::Data,
            }])
        }
        async fn read(&self, _offset: u64, len: u32) -> Result<Bytes, SourceError> {
            Ok(Bytes::from(vec![0; len as usize]))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_held_to_the_rate() {
        let src = Arc::new(ThrottledSource::new(Arc::new(Zeros), 1 << 20));
        let start = Instant::now();
        // 4 MiB from two readers at once, in 64 KiB reads.
        let reader = |src: Arc<ThrottledSource>| async move {
            for i in 0..32u64 {
                src.read(i << 16, 1 << 16).await.unwrap();
            }
        };
        tokio::join!(reader(src.clone()), reader(src.clone()));
        let took = start.elapsed().as_secs_f64();
        // 4 s at 1 MiB/s, less the quarter-second burst the bucket starts with.
        assert!((3.7..=3.8).contains(&took), "{took}");
        // Maps are free.
        let t = Instant::now();
        src.extents(ByteRange {
            offset: 0,
            length: 1 << 30,
        })
        .await
        .unwrap();
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
