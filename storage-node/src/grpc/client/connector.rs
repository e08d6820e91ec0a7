//! The TCP connector under a [`super::GrpcChunkStore`]'s channel, counting the connections
//! it makes. A tonic channel reconnects on its own after a connection breaks, so a new
//! count is how its user learns that the next requests may reach another process at the
//! same address (a node restarted, or a port reused by another node).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

use super::CONNECT_TIMEOUT;

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, Error>> + Send>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Plain TCP (no TLS, as tonic's own connector without TLS), `TCP_NODELAY`, counting each
/// connection made.
#[derive(Clone)]
pub(super) struct CountingConnector {
    http: HttpConnector,
    made: Arc<AtomicU64>,
}

impl CountingConnector {
    pub(super) fn new() -> CountingConnector {
        let mut http = HttpConnector::new();
        // The scheme is checked by the endpoint; this connector only makes the TCP stream.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        CountingConnector {
            http,
            made: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counter, shared with every clone of the connector.
    pub(super) fn made(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.made)
    }
}

impl Service<Uri> for CountingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Error;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let connecting = self.http.call(uri);
        let made = Arc::clone(&self.made);
        Box::pin(async move {
            let stream = connecting.await.map_err(Box::new)?;
            made.fetch_add(1, Ordering::Relaxed);
            Ok(stream)
        })
    }
}
