//! `bora remote add|list|remove`: the remotes of the local repository (`remotes.json` in
//! it) or, with `--cluster`, of the cluster (kept in its replicated catalog, through the
//! `Remotes` service of the coordinators' leader). The token file's content is copied in;
//! listing never shows it.

use std::future::Future;

use anyhow::{Context, Result, bail};
use tonic::transport::{Channel, Endpoint};

use bora_proto::replica::remotes_client::RemotesClient;
use bora_proto::replica::{AddRemoteRequest, ListRemotesRequest, RemoveRemoteRequest};
use bora_replica::book::{FileBook, RemoteBook};
use bora_replica::remote::{Remote, Trust};

use crate::cli::{RemoteAddArgs, RemoteCommand};
use crate::repo::Repo;
use crate::snapshot_disk::Location;

pub async fn run(loc: &Location<'_>, cmd: RemoteCommand, json: bool) -> Result<()> {
    match cmd {
        RemoteCommand::Add(a) => add(loc, a, json).await,
        RemoteCommand::List => list(loc, json).await,
        RemoteCommand::Remove { name } => remove(loc, &name, json).await,
    }
}

/// The `Remotes` service of the coordinator at `url`.
async fn dial(url: &str) -> Result<RemotesClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_string())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    Ok(RemotesClient::new(channel))
}

/// Makes `call` on the leader's `Remotes` service, following a `bora-leader` answer (the
/// lead moved since the leader was found: nothing was done there).
pub async fn on_leader<T, F, Fut>(urls: &str, what: &str, mut call: F) -> Result<T>
where
    F: FnMut(RemotesClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut url = crate::cluster::connect(urls).await?.url;
    for _ in 0..3 {
        match call(dial(&url).await?).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => match crate::cluster::leader_url(&s) {
                Some(leader) if leader != url => url = leader,
                _ => return Err(crate::cluster::status_err(what, s)),
            },
        }
    }
    bail!("{what}: the coordinators' lead keeps moving; try again")
}

fn from_args(a: &RemoteAddArgs) -> Result<Remote> {
    let token = match &a.token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --token-file {}", path.display()))?;
            let t = t
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'));
            match t {
                Some(t) => Some(t.to_string()),
                None => bail!("--token-file {} holds no token", path.display()),
            }
        }
        None => None,
    };
    let ca_pem = match &a.ca {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ca {}", path.display()))?;
            bora_replica::tls::certs_from_pem(&format!("--ca {}", path.display()), pem.as_bytes())?;
            Some(pem)
        }
        None => None,
    };
    let url = match a.url.contains("://") {
        true => a.url.clone(),
        false if a.insecure => format!("http://{}", a.url),
        false => format!("https://{}", a.url),
    };
    let r = Remote {
        name: a.name.clone(),
        url,
        fingerprint: a.fingerprint.clone(),
        ca_pem,
        token,
        insecure: a.insecure,
        vms: a.vm.clone(),
        auto: a.auto,
    };
    r.validate()?;
    Ok(r)
}

async fn add(loc: &Location<'_>, a: RemoteAddArgs, json: bool) -> Result<()> {
    let r = from_args(&a)?;
    match loc {
        Location::Repo(dir) => {
            let repo = Repo::open(dir, false, None)?;
            FileBook::new(&repo.dir).add(r.clone(), a.replace).await?;
        }
        Location::Cluster(urls) => {
            let request = AddRemoteRequest {
                remote_json: serde_json::to_string(&r)?,
                replace: a.replace,
            };
            on_leader(urls, "adding the remote", |mut c| {
                let request = request.clone();
                async move { c.add_remote(request).await }
            })
            .await?;
        }
    }
    if json {
        crate::output::json(&describe(&r))
    } else {
        println!("remote {} added: {} ({})", r.name, r.url, trust(&r));
        Ok(())
    }
}

fn trust(r: &Remote) -> String {
    match r.trust() {
        Ok(Trust::Fingerprint(f)) => format!("certificate sha256:{}", hex_of(&f)),
        Ok(Trust::Ca(_)) => "certificate signed by its CA".into(),
        Ok(Trust::Insecure) => "insecure: plaintext".into(),
        Err(e) => e.to_string(),
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn describe(r: &Remote) -> serde_json::Value {
    serde_json::json!({
        "name": r.name, "url": r.url, "trust": trust(r), "vms": r.vms, "auto": r.auto,
    })
}

async fn list(loc: &Location<'_>, json: bool) -> Result<()> {
    let remotes: Vec<Remote> = match loc {
        Location::Repo(dir) => {
            FileBook::new(&Repo::open(dir, false, None)?.dir)
                .list()
                .await?
        }
        Location::Cluster(urls) => on_leader(urls, "listing remotes", |mut c| async move {
            c.list_remotes(ListRemotesRequest {}).await
        })
        .await?
        .remote_json
        .iter()
        .map(|j| {
            serde_json::from_str(j).context("the coordinator sent a remote this bora cannot read")
        })
        .collect::<Result<_>>()?,
    };
    if json {
        let all: Vec<_> = remotes.iter().map(describe).collect();
        return crate::output::json(&serde_json::json!({ "remotes": all }));
    }
    if remotes.is_empty() {
        println!("no remotes (add one with `bora remote add NAME URL`)");
    }
    for r in &remotes {
        let vms = match r.vms.is_empty() {
            true => "all VMs".to_string(),
            false => r.vms.join(","),
        };
        let auto = if r.auto { ", automatic" } else { "" };
        println!("{}\t{}\t{}\t{vms}{auto}", r.name, r.url, trust(r));
    }
    Ok(())
}

async fn remove(loc: &Location<'_>, name: &str, json: bool) -> Result<()> {
    match loc {
        Location::Repo(dir) => {
            let repo = Repo::open(dir, false, None)?;
            FileBook::new(&repo.dir).remove(name).await?;
        }
        Location::Cluster(urls) => {
            let request = RemoveRemoteRequest {
                name: name.to_string(),
            };
            on_leader(urls, "removing the remote", |mut c| {
                let request = request.clone();
                async move { c.remove_remote(request).await }
            })
            .await?;
        }
    }
    if json {
        crate::output::json(&serde_json::json!({ "removed": name }))
    } else {
        println!("remote {name} removed");
        Ok(())
    }
}
