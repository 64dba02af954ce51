//! The upgrade chain: each plugin in order continues, changes the
//! upstream request's headers, rejects with a status, or routes.

use std::time::Instant;

use wsgate_config::FailPolicy;
use wsgate_runtime::{CallContext, HeaderOp, Route, UpgradeVerdict};

use super::Refused;
use crate::generation::LiveEndpoint;
use crate::observe::Observer;

/// Run the endpoint's upgrade chain, on the upgrade request of the
/// contexts' connection, until a plugin routes (the route and the header
/// changes before it) or the upgrade is refused. A plugin whose calls are
/// slow runs off the I/O workers and is awaited.
pub async fn run_upgrade_chain(
    endpoint: &LiveEndpoint,
    contexts: &mut [CallContext],
    observer: &mut Observer,
) -> Result<(Route, Vec<HeaderOp>), Refused> {
    let mut header_ops = Vec::new();
    for step in &endpoint.upgrade {
        let Some(context) = contexts.get_mut(step.slot) else {
            continue;
        };
        let plugin = step.pool.plugin().id();
        let started = Instant::now();
        let verdict = step.pool.on_upgrade_placed(context).await;
        observer.upgrade_verdict(plugin, step.fail, &verdict, started);
        match verdict {
            Ok(UpgradeVerdict::Continue) => {}
            Ok(UpgradeVerdict::Modify(ops)) => header_ops.extend(ops),
            Ok(UpgradeVerdict::Reject(rejection)) => {
                tracing::info!(
                    plugin,
                    status = rejection.status,
                    "upgrade rejected by plugin"
                );
                return Err(Refused::Rejected(rejection));
            }
            Ok(UpgradeVerdict::Route(route)) => {
                tracing::info!(plugin, url = %route.url, "upgrade routed");
                return Ok((route, header_ops));
            }
            Err(fault) => {
                crate::relay::log_fault(&fault, step.fail, "upgrade plugin failed");
                if step.fail == FailPolicy::Closed {
                    return Err(Refused::PluginFailed);
                }
            }
        }
    }
    tracing::error!("the upgrade chain ended without routing the connection");
    Err(Refused::NoRoute)
}
