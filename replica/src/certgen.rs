//! Self-signed material for a site that has no PKI (what `bora up --replica-listen`
//! writes): a CA, a server certificate it signs for the listener's names, the server key,
//! and a random token.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// What [`generate`] makes, PEM-encoded.
pub struct Generated {
    /// The CA certificate (`--ca` on the sending side).
    pub ca_pem: String,
    /// The server certificate (the listener's `tls-cert`).
    pub cert_pem: String,
    /// The server's private key (the listener's `tls-key`).
    pub key_pem: String,
    /// SHA-256 of the server certificate (`--fingerprint` on the sending side).
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    #[error("generating the replica certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("generating a random token: the system's random source failed")]
    Random,
}

/// A CA and a server certificate valid for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<Generated, CertGenError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bora replica CA");
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bora replica");
    let cert = params.signed_by(&key, &ca)?;
    Ok(Generated {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: crate::tls::fingerprint(cert.der()),
    })
}

/// 32 random bytes as 64 hex digits.
pub fn random_token() -> Result<String, CertGenError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CertGenError::Random)?;
    Ok(hex::encode(b))
}
