//! A scripted QMP server for tests: the test drives it line by line, well-behaved or
//! hostile, on the other end of a unix socket pair.

use std::future::Future;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::QmpClient;
use super::line::read_line;

pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob"]}}"#;

/// Fails the test instead of hanging.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the client hung")
}

pub struct Fake {
    r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

/// The client's end of a socket pair and the fake server on the other.
pub fn pair() -> (UnixStream, Fake) {
    let (client, server) = UnixStream::pair().expect("socket pair");
    let (r, w) = server.into_split();
    let fake = Fake {
        r: BufReader::new(r),
        w,
    };
    (client, fake)
}

/// A client connected to a fake server that greeted it and accepted its capabilities.
pub async fn connected() -> (QmpClient, Fake) {
    let (stream, mut fake) = pair();
    let server = async {
        fake.send(GREETING).await;
        let (command, id) = fake.command().await;
        assert_eq!(command, "qmp_capabilities");
        fake.reply(&id, json!({})).await;
    };
    let (client, ()) =
        within(async { tokio::join!(QmpClient::connect_stream(stream), server) }).await;
    (client.expect("connect"), fake)
}

impl Fake {
    /// Sends one line (QEMU ends lines with CR LF).
    pub async fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).await.expect("write");
        self.w.write_all(b"\r\n").await.expect("write");
    }

    /// Reads the next command: its name and id.
    pub async fn command(&mut self) -> (String, Value) {
        let msg = self.message().await;
        let command = msg["execute"].as_str().expect("an execute").to_owned();
        (command, msg["id"].clone())
    }

    /// Reads the next message the client sent.
    pub async fn message(&mut self) -> Value {
        let mut buf = Vec::new();
        let more = within(read_line(&mut self.r, &mut buf, 1 << 20))
            .await
            .expect("read a command");
        assert!(more, "the client closed the connection");
        serde_json::from_slice(&buf).expect("the client sent json")
    }

    pub async fn reply(&mut self, id: &Value, ret: Value) {
        self.send(&json!({ "return": ret, "id": id }).to_string())
            .await;
    }

    pub async fn reply_error(&mut self, id: &Value, class: &str, desc: &str) {
        let msg = json!({ "error": { "class": class, "desc": desc }, "id": id });
        self.send(&msg.to_string()).await;
    }

    pub async fn event(&mut self, event: &str, data: Value) {
        let msg = json!({
            "timestamp": { "seconds": 1, "microseconds": 2 },
            "event": event,
            "data": data,
        });
        self.send(&msg.to_string()).await;
    }
}
