//! The `[replica]` table of the coordinator's config: where the cluster receives
//! second-site replication from other sites (the listener itself is `bora_replica`'s,
//! started by the coordinator process).
//!
//! ```toml
//! [replica]
//! listen = "0.0.0.0:7300"
//! tls-cert = "/etc/bora/replica/cert.pem"
//! tls-key = "/etc/bora/replica/key.pem"
//! tokens-file = "/etc/bora/replica/tokens"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::check_host_port;

/// The replica listener's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaListenConfig {
    /// `HOST:PORT` of the replica listener: a listener of its own, apart from `listen`,
    /// meant to be reachable from the sending sites.
    pub listen: String,
    /// PEM certificate chain the listener presents. With `tls-key`; without both the
    /// listener speaks plaintext, which is accepted on a loopback address only (tests).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls-cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The tokens senders must present (`authorization: Bearer TOKEN`), one per line,
    /// at least 16 characters each; '#' starts a comment line. Keep it readable by the
    /// coordinator only.
    pub tokens_file: PathBuf,
}

impl ReplicaListenConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        check_host_port("replica listen", &self.listen)?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => {}
            (None, None) => {
                let host = self.listen.rsplit_once(':').map_or("", |(h, _)| h);
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = bare == "localhost"
                    || bare
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!(
                        "replica listen {}: give tls-cert and tls-key (plaintext is for loopback addresses only)",
                        self.listen
                    ));
                }
            }
            _ => return Err("replica: give both tls-cert and tls-key, or neither".into()),
        }
        if self.tokens_file.as_os_str().is_empty() {
            return Err("replica tokens-file is empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, tls: bool) -> ReplicaListenConfig {
        ReplicaListenConfig {
            listen: listen.into(),
            tls_cert: tls.then(|| "c.pem".into()),
            tls_key: tls.then(|| "k.pem".into()),
            tokens_file: "tokens".into(),
        }
    }

    #[test]
    fn plaintext_only_on_loopback_and_tls_needs_both_files() {
        assert!(config("0.0.0.0:7300", true).validate().is_ok());
        assert!(config("127.0.0.1:7300", false).validate().is_ok());
        assert!(config("[::1]:7300", false).validate().is_ok());
        let e = config("0.0.0.0:7300", false).validate().unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let mut c = config("0.0.0.0:7300", true);
        c.tls_key = None;
        assert!(c.validate().unwrap_err().contains("both"));
        assert!(config("nope", true).validate().is_err());
    }
}
