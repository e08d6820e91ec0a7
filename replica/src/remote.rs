//! A remote: another Bora site replicated to, and the file that keeps a repository's
//! remotes (`remotes.json`, mode 0600: it holds each remote's token). A cluster keeps its
//! remotes in its replicated catalog; a coordinator's `remotes.json` from before that is
//! imported once (see [`crate::book`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bora_core::snapshot::check_name;

/// The file's name in a repository or coordinator data directory.
pub const REMOTES_FILE: &str = "remotes.json";
/// Its format version.
pub const REMOTES_FORMAT: u32 = 1;

/// One remote site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Remote {
    /// The name `replicate --to` uses.
    pub name: String,
    /// The remote coordinator's replica listener: `https://HOST:PORT` (`http://` only with
    /// `insecure`).
    pub url: String,
    /// SHA-256 of the remote's certificate (64 hex digits): trusted whatever signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// PEM certificates of the CA(s) that sign the remote's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The bearer token the remote accepts (never listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Plaintext, for loopback tests only.
    #[serde(default)]
    pub insecure: bool,
    /// VMs replicated by default (empty: all).
    #[serde(default)]
    pub vms: Vec<String>,
    /// Replicate new snapshots of `vms` by themselves, shortly after each backup.
    #[serde(default)]
    pub auto: bool,
}

/// How the link to a remote is authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    Fingerprint([u8; 32]),
    Ca(String),
    Insecure,
}

/// A remote definition that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("remotes file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("no remote named {name} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("a remote named {0} exists already (pass --replace to change it)")]
    Exists(String),
}

/// `"sha256:AB:CD…"`, `"abcd…"`: 32 bytes of hex, colons and a `sha256:` prefix allowed.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex_part: String = s
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&hex_part).map_err(|_| format!("fingerprint {s:?} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("fingerprint {s:?} is not 32 bytes (64 hex digits) of SHA-256"))
}

/// `(host, port)` of `url`, whose scheme has been checked.
fn host_port(url: &str) -> Option<(&str, u16)> {
    let rest = url.split_once("://")?.1.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty() && !host.contains('/')).then_some((host, port))
}

/// Whether `host` names this machine only.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Remote {
    fn invalid(&self, reason: impl Into<String>) -> RemoteError {
        RemoteError::Invalid {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Checks the name, the URL and that exactly one way of trusting the remote is given.
    pub fn validate(&self) -> Result<(), RemoteError> {
        check_name("remote name", &self.name).map_err(|r| self.invalid(r))?;
        let scheme_ok = match self.insecure {
            true => self.url.starts_with("http://"),
            false => self.url.starts_with("https://"),
        };
        let Some((host, _)) = host_port(&self.url).filter(|_| scheme_ok) else {
            return Err(self.invalid(match self.insecure {
                true => format!("URL {:?} is not http://HOST:PORT", self.url),
                false => format!("URL {:?} is not https://HOST:PORT", self.url),
            }));
        };
        self.trust()?;
        if self.insecure && !is_loopback(host) {
            return Err(self.invalid(format!(
                "--insecure (plaintext) is refused for {host}: it is for loopback tests only; \
                 give --fingerprint or --ca"
            )));
        }
        for vm in &self.vms {
            check_name("vm", vm).map_err(|r| self.invalid(r))?;
        }
        match &self.token {
            Some(t) if t.trim().is_empty() || t.contains(char::is_whitespace) => {
                Err(self.invalid("the token is empty or has whitespace in it"))
            }
            _ => Ok(()),
        }
    }

    /// How the link is authenticated.
    pub fn trust(&self) -> Result<Trust, RemoteError> {
        match (&self.fingerprint, &self.ca_pem, self.insecure) {
            (Some(f), None, false) => parse_fingerprint(f)
                .map(Trust::Fingerprint)
                .map_err(|r| self.invalid(r)),
            (None, Some(ca), false) => Ok(Trust::Ca(ca.clone())),
            (None, None, true) => Ok(Trust::Insecure),
            (None, None, false) => Err(self.invalid(
                "a remote link is TLS: give --fingerprint SHA256 or --ca FILE \
                 (or --insecure for a loopback test)",
            )),
            _ => Err(self.invalid("give one of --fingerprint, --ca and --insecure")),
        }
    }

    /// `HOST:PORT` of the URL.
    pub fn authority(&self) -> Result<(String, u16), RemoteError> {
        host_port(&self.url)
            .map(|(h, p)| (h.to_string(), p))
            .ok_or_else(|| self.invalid(format!("URL {:?} is not SCHEME://HOST:PORT", self.url)))
    }

    /// Whether snapshots of `vm` go to this remote by default.
    pub fn wants(&self, vm: &str) -> bool {
        self.vms.is_empty() || self.vms.iter().any(|v| v == vm)
    }

    /// The remote without its token, for listing.
    pub fn redacted(&self) -> Remote {
        Remote {
            token: None,
            ..self.clone()
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemotesDoc {
    format: u32,
    remotes: Vec<Remote>,
}

/// The remotes kept in `dir` (none if the file does not exist).
pub fn load(dir: &Path) -> Result<Vec<Remote>, RemoteError> {
    let path = dir.join(REMOTES_FILE);
    let bad = |reason: String| RemoteError::File {
        path: path.clone(),
        reason,
    };
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let doc: RemotesDoc = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if doc.format != REMOTES_FORMAT {
        return Err(bad(format!(
            "format {} is not the {REMOTES_FORMAT} this build reads",
            doc.format
        )));
    }
    Ok(doc.remotes)
}

/// The remote `name` of `dir`.
pub fn find(dir: &Path, name: &str) -> Result<Remote, RemoteError> {
    find_in(load(dir)?, name)
}

/// The remote `name` of `all`, or [`RemoteError::Unknown`] naming the known ones.
pub fn find_in(mut all: Vec<Remote>, name: &str) -> Result<Remote, RemoteError> {
    match all.iter().position(|r| r.name == name) {
        Some(i) => Ok(all.swap_remove(i)),
        None => Err(unknown(name, &all)),
    }
}

/// [`RemoteError::Unknown`] for `name`, naming the remotes of `all`.
pub fn unknown(name: &str, all: &[Remote]) -> RemoteError {
    let known: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    RemoteError::Unknown {
        name: name.to_string(),
        known: match known.is_empty() {
            true => "none; add one with `bora remote add`".to_string(),
            false => known.join(", "),
        },
    }
}

/// Adds `remote` to `dir`'s remotes (replacing one of the same name if `replace`).
pub fn add(dir: &Path, remote: Remote, replace: bool) -> Result<(), RemoteError> {
    remote.validate()?;
    let mut all = load(dir)?;
    match all.iter_mut().find(|r| r.name == remote.name) {
        Some(_) if !replace => return Err(RemoteError::Exists(remote.name)),
        Some(r) => *r = remote,
        None => all.push(remote),
    }
    save(dir, all)
}

/// Removes the remote `name` from `dir`'s remotes.
pub fn remove(dir: &Path, name: &str) -> Result<(), RemoteError> {
    find(dir, name)?;
    let mut all = load(dir)?;
    all.retain(|r| r.name != name);
    save(dir, all)
}

/// Writes the remotes file durably and atomically, readable by its owner only.
fn save(dir: &Path, remotes: Vec<Remote>) -> Result<(), RemoteError> {
    let path = dir.join(REMOTES_FILE);
    let bad = |e: std::io::Error| RemoteError::File {
        path: path.clone(),
        reason: e.to_string(),
    };
    let doc = RemotesDoc {
        format: REMOTES_FORMAT,
        remotes,
    };
    let text = serde_json::to_vec_pretty(&doc).map_err(|e| bad(std::io::Error::other(e)))?;
    let tmp = dir.join(format!(".{REMOTES_FILE}.tmp"));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(bad)?;
        f.write_all(&text).map_err(bad)?;
        f.sync_all().map_err(bad)?;
    }
    fs::rename(&tmp, &path).map_err(bad)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(url: &str) -> Remote {
        Remote {
            name: "dr".into(),
            url: url.into(),
            fingerprint: Some("ab".repeat(32)),
            ca_pem: None,
            token: Some("t0ken-t0ken-t0ken".into()),
            insecure: false,
            vms: vec![],
            auto: false,
        }
    }

    #[test]
    fn trust_must_be_given_once_and_insecure_only_on_loopback() {
        assert!(remote("https://dr.example.net:7300").validate().is_ok());
        let mut r = remote("https://dr.example.net:7300");
        r.fingerprint = None;
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("--fingerprint SHA256 or --ca FILE"), "{e}");
        r.insecure = true;
        r.url = "http://dr.example.net:7300".into();
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("loopback tests only"), "{e}");
        r.url = "http://127.0.0.1:7300".into();
        assert!(r.validate().is_ok());
        r.url = "http://[::1]:7300".into();
        assert!(r.validate().is_ok());
        r.ca_pem = Some("x".into());
        assert!(r.validate().is_err());
        let e = remote("http://dr.example.net:7300").validate().unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn fingerprints_take_colons_and_a_prefix() {
        let f = parse_fingerprint(&format!("sha256:{}", ["AB"; 32].join(":"))).unwrap();
        assert_eq!(f, [0xab; 32]);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn the_file_round_trips_privately_and_refuses_duplicates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        add(dir.path(), remote("https://h:1"), false).unwrap();
        assert!(matches!(
            add(dir.path(), remote("https://h:2"), false),
            Err(RemoteError::Exists(_))
        ));
        add(dir.path(), remote("https://h:2"), true).unwrap();
        assert_eq!(find(dir.path(), "dr").unwrap().url, "https://h:2");
        let e = find(dir.path(), "x").unwrap_err().to_string();
        assert!(e.contains("known: dr"), "{e}");
        let mode = fs::metadata(dir.path().join(REMOTES_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
