//! Heartbeats: every `heartbeat-ms` the worker names its active leases to the coordinator
//! that granted them (the current coordinator hears from it even with none: a heartbeat
//! is also a sign of life), and stops the work on every lease the answer says ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tracing::{debug, info};

use bora_proto::coordinator::HeartbeatRequest;

use super::Context;
use super::coordinators::unreachable;

/// Sends heartbeats until dropped.
pub(super) async fn run(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.heartbeat_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut by_coordinator: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        by_coordinator
            .entry(ctx.coordinators.current())
            .or_default();
        for (c, lease) in ctx.active_leases() {
            by_coordinator.entry(c).or_default().push(lease);
        }
        futures::future::join_all(
            by_coordinator
                .into_iter()
                .map(|(c, leases)| beat(&ctx, c, leases)),
        )
        .await;
    }
}

async fn beat(ctx: &Context, c: usize, lease_ids: Vec<u64>) {
    let Some(mut client) = ctx.coordinators.client(c) else {
        return;
    };
    let req = HeartbeatRequest {
        worker: ctx.config.id.clone(),
        lease_ids,
    };
    match client.heartbeat(req).await {
        Ok(answer) => {
            for lease in answer.into_inner().ended {
                if ctx.end_lease((c, lease)) {
                    info!(lease, coordinator = %ctx.coordinators.addr(c), "lease ended by the coordinator; its work is stopped");
                }
            }
        }
        Err(s) => {
            debug!(coordinator = %ctx.coordinators.addr(c), error = %s, "heartbeat failed");
            if unreachable(&s) {
                ctx.coordinators.unreachable(c);
            }
        }
    }
}
