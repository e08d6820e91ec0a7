//! The client against a real qemu-storage-daemon: node queries, bitmaps, transactions,
//! and the project's freeze-for-backup sequence and its teardown, checked through NBD.

use std::time::Duration;

use serde_json::json;

use super::qsd::{DISK_SIZE, MIB, Qsd, path_str, run};
use super::{
    BORA_NODE_PREFIX, BackupSync, ExportRemoveMode, JobStatus, QmpClient, QmpError, Transaction,
};
use crate::nbd::{NbdAddr, NbdClient, STATE_DIRTY, dirty_bitmap_context};

const FLEECE: &str = "bora-fleece1";
const FLEECE_FILE: &str = "bora-fleece1-file";

/// Adds the fleecing image: a scratch qcow2 whose backing is disk0.
async fn add_fleece(qsd: &Qsd, qmp: &QmpClient) {
    let image = qsd.path("fleece.qcow2");
    let size = DISK_SIZE.to_string();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&image), &size],
    )
    .await;
    qmp.blockdev_add(
        json!({"driver": "file", "node-name": FLEECE_FILE, "filename": path_str(&image)}),
    )
    .await
    .unwrap();
    qmp.blockdev_add(
        json!({"driver": "qcow2", "node-name": FLEECE, "file": FLEECE_FILE, "backing": "disk0"}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn greeting_and_capabilities() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    assert!(qmp.version().major >= 8, "{:?}", qmp.version());
    let v = qmp.execute("query-version", json!(null)).await.unwrap();
    assert_eq!(v["qemu"]["major"], qmp.version().major);
}

#[tokio::test]
async fn named_nodes_show_both_nodes_and_a_new_bitmap() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    qmp.bitmap_add("disk0", "chk1", true).await.unwrap();
    let nodes = qmp.query_named_block_nodes().await.unwrap();
    let disk = nodes
        .iter()
        .find(|n| n.node_name == "disk0")
        .expect("disk0");
    let file = nodes
        .iter()
        .find(|n| n.node_name == "disk0-file")
        .expect("disk0-file");
    assert_eq!((disk.drv.as_str(), file.drv.as_str()), ("qcow2", "file"));
    assert_eq!(disk.virtual_size, DISK_SIZE);
    assert!(!disk.read_only);
    let bm = disk.bitmap("chk1").expect("chk1");
    assert!(bm.persistent && bm.recording && !bm.busy, "{bm:?}");
    assert_eq!((bm.granularity, bm.count), (65536, 0));
    assert!(file.dirty_bitmaps.is_empty());
}

#[tokio::test]
async fn only_the_qcow2_node_is_top_level() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    let disks = qmp.top_level_nodes().await.unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0].name, "disk0");
    assert_eq!(disks[0].node.node_name, "disk0");
    assert_eq!(disks[0].node.virtual_size, DISK_SIZE);
}

#[tokio::test]
async fn refused_commands_carry_the_class() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    let err = qmp
        .execute("bora-no-such-command", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"), "{err}");
    let err = qmp.bitmap_remove("disk0", "nope").await.unwrap_err();
    assert_eq!(err.class(), Some("GenericError"), "{err}");
    let err = qmp
        .nbd_server_start_unix(&qsd.path("other.sock"))
        .await
        .unwrap_err();
    assert!(err.is_nbd_server_running_error(), "{err}");
    assert!(
        !qmp.execute("x", json!(null))
            .await
            .unwrap_err()
            .is_nbd_server_running_error()
    );
    // The NBD server can be restarted elsewhere once stopped.
    qmp.nbd_server_stop().await.unwrap();
    qmp.nbd_server_start_unix(&qsd.path("other.sock"))
        .await
        .unwrap();
    assert!(qsd.path("other.sock").exists());
}

#[tokio::test]
async fn bitmap_remove_and_enable_are_transaction_actions() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    let actions = qmp.transaction_actions().await.unwrap();
    for a in [
        "block-dirty-bitmap-remove",
        "block-dirty-bitmap-enable",
        "blockdev-backup",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    qmp.bitmap_add("disk0", "a", true).await.unwrap();
    let tx = Transaction::new()
        .bitmap_add("disk0", "b", false)
        .bitmap_disable("disk0", "a");
    qmp.transaction(&tx).await.unwrap();
    let bitmaps = |qmp: QmpClient| async move {
        let nodes = qmp.query_named_block_nodes().await.unwrap();
        let disk = nodes.into_iter().find(|n| n.node_name == "disk0").unwrap();
        let mut found: Vec<(String, bool)> = disk
            .dirty_bitmaps
            .into_iter()
            .map(|b| (b.name, b.recording))
            .collect();
        found.sort(); // QEMU lists the newest first
        found
    };
    assert_eq!(
        bitmaps(qmp.clone()).await,
        [("a".into(), false), ("b".into(), true)]
    );
    let tx = Transaction::new()
        .bitmap_enable("disk0", "a")
        .bitmap_merge("disk0", "a", &["b"])
        .bitmap_remove("disk0", "b");
    qmp.transaction(&tx).await.unwrap();
    assert_eq!(bitmaps(qmp.clone()).await, [("a".into(), true)]);
    // All or nothing: a failing action undoes the ones before it.
    let tx = Transaction::new()
        .bitmap_add("disk0", "c", true)
        .bitmap_remove("disk0", "nope");
    assert_eq!(
        qmp.transaction(&tx).await.unwrap_err().class(),
        Some("GenericError")
    );
    assert_eq!(bitmaps(qmp.clone()).await, [("a".into(), true)]);
}

/// The freeze sequence of the project's QEMU notes, a write during the backup, and the
/// teardown in the documented order; nothing of Bora's may be left behind.
#[tokio::test]
async fn freeze_export_and_teardown_leave_nothing_behind() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    let nbd = NbdAddr::Unix(qsd.nbd.clone());
    let live = NbdClient::connect(&nbd, "live", &[]).await.unwrap();
    qmp.bitmap_add("disk0", "chk1", true).await.unwrap();
    live.write(0, &vec![0xaa; MIB as usize]).await.unwrap();
    live.flush().await.unwrap();

    add_fleece(&qsd, &qmp).await;
    let freeze = Transaction::new()
        .bitmap_add("disk0", "chk2", true)
        .bitmap_disable("disk0", "chk1")
        .blockdev_backup("disk0", FLEECE, "bora-bk1", BackupSync::None);
    qmp.transaction(&freeze).await.unwrap();
    qmp.block_export_add_nbd("bora-backup1", FLEECE, "bora-backup1", false, &["chk1"])
        .await
        .unwrap();

    // Frozen: the guest's write after the freeze is not seen by the backup export.
    live.write(0, &vec![0xbb; 64 << 10]).await.unwrap();
    let ctx = dirty_bitmap_context("chk1");
    let backup = NbdClient::connect(&nbd, "bora-backup1", &[&ctx])
        .await
        .unwrap();
    assert!(backup.read_only());
    assert_eq!(backup.size(), DISK_SIZE);
    assert!(
        backup
            .read(0, 4096)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0xaa)
    );
    let dirty = backup.block_status(&ctx, 0, DISK_SIZE).await.unwrap();
    assert_eq!(
        (dirty[0].offset, dirty[0].length, dirty[0].flags),
        (0, MIB, STATE_DIRTY)
    );
    backup.disconnect().await.unwrap();

    let disks = qmp.top_level_nodes().await.unwrap();
    assert_eq!(
        disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["disk0"]
    );
    let jobs = qmp.query_block_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].id.as_str(), jobs[0].job_type.as_str()),
        ("bora-bk1", "backup")
    );
    assert_eq!(jobs[0].status, JobStatus::Running);

    // Teardown, in the documented order; then (as on failure) fold chk1 into chk2.
    qmp.block_export_del_and_wait("bora-backup1", ExportRemoveMode::Safe)
        .await
        .unwrap();
    qmp.block_job_cancel_and_wait("bora-bk1").await.unwrap();
    qmp.blockdev_del(FLEECE).await.unwrap();
    qmp.blockdev_del(FLEECE_FILE).await.unwrap();
    qmp.bitmap_merge("disk0", "chk2", &["chk1"]).await.unwrap();
    qmp.bitmap_remove("disk0", "chk1").await.unwrap();

    let nodes = qmp.query_named_block_nodes().await.unwrap();
    assert!(
        !nodes
            .iter()
            .any(|n| n.node_name.starts_with(BORA_NODE_PREFIX)),
        "{nodes:?}"
    );
    let exports = qmp.query_block_exports().await.unwrap();
    assert_eq!(
        exports.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["live"]
    );
    assert_eq!(
        exports[0].node_name, "disk0",
        "the live export is back on disk0"
    );
    assert!(qmp.query_block_jobs().await.unwrap().is_empty());
    assert!(qmp.query_jobs().await.unwrap().is_empty());
    let disk = nodes.iter().find(|n| n.node_name == "disk0").unwrap();
    let names: Vec<&str> = disk.dirty_bitmaps.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["chk2"]);
    assert!(disk.dirty_bitmaps[0].recording);
    assert_eq!(
        disk.dirty_bitmaps[0].count, MIB,
        "chk1's 1 MiB plus chk2's 64 KiB inside it"
    );
    live.disconnect().await.unwrap();
}

#[tokio::test]
async fn cancel_and_wait_dismisses_a_job_that_already_concluded() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    add_fleece(&qsd, &qmp).await;
    let data = json!({"device": "disk0", "target": FLEECE, "sync": "none",
                      "job-id": "bora-bk2", "auto-dismiss": false});
    qmp.transaction(&Transaction::new().action("blockdev-backup", data))
        .await
        .unwrap();
    let mut rx = qmp.events();
    qmp.block_job_cancel("bora-bk2").await.unwrap();
    let concluded = |ev: &super::QmpEvent| ev.data_str("status") == Some("concluded");
    QmpClient::wait_event(&mut rx, concluded, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        qmp.job_status("bora-bk2").await.unwrap(),
        Some(JobStatus::Concluded)
    );
    qmp.block_job_cancel_and_wait("bora-bk2").await.unwrap();
    assert_eq!(qmp.job_status("bora-bk2").await.unwrap(), None);
    // Gone already: fine too.
    qmp.block_job_cancel_and_wait("bora-bk2").await.unwrap();
    qmp.blockdev_del(FLEECE).await.unwrap();
    qmp.blockdev_del(FLEECE_FILE).await.unwrap();
}

#[tokio::test]
async fn a_safe_export_delete_refuses_while_a_client_is_connected() {
    let qsd = Qsd::start().await;
    let qmp = qsd.connect().await;
    let live = NbdClient::connect(&NbdAddr::Unix(qsd.nbd.clone()), "live", &[])
        .await
        .unwrap();
    let err = qmp
        .block_export_del("live", ExportRemoveMode::Safe)
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err}");
    qmp.block_export_del_and_wait("live", ExportRemoveMode::Hard)
        .await
        .unwrap();
    assert!(qmp.query_block_exports().await.unwrap().is_empty());
    assert!(
        live.read(0, 512).await.is_err(),
        "the client was disconnected"
    );
}
