//! Join safety: a member whose `data-dir/raft` is empty makes a **new** cluster only when
//! it has the lowest id of its config's members *and* none of the other members answers
//! as part of a cluster already. Otherwise it waits to be added by the leader (`bora
//! coordinator add`). Without this check, a replacement for a dead member (or a new
//! member) given the lowest id would start a second cluster of its own.
//!
//! The others are asked once, all at the same time, with a short bound (`RaftView`, any
//! member answers from its local state): a member that is down or not serving yet does
//! not answer, and does not hold the start up (`bora up` starts the first coordinator
//! before the others exist).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinSet;
use tonic::transport::Endpoint;
use tracing::{debug, info};

use bora_proto::coordinator::RaftViewRequest;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;

use crate::raft::NodeId;

/// How long one member may take to connect and answer.
const ASK_FOR: Duration = Duration::from_secs(2);

/// What a configured member answered about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// It is part of a cluster: its membership names these voters.
    InCluster { voters: Vec<NodeId> },
    /// It runs with an empty store too.
    Empty,
    /// It did not answer in time (down, not serving yet, unreachable).
    Silent,
}

/// What a member with an empty store does on start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// Make a new cluster of the configured members.
    Initialize,
    /// Wait to be added; `found` names a member that is part of a cluster (if any).
    WaitToBeAdded {
        found: Option<(NodeId, Vec<NodeId>)>,
    },
}

/// The decision (pure): initialize only with the lowest id, and only when no other
/// member answered as part of a cluster.
pub(super) fn decide(
    own: NodeId,
    members: &BTreeMap<NodeId, String>,
    answers: &BTreeMap<NodeId, Answer>,
) -> Start {
    let found = answers.iter().find_map(|(id, a)| match a {
        Answer::InCluster { voters } => Some((*id, voters.clone())),
        Answer::Empty | Answer::Silent => None,
    });
    let lowest = members.keys().next().is_none_or(|first| *first == own);
    if lowest && found.is_none() {
        Start::Initialize
    } else {
        Start::WaitToBeAdded { found }
    }
}

/// Asks every member of `members` but `own` whether it is part of a cluster.
pub(super) async fn ask_members(
    own: NodeId,
    members: &BTreeMap<NodeId, String>,
) -> BTreeMap<NodeId, Answer> {
    let mut asking = JoinSet::new();
    for (id, addr) in members.iter().filter(|(id, _)| **id != own) {
        let (id, addr) = (*id, addr.clone());
        asking.spawn(async move {
            let answer = tokio::time::timeout(ASK_FOR, ask(&addr))
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()));
            match answer {
                Ok(a) => (id, a),
                Err(reason) => {
                    debug!(member = id, addr = %addr, %reason, "member did not answer");
                    (id, Answer::Silent)
                }
            }
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(joined) = asking.join_next().await {
        if let Ok((id, a)) = joined {
            answers.insert(id, a);
        }
    }
    answers
}

async fn ask(addr: &str) -> Result<Answer, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(ASK_FOR)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let view = CoordinatorClient::new(channel)
        .raft_view(RaftViewRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let voters: Vec<NodeId> = view
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    Ok(if view.members.is_empty() {
        Answer::Empty
    } else {
        Answer::InCluster { voters }
    })
}

/// Logs the one line an operator needs when this member waits to be added.
pub(super) fn log_waiting(own: NodeId, addr: &str, found: Option<&(NodeId, Vec<NodeId>)>) {
    match found {
        Some((member, voters)) => info!(
            id = own,
            "not part of a cluster yet: run `bora coordinator add {own} {addr} --cluster URLS` \
             on the cluster (member {member} answers as part of a cluster with voters {voters:?})"
        ),
        None => info!(
            id = own,
            "not part of a cluster yet: waiting for the leader (a founding member is reached \
             by the member with the lowest id; a new member needs `bora coordinator add {own} \
             {addr} --cluster URLS` on the cluster)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[NodeId]) -> BTreeMap<NodeId, String> {
        ids.iter().map(|i| (*i, format!("127.0.0.1:{i}"))).collect()
    }

    #[test]
    fn only_the_lowest_id_initializes_and_only_when_no_member_is_in_a_cluster() {
        let m = members(&[1, 2, 3]);
        let silent = BTreeMap::from([(2, Answer::Silent), (3, Answer::Silent)]);
        assert_eq!(decide(1, &m, &silent), Start::Initialize);
        let empty = BTreeMap::from([(2, Answer::Empty), (3, Answer::Silent)]);
        assert_eq!(decide(1, &m, &empty), Start::Initialize);
        assert_eq!(
            decide(2, &m, &empty),
            Start::WaitToBeAdded { found: None },
            "not the lowest id"
        );
        let running = BTreeMap::from([
            (2, Answer::Silent),
            (
                3,
                Answer::InCluster {
                    voters: vec![2, 3, 4],
                },
            ),
        ]);
        assert_eq!(
            decide(1, &m, &running),
            Start::WaitToBeAdded {
                found: Some((3, vec![2, 3, 4]))
            },
            "a replacement with the lowest id must not make a second cluster"
        );
        // A cluster of one (no other member) initializes.
        assert_eq!(
            decide(1, &members(&[1]), &BTreeMap::new()),
            Start::Initialize
        );
    }
}
