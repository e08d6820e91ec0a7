//! `bora coordinator add|remove --cluster URLS`: change the coordinators of a running
//! cluster (the Raft members of its replicated catalog). The leader does it: the CLI
//! finds it, and follows a `bora-leader` answer once if the leader changed meanwhile.

use anyhow::Result;
use tonic::{Response, Status};

use bora_proto::coordinator::{AddCoordinatorRequest, RaftStatus, RemoveCoordinatorRequest};

use crate::cli::CoordinatorCommand;
use crate::cluster::{Cluster, connect, status_err};
use crate::cmd::cluster::{print_raft_members, raft_members_json};
use crate::output;

pub async fn run(urls: &str, cmd: CoordinatorCommand, json: bool) -> Result<()> {
    let mut c = connect(urls).await?;
    match cmd {
        CoordinatorCommand::Add { id, addr, wait } => {
            let req = AddCoordinatorRequest {
                id,
                addr: addr.clone(),
                wait_ms: wait.saturating_mul(1000),
            };
            let view = on_leader(&mut c, |mut c| {
                let req = req.clone();
                async move { c.client.add_coordinator(req).await }
            })
            .await
            .map_err(|s| status_err(&format!("adding coordinator {id} at {addr}"), s))?;
            report(json, "added", id, &view, || {
                let log = view
                    .members
                    .iter()
                    .find(|m| m.id == id)
                    .and_then(|m| m.matched)
                    .map_or_else(String::new, |l| format!(" (entry {l})"));
                format!("coordinator {id} at {addr} added: a voter, its log caught up{log}")
            })
        }
        CoordinatorCommand::Remove { id } => {
            let view = on_leader(&mut c, |mut c| async move {
                c.client
                    .remove_coordinator(RemoveCoordinatorRequest { id })
                    .await
            })
            .await
            .map_err(|s| status_err(&format!("removing coordinator {id}"), s))?;
            report(json, "removed", id, &view, || {
                let was_leader = view.id == id;
                format!(
                    "coordinator {id} removed{}; stop its process (never start it again with \
                     the same id)",
                    if was_leader {
                        " (it led: the others elect a new leader)"
                    } else {
                        ""
                    }
                )
            })
        }
    }
}

/// Calls `f` on the leader; after a not-the-leader answer naming another coordinator,
/// once more there.
async fn on_leader<F, Fut>(c: &mut Cluster, f: F) -> Result<RaftStatus, Status>
where
    F: Fn(Cluster) -> Fut,
    Fut: std::future::Future<Output = Result<Response<RaftStatus>, Status>>,
{
    match f(c.clone()).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => {
            if c.follow_leader(&s).await {
                f(c.clone()).await.map(Response::into_inner)
            } else {
                Err(s)
            }
        }
    }
}

fn report(
    json: bool,
    what: &str,
    id: u64,
    view: &RaftStatus,
    line: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        return output::json(&serde_json::json!({
            what: id,
            "leader": view.leader,
            "term": view.term,
            "coordinators": raft_members_json(view),
        }));
    }
    println!("{}", line());
    print_raft_members(view);
    Ok(())
}
