//! `bora up --replica-listen ADDR`: the local cluster receives second-site replication.
//! The first start writes `DIR/replica/`: `ca.pem` (the CA, for `--ca`), `cert.pem` and
//! `key.pem` (the listener's), `tokens` (what the listener accepts) and `token` (the same
//! token, for the sender's `--token-file`), all private to the user, plus `remote.json`
//! (url, fingerprint, ca, token file: what `bora remote add` needs). Later starts reuse
//! them, so the fingerprint and token stay the same.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn toml_path(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_default()
}

/// Makes (or reuses) the material in `data/replica/` for a listener on `listen`; returns
/// the `[replica]` table of the coordinator's config.
pub fn prepare(data: &Path, listen: &str, insecure: bool) -> Result<String> {
    let mut addr: SocketAddr = listen
        .parse()
        .map_err(|_| anyhow!("--replica-listen {listen}: expected IP:PORT"))?;
    if addr.port() == 0 {
        addr = TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .with_context(|| format!("cannot find a free port on {}", addr.ip()))?;
    }
    if insecure && !addr.ip().is_loopback() {
        anyhow::bail!("--replica-insecure: plaintext is for loopback addresses only");
    }
    let dir: PathBuf = data.join("replica");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca, cert, key, tokens, token) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("tokens"),
        dir.join("token"),
    );
    let ip = addr.ip().to_string();
    let names = if addr.ip().is_unspecified() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        vec![ip.clone(), "localhost".to_string()]
    };
    if !cert.exists() || !key.exists() || !ca.exists() {
        let g = bora_replica::certgen::generate(&names)?;
        write_private(&ca, &g.ca_pem)?;
        write_private(&cert, &g.cert_pem)?;
        write_private(&key, &g.key_pem)?;
    }
    if !tokens.exists() || !token.exists() {
        let t = bora_replica::certgen::random_token()?;
        write_private(&tokens, &format!("{t}\n"))?;
        write_private(&token, &format!("{t}\n"))?;
    }
    let pem = std::fs::read(&cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let der = bora_replica::tls::certs_from_pem("cert.pem", &pem)?;
    let fingerprint = der
        .first()
        .map(|c| bora_replica::tls::fingerprint(c))
        .unwrap_or_default();
    let host = match addr {
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
        SocketAddr::V4(a) => a.ip().to_string(),
    };
    let url = match insecure {
        true => format!("http://{host}:{}", addr.port()),
        false => format!("https://{host}:{}", addr.port()),
    };
    let mut toml = format!(
        "\n[replica]\nlisten = {}\ntokens-file = {}\n",
        serde_json::to_string(&addr.to_string())?,
        toml_path(&tokens)
    );
    if !insecure {
        toml.push_str(&format!(
            "tls-cert = {}\ntls-key = {}\n",
            toml_path(&cert),
            toml_path(&key)
        ));
    }
    let info = serde_json::json!({
        "url": url, "fingerprint": fingerprint, "ca": ca, "token_file": token, "insecure": insecure,
    });
    write_private(
        &dir.join("remote.json"),
        &serde_json::to_string_pretty(&info)?,
    )?;
    let how = match insecure {
        true => "--insecure".to_string(),
        false => format!("--fingerprint {fingerprint}"),
    };
    eprintln!(
        "replica listener {url}: add this cluster as a remote with `bora remote add NAME {url} {how} --token-file {}`",
        token.display()
    );
    Ok(toml)
}
