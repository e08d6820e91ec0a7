//! The sending side of the link: a gRPC channel to a remote's replica listener over TLS
//! (pinned fingerprint or CA, see [`crate::tls`]) or, for loopback tests, plaintext, with
//! the remote's token on every call.
//!
//! Each link is one TCP connection with HTTP/2 windows large enough for a long fat pipe
//! (32 MiB per connection): the sender opens several to fill a high-latency link.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use bora_proto::replica::replica_client::ReplicaClient;

use crate::auth::Bearer;
use crate::error::chain;
use crate::remote::{Remote, RemoteError, Trust};
use crate::tls::{self, TlsError};

/// A client of a remote's Replica service.
pub type Client = ReplicaClient<InterceptedService<Channel, Bearer>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("remote {name}: {source}")]
    Tls {
        name: String,
        #[source]
        source: TlsError,
    },
    #[error("remote {name}: {reason}")]
    Token { name: String, reason: String },
    #[error("cannot connect to remote {name} at {url}: {reason}")]
    Connect {
        name: String,
        url: String,
        reason: String,
    },
}

/// Opens one connection to `remote`.
pub async fn connect(remote: &Remote) -> Result<Client, LinkError> {
    let trust = remote.trust()?;
    let (host, port) = remote.authority()?;
    let bearer = Bearer::new(remote.token.as_deref()).map_err(|reason| LinkError::Token {
        name: remote.name.clone(),
        reason,
    })?;
    let connect_err = |reason: String| LinkError::Connect {
        name: remote.name.clone(),
        url: remote.url.clone(),
        reason,
    };
    // The scheme stays http: TLS, when wanted, is done by the connector below.
    let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let tls_err = |source| LinkError::Tls {
        name: remote.name.clone(),
        source,
    };
    let config = match &trust {
        Trust::Insecure => None,
        Trust::Fingerprint(f) => Some(tls::client_pinned(*f).map_err(tls_err)?),
        Trust::Ca(pem) => Some(tls::client_ca(pem.as_bytes()).map_err(tls_err)?),
    };
    let channel = match config {
        None => endpoint.connect().await,
        Some(config) => {
            let name = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let server_name = ServerName::try_from(name).map_err(|e| connect_err(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let addr = format!("{host}:{port}");
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let (connector, server_name, addr) =
                        (connector.clone(), server_name.clone(), addr.clone());
                    async move {
                        let tcp = TcpStream::connect(&addr).await?;
                        tcp.set_nodelay(true)?;
                        let tls = connector.connect(server_name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                }))
                .await
        }
    }
    .map_err(|e| connect_err(chain(&e)))?;
    Ok(ReplicaClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES))
}
