//! The conformance suite every [`PackBackend`] must pass. Public so that backends configured
//! elsewhere (an S3 test bucket in the integration tests) run the very same checks.
//!
//! It panics on the first violation, like a test. Give it an empty backend.

use bytes::Bytes;

use super::{BackendError, PackBackend};

/// Runs every check against `backend`, which must start empty.
pub async fn conformance(backend: &dyn PackBackend) {
    round_trip(backend).await;
    ranges(backend).await;
    missing_is_not_found(backend).await;
    overwrite(backend).await;
    overwrite_is_atomic(backend).await;
    delete(backend).await;
    list_by_prefix(backend).await;
    invalid_names(backend).await;
    clean_up(backend).await;
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn round_trip(b: &dyn PackBackend) {
    let data = pattern(100_000, 1);
    b.put("rt/one.pack", data.clone()).await.expect("put");
    assert_eq!(b.get("rt/one.pack").await.expect("get"), data);
    b.put("rt/empty.pack", Bytes::new())
        .await
        .expect("put empty");
    assert_eq!(b.get("rt/empty.pack").await.expect("get empty").len(), 0);
}

#[allow(clippy::reversed_empty_ranges)]
async fn ranges(b: &dyn PackBackend) {
    let data = pattern(10_000, 2);
    b.put("range/a.pack", data.clone()).await.expect("put");
    for r in [0..1, 0..10_000, 17..4_000, 9_999..10_000] {
        let got = b
            .get_range("range/a.pack", r.clone())
            .await
            .expect("get_range");
        assert_eq!(
            got,
            data.slice(r.start as usize..r.end as usize),
            "range {r:?}"
        );
    }
    for r in [9_000..10_001, 10_000..10_001, 20_000..20_010] {
        match b.get_range("range/a.pack", r.clone()).await {
            Err(BackendError::OutOfRange { len, .. }) => assert_eq!(len, 10_000, "{r:?}"),
            other => panic!("range {r:?} past the end: expected OutOfRange, got {other:?}"),
        }
    }
    for r in [5..5, 6..5] {
        assert!(
            matches!(
                b.get_range("range/a.pack", r.clone()).await,
                Err(BackendError::InvalidRange { .. })
            ),
            "empty range {r:?}"
        );
    }
}

async fn missing_is_not_found(b: &dyn PackBackend) {
    let e = b.get("nope/missing.pack").await.expect_err("get missing");
    assert!(e.is_not_found(), "get: {e:?}");
    let e = b
        .get_range("nope/missing.pack", 0..10)
        .await
        .expect_err("get_range missing");
    assert!(e.is_not_found(), "get_range: {e:?}");
}

async fn overwrite(b: &dyn PackBackend) {
    let (first, second) = (pattern(5_000, 3), pattern(3_000, 4));
    b.put("ow/x.pack", first.clone()).await.expect("put");
    b.put("ow/x.pack", first.clone())
        .await
        .expect("put same again");
    assert_eq!(b.get("ow/x.pack").await.expect("get"), first);
    b.put("ow/x.pack", second.clone()).await.expect("overwrite");
    assert_eq!(b.get("ow/x.pack").await.expect("get"), second);
    assert_eq!(b.list("ow/").await.expect("list"), vec!["ow/x.pack"]);
}

/// Readers racing a writer that alternates two large objects see one or the other whole.
async fn overwrite_is_atomic(b: &dyn PackBackend) {
    let (a, c) = (
        Bytes::from(vec![b'a'; 1 << 20]),
        Bytes::from(vec![b'c'; 1 << 20]),
    );
    b.put("atomic/x.pack", a.clone()).await.expect("put");
    let writer = async {
        for i in 0..20 {
            let data = if i % 2 == 0 { c.clone() } else { a.clone() };
            b.put("atomic/x.pack", data).await.expect("put");
        }
    };
    let reader = async {
        for _ in 0..40 {
            let got = b.get("atomic/x.pack").await.expect("get");
            assert!(got == a || got == c, "saw a partial or mixed object");
            tokio::task::yield_now().await;
        }
    };
    futures::join!(writer, reader);
}

async fn delete(b: &dyn PackBackend) {
    b.put("del/x.pack", pattern(10, 5)).await.expect("put");
    b.delete("del/x.pack").await.expect("delete");
    assert!(b.get("del/x.pack").await.expect_err("gone").is_not_found());
    b.delete("del/x.pack").await.expect("delete is idempotent");
    b.delete("del/never.pack").await.expect("delete missing");
    assert!(b.list("del/").await.expect("list").is_empty());
}

async fn list_by_prefix(b: &dyn PackBackend) {
    for name in [
        "ls/ab/1.pack",
        "ls/ab/2.pack",
        "ls/ac/3.pack",
        "ls/abc/4.pack",
    ] {
        b.put(name, pattern(3, 6)).await.expect("put");
    }
    let list = |p: &'static str| async move { b.list(p).await.expect("list") };
    assert_eq!(list("ls/ab/").await, vec!["ls/ab/1.pack", "ls/ab/2.pack"]);
    assert_eq!(
        list("ls/ab").await,
        vec!["ls/ab/1.pack", "ls/ab/2.pack", "ls/abc/4.pack"]
    );
    assert_eq!(list("ls/ab/2").await, vec!["ls/ab/2.pack"]);
    assert_eq!(list("ls/").await.len(), 4);
    assert!(list("ls/zz").await.is_empty());
    assert!(list("nothing/here/").await.is_empty());
    let all = list("").await;
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted: {all:?}");
    assert!(all.iter().any(|n| n == "ls/ac/3.pack"), "{all:?}");
}

async fn invalid_names(b: &dyn PackBackend) {
    for name in [
        "",
        "/abs.pack",
        "a//b.pack",
        "dir/",
        "../escape.pack",
        "a/./b.pack",
    ] {
        match b.put(name, pattern(1, 7)).await {
            Err(BackendError::InvalidName { .. }) => {}
            other => panic!("name {name:?}: expected InvalidName, got {other:?}"),
        }
    }
}

async fn clean_up(b: &dyn PackBackend) {
    for name in b.list("").await.expect("list") {
        b.delete(&name).await.expect("delete");
    }
    assert!(b.list("").await.expect("list").is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ObjectStoreBackend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_filesystem_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = ObjectStoreBackend::local(&dir.path().join("packs")).expect("open");
        conformance(&backend).await;
    }

    #[tokio::test]
    async fn in_memory_conforms() {
        conformance(&ObjectStoreBackend::in_memory()).await;
    }

    #[tokio::test]
    async fn local_put_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = ObjectStoreBackend::local(dir.path()).expect("open");
        backend
            .put("ab/x.pack", pattern(100, 8))
            .await
            .expect("put");
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("ab"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec!["x.pack"]);
    }
}
