//! The client against a scripted server: the happy paths, and a hostile or dying peer
//! (bad greeting, non-JSON, unknown ids, over-long lines, a closed socket), each of which
//! must end in a typed error, never a hang or a panic.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::fake_server::{GREETING, connected, pair, within};
use super::{MAX_LINE, QmpClient, QmpError};

#[tokio::test]
async fn greeting_gives_the_version_and_capabilities_are_negotiated() {
    let (client, mut fake) = connected().await;
    assert_eq!(client.version().major, 10);
    assert_eq!(client.version().micro, 2);
    let call = tokio::spawn(async move { client.execute("query-version", json!(null)).await });
    let msg = fake.message().await;
    assert_eq!(msg["execute"], "query-version");
    assert!(
        msg.get("arguments").is_none(),
        "null arguments are left out"
    );
    fake.reply(&msg["id"], json!({"qemu": {"major": 10}})).await;
    let ret = within(call).await.unwrap().unwrap();
    assert_eq!(ret["qemu"]["major"], 10);
}

#[tokio::test]
async fn garbage_greeting_is_refused() {
    for greeting in ["hello, I am not QEMU", r#"{"NBD": {}}"#, "[1, 2]"] {
        let (stream, mut fake) = pair();
        fake.send(greeting).await;
        let err = within(QmpClient::connect_stream(stream)).await.unwrap_err();
        assert!(matches!(err, QmpError::BadGreeting(_)), "{greeting}: {err}");
    }
}

#[tokio::test]
async fn a_closed_socket_before_the_greeting_is_an_error() {
    let (stream, fake) = pair();
    drop(fake);
    let err = within(QmpClient::connect_stream(stream)).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed), "{err}");
}

#[tokio::test]
async fn refused_capabilities_fail_the_connect() {
    let (stream, mut fake) = pair();
    let server = async {
        fake.send(GREETING).await;
        let (_, id) = fake.command().await;
        fake.reply_error(&id, "CommandNotFound", "no").await;
    };
    let (res, ()) = within(async { tokio::join!(QmpClient::connect_stream(stream), server) }).await;
    assert_eq!(res.unwrap_err().class(), Some("CommandNotFound"));
}

#[tokio::test]
async fn replies_are_matched_by_id_in_any_order() {
    let (client, mut fake) = connected().await;
    let (c1, c2) = (client.clone(), client.clone());
    let a = tokio::spawn(async move { c1.execute("a", json!({"x": 1})).await });
    let (cmd1, id1) = fake.command().await;
    let b = tokio::spawn(async move { c2.execute("b", json!({})).await });
    let (cmd2, id2) = fake.command().await;
    assert_eq!((cmd1.as_str(), cmd2.as_str()), ("a", "b"));
    assert_ne!(id1, id2);
    fake.reply(&id2, json!("for b")).await;
    fake.reply(&id1, json!("for a")).await;
    assert_eq!(within(a).await.unwrap().unwrap(), "for a");
    assert_eq!(within(b).await.unwrap().unwrap(), "for b");
}

#[tokio::test]
async fn an_error_reply_fails_only_that_command() {
    let (client, mut fake) = connected().await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.execute("nope", json!(null)).await });
    let (_, id) = fake.command().await;
    fake.reply_error(
        &id,
        "CommandNotFound",
        "The command nope has not been found",
    )
    .await;
    match within(call).await.unwrap().unwrap_err() {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "nope");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("not been found"));
        }
        other => panic!("unexpected {other}"),
    }
    let call = tokio::spawn(async move { client.execute("ok", json!(null)).await });
    let (_, id) = fake.command().await;
    fake.reply(&id, json!({})).await;
    within(call).await.unwrap().unwrap();
}

#[tokio::test]
async fn events_reach_every_subscriber() {
    let (client, mut fake) = connected().await;
    let mut rx1 = client.events();
    let mut rx2 = client.events();
    fake.event(
        "JOB_STATUS_CHANGE",
        json!({"id": "other", "status": "null"}),
    )
    .await;
    fake.event("JOB_STATUS_CHANGE", json!({"id": "bk1", "status": "null"}))
        .await;
    let pred = |ev: &super::QmpEvent| ev.data_str("id") == Some("bk1");
    let ev = QmpClient::wait_event(&mut rx1, pred, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ev.event, "JOB_STATUS_CHANGE");
    assert_eq!(ev.data_str("status"), Some("null"));
    QmpClient::wait_event(&mut rx2, pred, Duration::from_secs(5))
        .await
        .unwrap();
    let err = QmpClient::wait_event(&mut rx1, pred, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::EventTimeout(_)), "{err}");
}

#[tokio::test]
async fn a_timed_out_command_leaves_the_connection_usable() {
    let (client, mut fake) = connected().await;
    let short = client.with_command_timeout(Duration::from_millis(100));
    let err = within(short.execute("slow", json!(null)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, QmpError::Timeout { ref command, .. } if command == "slow"),
        "{err}"
    );
    let (_, late) = fake.command().await;
    fake.reply(&late, json!("too late")).await;
    let call = tokio::spawn(async move { client.execute("next", json!(null)).await });
    let (_, id) = fake.command().await;
    fake.reply(&id, json!("on time")).await;
    assert_eq!(within(call).await.unwrap().unwrap(), "on time");
}

/// Sends `line` while a command is in flight; the command, a later one and the event
/// subscription must all fail, with `check` matching the cause.
async fn fatal(line: &str, check: impl Fn(&QmpError) -> bool) {
    let (client, mut fake) = connected().await;
    let mut rx = client.events();
    let c = client.clone();
    let call = tokio::spawn(async move { c.execute("query-jobs", json!(null)).await });
    fake.command().await;
    fake.send(line).await;
    let err = within(call).await.unwrap().unwrap_err();
    assert!(matches!(err, QmpError::ConnectionLost(_)), "{line}: {err}");
    assert!(check(err.cause()), "{line}: {err}");
    let later = within(client.execute("query-jobs", json!(null)))
        .await
        .unwrap_err();
    assert!(check(later.cause()), "{line}: {later}");
    let ev = within(QmpClient::wait_event(
        &mut rx,
        |_| true,
        Duration::from_secs(5),
    ))
    .await;
    assert!(matches!(ev, Err(QmpError::EventsClosed)), "{ev:?}");
    assert!(matches!(
        QmpClient::wait_event(&mut client.events(), |_| true, Duration::from_secs(5)).await,
        Err(QmpError::EventsClosed)
    ));
}

#[tokio::test]
async fn a_non_json_line_fails_the_connection() {
    fatal("this is not json", |e| matches!(e, QmpError::BadJson(_))).await;
}

#[tokio::test]
async fn a_reply_for_an_unknown_id_fails_the_connection() {
    fatal(r#"{"return": {}, "id": 999}"#, |e| {
        matches!(e, QmpError::UnknownId(_))
    })
    .await;
    fatal(r#"{"return": {}}"#, |e| matches!(e, QmpError::UnknownId(_))).await;
}

#[tokio::test]
async fn a_message_that_is_neither_reply_nor_event_fails_the_connection() {
    fatal(r#"{"QMP": {}}"#, |e| {
        matches!(e, QmpError::UnexpectedMessage(_))
    })
    .await;
    fatal("[1]", |e| matches!(e, QmpError::UnexpectedMessage(_))).await;
}

#[tokio::test]
async fn the_socket_closing_fails_a_command_in_flight() {
    let (client, mut fake) = connected().await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.execute("block-job-cancel", json!({})).await });
    fake.command().await;
    drop(fake);
    let err = within(call).await.unwrap().unwrap_err();
    assert!(matches!(err.cause(), QmpError::Closed), "{err}");
    assert!(err.is_connection_error());
    let later = within(client.execute("query-jobs", json!(null)))
        .await
        .unwrap_err();
    assert!(matches!(later.cause(), QmpError::Closed), "{later}");
}

#[tokio::test]
async fn an_over_long_line_fails_the_connection() {
    let (client, mut fake) = connected().await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.execute("query-qmp-schema", json!(null)).await });
    fake.command().await;
    // The client stops reading at the limit, so the writer may block: run it aside.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..=MAX_LINE / chunk.len() {
            if fake.w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        fake
    });
    let err = within(call).await.unwrap().unwrap_err();
    assert!(
        matches!(err.cause(), QmpError::LineTooLong { max } if *max == MAX_LINE),
        "{err}"
    );
    drop(client);
    within(writer).await.unwrap();
}

#[tokio::test]
async fn a_lagging_event_wait_falls_back_to_asking_for_the_state() {
    let (client, mut fake) = connected().await;
    let call = tokio::spawn(async move {
        client
            .block_export_del_and_wait("bora-backup1", super::ExportRemoveMode::Safe)
            .await
    });
    let (command, id) = fake.command().await;
    assert_eq!(command, "block-export-del");
    // More events than a subscription holds, before the reply: the one awaited is lost.
    for i in 0..1100 {
        fake.event("JOB_STATUS_CHANGE", json!({"id": "x", "status": i}))
            .await;
    }
    fake.event("BLOCK_EXPORT_DELETED", json!({"id": "bora-backup1"}))
        .await;
    fake.reply(&id, json!({})).await;
    let (command, id) = fake.command().await;
    assert_eq!(command, "query-block-exports");
    fake.reply(
        &id,
        json!([{"id": "live", "node-name": "disk0", "type": "nbd"}]),
    )
    .await;
    within(call).await.unwrap().unwrap();
}

/// Callers spawn these on a multi-threaded runtime: their futures must stay `Send`.
#[tokio::test]
async fn public_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let (client, _fake) = connected().await;
    send(QmpClient::connect_unix(std::path::Path::new(
        "/nonexistent",
    )));
    send(client.execute("x", json!(null)));
    send(client.top_level_nodes());
    send(client.transaction(&super::Transaction::new()));
    send(client.transaction_actions());
    send(client.block_job_cancel_and_wait("j"));
    send(client.block_export_del_and_wait("e", super::ExportRemoveMode::Safe));
    send(client.block_export_add_nbd("e", "n", "e", false, &["b"]));
    let mut rx = client.events();
    send(QmpClient::wait_event(
        &mut rx,
        |_| true,
        Duration::from_secs(1),
    ));
}
