//! `host add|list|remove` and `vm list` with `--cluster`: the coordinator keeps the
//! inventory and asks the hosts' QMP sockets (paths are on the coordinator's machine).

use anyhow::{Context, Result};

use bora_core::host::HostSpec;
use bora_proto::coordinator::{
    AddHostRequest, ListHostsRequest, ListVmsRequest, RemoveHostRequest,
};

use crate::cli::{HostCommand, VmCommand};
use crate::cluster::{connect, status_err};
use crate::cmd::host::{VmRow, host_spec, print_added, print_hosts, print_removed, print_vms};

pub async fn host(urls: &str, cmd: HostCommand, json: bool) -> Result<()> {
    let mut c = connect(urls).await?;
    match cmd {
        HostCommand::Add(a) => {
            let (host, replace) = host_spec(a, false)?;
            let host_json = serde_json::to_string(&host).context("encoding the host record")?;
            c.client
                .add_host(AddHostRequest { host_json, replace })
                .await
                .map_err(|s| status_err(&format!("adding host {}", host.name), s))?;
            print_added(&host, json)
        }
        HostCommand::List => {
            let r = c
                .client
                .list_hosts(ListHostsRequest {})
                .await
                .map_err(|s| status_err("listing hosts", s))?
                .into_inner();
            let hosts = r
                .host_json
                .iter()
                .map(|j| serde_json::from_str::<HostSpec>(j))
                .collect::<Result<Vec<_>, _>>()
                .context("the coordinator sent a host record this bora cannot read")?;
            print_hosts(&hosts, json)
        }
        HostCommand::Remove { name } => {
            c.client
                .remove_host(RemoveHostRequest { name: name.clone() })
                .await
                .map_err(|s| status_err(&format!("removing host {name}"), s))?;
            print_removed(&name, json);
            Ok(())
        }
    }
}

pub async fn vm(urls: &str, cmd: VmCommand, json: bool) -> Result<()> {
    let VmCommand::List { host } = cmd;
    let mut c = connect(urls).await?;
    let r = c
        .client
        .list_vms(ListVmsRequest { host })
        .await
        .map_err(|s| status_err("listing vms", s))?
        .into_inner();
    let mut rows = Vec::new();
    for v in r.vms {
        if !v.error.is_empty() {
            eprintln!("warning: host {} vm {}: {}", v.host, v.vm, v.error);
            continue;
        }
        rows.push(VmRow {
            host: v.host,
            vm: v.vm,
            disks: v
                .disks
                .into_iter()
                .map(|d| (d.disk, d.size, None))
                .collect(),
        });
    }
    print_vms(&rows, json)
}
