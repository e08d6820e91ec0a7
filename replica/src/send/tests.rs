//! The sender against a real listener on 127.0.0.1: TLS with a pinned certificate or a
//! CA, tokens, resumption and dedup.

use std::sync::Arc;

use crate::certgen;
use crate::remote::Remote;
use crate::send::{Options, SendError, replicate};
use crate::testing::{Mem, serve};

const TOKEN: &str = "0123456789abcdef-token";

fn remote(addr: std::net::SocketAddr, g: &certgen::Generated) -> Remote {
    Remote {
        name: "dr".into(),
        url: format!("https://{addr}"),
        fingerprint: Some(g.fingerprint.clone()),
        ca_pem: None,
        token: Some(TOKEN.into()),
        insecure: false,
        vms: vec![],
        auto: false,
    }
}

fn opts(streams: usize) -> Options {
    Options {
        streams,
        batch: 4,
        ..Options::default()
    }
}

#[tokio::test]
async fn replicates_over_tls_then_sends_only_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let g = certgen::generate(&["127.0.0.1".into(), "localhost".into()]).unwrap();
    let site = Arc::new(Mem::default());
    let addr = serve(site.clone(), Some(&g), TOKEN, dir.path()).await;
    let source = Mem::default();
    let s1: Vec<u64> = (0..20).collect();
    let m1 = source.backup("vm1", &s1).await;
    let m_other = source.backup("vm2", &[100, 101]).await;
    let r = remote(addr, &g);
    let mut o = opts(3);
    o.vms = vec!["vm1".into()];
    let rep = replicate(&source, &r, &o, None).await.unwrap();
    assert_eq!(rep.remote_cluster, "site-b");
    assert_eq!(
        (rep.snapshots_sent, rep.chunks_sent, rep.chunks_skipped),
        (1, 21, 0)
    );
    assert!(rep.bytes_sent > 20 * (32 << 10), "{rep:?}");
    assert_eq!(site.snaps(), vec![m1.clone()], "only vm1 was asked for");
    assert!(site.restores(&m1, &s1).await);

    // Two chunks changed: only they and the changed index piece cross.
    let mut s2 = s1.clone();
    s2[3] = 1000;
    s2[17] = 1001;
    let m2 = source.backup("vm1", &s2).await;
    let rep = replicate(&source, &r, &opts(2), None).await.unwrap();
    assert_eq!(rep.snapshots_present, 1);
    assert_eq!(rep.snapshots_sent, 2, "m2 and vm2's snapshot");
    assert_eq!(rep.chunks_sent, 2 + 1 + 3, "{rep:?}");
    assert_eq!(rep.chunks_skipped, 18);
    assert!(site.restores(&m2, &s2).await);
    assert!(site.restores(&m_other, &[100, 101]).await);
    let rep = replicate(&source, &r, &opts(1), None).await.unwrap();
    assert_eq!(
        (rep.snapshots_sent, rep.chunks_sent, rep.snapshots_present),
        (0, 0, 3)
    );

    // The remote keeps less (its own retention): what it pruned, older than the newest
    // it has of the VM, is not sent again; a new snapshot is.
    site.snaps.lock().unwrap().retain(|m| m.id != m1.id);
    let s3: Vec<u64> = (200..204).collect();
    let m3 = source.backup("vm1", &s3).await;
    let rep = replicate(&source, &r, &opts(1), None).await.unwrap();
    assert_eq!(
        (
            rep.snapshots_sent,
            rep.snapshots_older,
            rep.snapshots_present
        ),
        (1, 1, 2),
        "{rep:?}"
    );
    assert!(!site.snaps().iter().any(|m| m.id == m1.id));
    assert!(site.restores(&m3, &s3).await);

    // A CA works as well as the pin, for the name in the certificate.
    let mut by_ca = r.clone();
    by_ca.fingerprint = None;
    by_ca.ca_pem = Some(g.ca_pem.clone());
    replicate(&source, &by_ca, &opts(1), None).await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_or_certificate_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let g = certgen::generate(&["127.0.0.1".into()]).unwrap();
    let other = certgen::generate(&["127.0.0.1".into()]).unwrap();
    let site = Arc::new(Mem::default());
    let addr = serve(site.clone(), Some(&g), TOKEN, dir.path()).await;
    let source = Mem::default();
    source.backup("vm1", &[1, 2, 3]).await;

    let mut r = remote(addr, &g);
    r.token = Some("not-the-token-at-all".into());
    let e = replicate(&source, &r, &opts(1), None).await.unwrap_err();
    assert!(
        matches!(
            e,
            SendError::Remote {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("does not accept the token"), "{e}");
    r.token = None;
    let e = replicate(&source, &r, &opts(1), None).await.unwrap_err();
    assert!(e.to_string().contains("needs a token"), "{e}");

    let mut r = remote(addr, &other);
    let e = replicate(&source, &r, &opts(1), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the pinned sha256:"), "{e}");
    r.fingerprint = None;
    r.ca_pem = Some(other.ca_pem.clone());
    let e = replicate(&source, &r, &opts(1), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot connect to remote dr"), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // Plaintext to a TLS listener fails too.
    let mut r = remote(addr, &g);
    r.fingerprint = None;
    r.insecure = true;
    r.url = format!("http://{addr}");
    assert!(replicate(&source, &r, &opts(1), None).await.is_err());

    assert!(site.store.is_empty(), "nothing was written");
    assert!(site.snaps().is_empty());
}

/// A source whose reads fail after `left` records: a run that dies halfway.
struct Dies {
    inner: Mem,
    left: std::sync::atomic::AtomicI64,
}

#[async_trait::async_trait]
impl crate::send::Source for Dies {
    async fn snapshots(
        &self,
    ) -> Result<Vec<bora_core::snapshot::SnapshotMeta>, crate::send::SourceError> {
        self.inner.snapshots().await
    }
    fn store(&self) -> Arc<dyn bora_core::store::ChunkStore> {
        crate::send::Source::store(&self.inner)
    }
    async fn read_record(
        &self,
        d: &bora_core::digest::Digest,
    ) -> Result<bora_core::chunk::EncodedChunk, bora_core::store::StoreError> {
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
            return Err(bora_core::store::StoreError::Backend("killed".into()));
        }
        self.inner.read_record(d).await
    }
}

#[tokio::test]
async fn a_run_that_died_halfway_resumes_without_resending() {
    let dir = tempfile::tempdir().unwrap();
    let site = Arc::new(Mem::default());
    let addr = serve(site.clone(), None, TOKEN, dir.path()).await;
    let source = Dies {
        inner: Mem::default(),
        left: 22.into(),
    };
    let seeds: Vec<u64> = (0..40).collect();
    let meta = source.inner.backup("vm1", &seeds).await;
    let r = Remote {
        name: "dr".into(),
        url: format!("http://{addr}"),
        fingerprint: None,
        ca_pem: None,
        token: Some(TOKEN.into()),
        insecure: true,
        vms: vec![],
        auto: false,
    };
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = acked.clone();
    let progress: crate::send::OnProgress = Arc::new(move |rep| {
        seen.store(rep.chunks_sent, std::sync::atomic::Ordering::SeqCst);
    });
    let e = replicate(&source, &r, &opts(1), Some(progress))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("killed"), "{e}");
    let first = acked.load(std::sync::atomic::Ordering::SeqCst);
    // Two batches of 4 run at once and the 23rd read fails: the batches whose reads all
    // came back were acknowledged (which ones depends on how the two interleave).
    assert!(
        first > 0 && first <= 22 && first.is_multiple_of(4),
        "{first} chunks acknowledged"
    );
    assert!(
        site.snaps().is_empty(),
        "an incomplete snapshot is not visible"
    );
    source.left.store(1000, std::sync::atomic::Ordering::SeqCst);
    let rep = replicate(&source, &r, &opts(2), None).await.unwrap();
    // Nothing acknowledged is sent again; a batch stored just before the run died may
    // be skipped too even though its acknowledgement never reached the progress report.
    assert!(rep.chunks_skipped >= first, "{rep:?}");
    assert!(
        rep.chunks_skipped <= first + 8,
        "at most the two batches in flight: {rep:?}"
    );
    assert_eq!(rep.chunks_sent + rep.chunks_skipped, 41, "{rep:?}");
    assert!(site.restores(&meta, &seeds).await);
}
