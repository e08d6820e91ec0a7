use std::sync::Arc;

use bora_proto::replica as pb;
use bora_proto::replica::replica_server::Replica;
use bytes::Bytes;
use tonic::{Code, Request};

use super::ReplicaService;
use crate::send::Source;
use crate::testing::Mem;

fn record(digest: &bora_core::digest::Digest, record: Vec<u8>) -> pb::Record {
    pb::Record {
        digest: Bytes::copy_from_slice(digest.as_bytes()),
        record: Bytes::from(record),
    }
}

#[tokio::test]
async fn a_corrupt_record_refuses_its_batch_naming_the_chunk() {
    let source = Mem::default();
    let meta = source.backup("vm1", &[1, 2]).await;
    let index = bora_core::index_store::load_index(source.store.as_ref(), &meta.disks[0].index)
        .await
        .unwrap();
    let (a, b) = (index.get(0).unwrap(), index.get(1).unwrap());
    let good = source.read_record(&a).await.unwrap().record;
    let mut bad = source.read_record(&b).await.unwrap().record;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let site = Arc::new(Mem::default());
    let svc = ReplicaService::new(site.clone());
    let e = svc
        .put_records(Request::new(pb::PutRecordsRequest {
            records: vec![record(&a, good.clone()), record(&b, bad)],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains(&b.to_string()), "{}", e.message());
    assert!(
        e.message().contains("nothing of it was stored"),
        "{}",
        e.message()
    );
    assert!(
        site.store.is_empty(),
        "nothing of a refused batch is stored"
    );
    // A record sent under another chunk's digest is refused too.
    let e = svc
        .put_records(Request::new(pb::PutRecordsRequest {
            records: vec![record(&b, good)],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(site.store.is_empty());
}

#[tokio::test]
async fn a_snapshot_is_committed_only_once_complete_and_only_once() {
    let source = Mem::default();
    let meta = source.backup("vm1", &[1, 2, 3]).await;
    let site = Arc::new(Mem::default());
    let svc = ReplicaService::new(site.clone());
    let commit = || {
        svc.commit(Request::new(pb::CommitRequest {
            snapshot_json: serde_json::to_string(&meta).unwrap(),
        }))
    };
    let e = commit().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("incomplete"), "{}", e.message());
    // Index pieces there, one data chunk still missing.
    let index = bora_core::index_store::load_index(source.store.as_ref(), &meta.disks[0].index)
        .await
        .unwrap();
    let mut have: Vec<_> = meta.disks[0].index.pieces.clone();
    have.extend([index.get(0).unwrap(), index.get(1).unwrap()]);
    let mut records = Vec::new();
    for d in &have {
        records.push(record(d, source.read_record(d).await.unwrap().record));
    }
    svc.put_records(Request::new(pb::PutRecordsRequest { records }))
        .await
        .unwrap();
    let e = commit().await.unwrap_err();
    let third = index.get(2).unwrap();
    assert!(
        e.message().contains("1 chunk(s) missing"),
        "{}",
        e.message()
    );
    assert!(e.message().contains(&third.to_string()), "{}", e.message());
    assert!(site.snaps().is_empty());
    let r = source.read_record(&third).await.unwrap().record;
    svc.put_records(Request::new(pb::PutRecordsRequest {
        records: vec![record(&third, r)],
    }))
    .await
    .unwrap();
    assert!(!commit().await.unwrap().into_inner().already);
    assert!(commit().await.unwrap().into_inner().already);
    assert_eq!(site.snaps(), vec![meta.clone()]);
    assert!(site.restores(&meta, &[1, 2, 3]).await);
}
