//! TLS for the replication link (rustls, ring provider): the client trusts the remote by
//! its certificate's SHA-256 fingerprint (pinned, whatever signed it) or by a CA; the
//! server presents a PEM certificate chain and key. Both speak HTTP/2 only (ALPN `h2`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The SHA-256 fingerprint of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha256(der))
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM text.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        what: what.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The server's certificate is the one whose fingerprint was pinned; its handshake
/// signatures are still checked, so only the holder of its key passes.
#[derive(Debug)]
struct Pinned {
    want: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// Why a pinned certificate was refused (shown in the client's error).
#[derive(Debug, thiserror::Error)]
#[error(
    "the remote's certificate has fingerprint sha256:{got}, not the pinned sha256:{want}: it is not the site this remote was added for"
)]
struct FingerprintMismatch {
    got: String,
    want: String,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256(end_entity);
        if constant_time_eq::constant_time_eq_32(&got, &self.want) {
            return Ok(ServerCertVerified::assertion());
        }
        // `General`: rustls shows its text as it is (`Other` would show it as Debug).
        Err(rustls::Error::General(
            FingerprintMismatch {
                got: hex::encode(got),
                want: hex::encode(self.want),
            }
            .to_string(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config trusting only the certificate with SHA-256 `fingerprint`.
pub fn client_pinned(fingerprint: [u8; 32]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Pinned {
        want: fingerprint,
        provider: provider.clone(),
    };
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// A client config trusting certificates signed by the CA(s) in `ca_pem` for the name
/// the client connects to.
pub fn client_ca(ca_pem: &[u8]) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem("the remote's CA", ca_pem)? {
        roots.add(cert)?;
    }
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// The server's config from a PEM certificate chain and a PEM private key.
pub fn server(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let certs = certs_from_pem("tls-cert", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "tls-key".into(),
        reason: e.to_string(),
    })?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}
