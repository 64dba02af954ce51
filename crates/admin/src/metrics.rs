//! `/metrics` in the Prometheus text format: each family once, with its
//! HELP and TYPE lines, then all of its samples.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use wsgate_proxy::Gateway;
use wsgate_proxy::Peer;
use wsgate_runtime::LATENCY_BUCKETS_US;

use crate::load::Load;

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// A sample; `labels` are (name, value) pairs, escaped here.
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}{suffix}", self.name);
        if !labels.is_empty() {
            let joined: Vec<String> = labels
                .iter()
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect();
            let _ = write!(self.out, "{{{}}}", joined.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The whole exposition; `admin` is the admin listener serving it.
pub(crate) fn render(gateway: &Gateway, admin: &Load) -> String {
    let mut out = String::new();
    let generation = gateway.generation();
    let counters = gateway.counters();

    family(
        &mut out,
        "wsgate_connections_active",
        "gauge",
        "Proxied connections open.",
    )
    .sample("", &[], gateway.active_connections());

    let drain = gateway.drain_state();
    family(
        &mut out,
        "wsgate_drain_phase",
        "gauge",
        "Drain phase: 0 serving, 1 grace (not ready, still accepting), 2 closing connections with 1012, 3 done.",
    )
    .sample("", &[], drain.phase() as u8);
    family(
        &mut out,
        "wsgate_drain_closed_total",
        "counter",
        "Connections closed with 1012 (Service Restart) by a drain.",
    )
    .sample("", &[], drain.closed());

    family(
        &mut out,
        "wsgate_pending_upgrades",
        "gauge",
        "Client connections accepted and not yet answered.",
    )
    .sample("", &[], gateway.pending_upgrades());

    let mut f = family(
        &mut out,
        "wsgate_pending_refused_total",
        "counter",
        "Client connections closed at accept by a pending limit (the label is its configuration key).",
    );
    for (limit, count) in gateway.pending_refusals() {
        f.sample("", &[("limit", limit)], count);
    }

    family(
        &mut out,
        "wsgate_admin_connections",
        "gauge",
        "Admin connections open (this one included).",
    )
    .sample("", &[], admin.connections());

    family(
        &mut out,
        "wsgate_admin_tails",
        "gauge",
        "Live tails open on the admin listener.",
    )
    .sample("", &[], admin.tails());

    let mut f = family(
        &mut out,
        "wsgate_admin_refused_total",
        "counter",
        "Admin connections closed at accept and live tails answered 503, by the [admin] limit (its configuration key).",
    );
    for (limit, count) in admin.refusals() {
        f.sample("", &[("limit", limit)], count);
    }

    let mut f = family(
        &mut out,
        "wsgate_generation_connections",
        "gauge",
        "Connections open per live configuration generation.",
    );
    for g in gateway.generations() {
        let (id, current) = (g.id.to_string(), g.current.to_string());
        f.sample(
            "",
            &[("generation", &id), ("current", &current)],
            g.connections,
        );
    }

    let mut f = family(
        &mut out,
        "wsgate_endpoint_connections",
        "gauge",
        "Connections open per endpoint (current generation).",
    );
    for endpoint in &generation.endpoints {
        f.sample(
            "",
            &[("endpoint", endpoint.config.path.get_ref())],
            endpoint.active_connections(),
        );
    }

    let mut f = family(
        &mut out,
        "wsgate_upgrades_total",
        "counter",
        "Upgrade requests answered, by endpoint and HTTP status.",
    );
    for ((endpoint, status), count) in counters.upgrades() {
        f.sample(
            "",
            &[("endpoint", &endpoint), ("status", &status.to_string())],
            count,
        );
    }

    // The released label values: "server" is the upstream.
    let directions = [
        ("client_to_server", Peer::Client),
        ("server_to_client", Peer::Upstream),
    ];
    let by_endpoint =
        directions.map(|(direction, from)| (direction, counters.messages_by_endpoint(from)));
    let mut f = family(
        &mut out,
        "wsgate_messages_total",
        "counter",
        "Messages read, by endpoint and direction.",
    );
    for (direction, endpoints) in &by_endpoint {
        for (endpoint, (messages, _)) in endpoints {
            f.sample(
                "",
                &[("endpoint", endpoint), ("direction", direction)],
                messages,
            );
        }
    }
    let mut f = family(
        &mut out,
        "wsgate_message_bytes_total",
        "counter",
        "Message payload bytes read, by endpoint and direction.",
    );
    for (direction, endpoints) in &by_endpoint {
        for (endpoint, (_, bytes)) in endpoints {
            f.sample(
                "",
                &[("endpoint", endpoint), ("direction", direction)],
                bytes,
            );
        }
    }

    let mut f = family(
        &mut out,
        "wsgate_message_verdicts_total",
        "counter",
        "Message plugin verdicts, by kind (fault: the call failed).",
    );
    for (kind, count) in counters.message_verdicts() {
        f.sample("", &[("verdict", kind.as_str())], count);
    }
    let mut f = family(
        &mut out,
        "wsgate_upgrade_verdicts_total",
        "counter",
        "Upgrade plugin verdicts, by kind (fault: the call failed).",
    );
    for (kind, count) in counters.upgrade_verdicts() {
        f.sample("", &[("verdict", kind.as_str())], count);
    }
    let mut f = family(
        &mut out,
        "wsgate_connections_expired_total",
        "counter",
        "Connections the gateway closed at their expiry, by cause (endpoint: its expire; credentials: a plugin's session.expire-at).",
    );
    for (by, count) in counters.expirations() {
        f.sample("", &[("by", by.as_str())], count);
    }
    let mut f = family(
        &mut out,
        "wsgate_connections_closed_total",
        "counter",
        "Connections ended, by the close code sent or received first (none: no close frame; other: past 64 distinct codes).",
    );
    for (code, count) in counters.closes() {
        f.sample("", &[("code", &code)], count);
    }

    let pools: Vec<(String, String, &wsgate_runtime::PluginStats)> = generation
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| (pool.plugin().id().to_string(), i.to_string(), pool.stats()))
        .collect();
    let mut f = family(
        &mut out,
        "wsgate_plugin_calls_total",
        "counter",
        "Plugin calls (current generation).",
    );
    for (plugin, pool, stats) in &pools {
        f.sample("", &[("plugin", plugin), ("pool", pool)], stats.calls());
    }
    let mut f = family(
        &mut out,
        "wsgate_plugin_call_duration_seconds",
        "histogram",
        "Plugin call latency, taking an instance included (current generation; a random sample of about one call in 16, and every call of connections whose chain time is recorded).",
    );
    for (plugin, pool, stats) in &pools {
        let buckets = stats.latency.buckets();
        let mut cumulative = 0;
        for (bound, counter) in LATENCY_BUCKETS_US.iter().zip(buckets) {
            cumulative += counter;
            let le = format!("{}", *bound as f64 / 1e6);
            f.sample(
                "_bucket",
                &[("plugin", plugin), ("pool", pool), ("le", &le)],
                cumulative,
            );
        }
        cumulative += buckets.last().copied().unwrap_or(0);
        f.sample(
            "_bucket",
            &[("plugin", plugin), ("pool", pool), ("le", "+Inf")],
            cumulative,
        );
        let sum = stats.latency.sum_ns() as f64 / 1e9;
        f.sample("_sum", &[("plugin", plugin), ("pool", pool)], sum);
        f.sample("_count", &[("plugin", plugin), ("pool", pool)], cumulative);
    }
    let mut f = family(
        &mut out,
        "wsgate_plugin_faults_total",
        "counter",
        "Plugin calls that failed, by kind (current generation).",
    );
    for (plugin, pool, stats) in &pools {
        for kind in wsgate_runtime::FaultKind::ALL {
            f.sample(
                "",
                &[("plugin", plugin), ("pool", pool), ("kind", kind.as_str())],
                stats.fault_count(kind),
            );
        }
    }
    let mut f = family(
        &mut out,
        "wsgate_plugin_offloaded_calls_total",
        "counter",
        "Plugin calls run on the plugin's offload threads, off the I/O workers (current generation).",
    );
    for (plugin, pool, stats) in &pools {
        f.sample(
            "",
            &[("plugin", plugin), ("pool", pool)],
            load(&stats.offloaded_calls),
        );
    }
    let mut f = family(
        &mut out,
        "wsgate_plugin_log_lines_dropped_total",
        "counter",
        "Plugin log lines over the log rate (current generation).",
    );
    for (plugin, pool, stats) in &pools {
        f.sample(
            "",
            &[("plugin", plugin), ("pool", pool)],
            load(&stats.log_lines_dropped),
        );
    }

    let mut f = family(
        &mut out,
        "wsgate_plugin_host_state_bytes",
        "gauge",
        "State bytes (keys and values) the host holds for a plugin, all connections together (current generation).",
    );
    for plugin in &generation.plugins {
        f.sample("", &[("plugin", plugin.id())], plugin.state_held());
    }
    let mut f = family(
        &mut out,
        "wsgate_plugin_quota_buckets",
        "gauge",
        "Quota buckets a plugin holds (quota.take), all connections together.",
    );
    for plugin in &generation.plugins {
        f.sample("", &[("plugin", plugin.id())], plugin.quota_buckets());
    }

    let quotas = gateway.quotas();
    let mut f = family(
        &mut out,
        "wsgate_quota_takes_total",
        "counter",
        "Quota takes answered, by result.",
    );
    let refused = load(&quotas.refused);
    f.sample(
        "",
        &[("result", "allowed")],
        load(&quotas.takes).saturating_sub(refused),
    );
    f.sample("", &[("result", "refused")], refused);
    family(
        &mut out,
        "wsgate_quota_places",
        "gauge",
        "Places this gateway's connections hold per key (quota.hold: open connections per user).",
    )
    .sample("", &[], quotas.places());
    family(
        &mut out,
        "wsgate_quota_holds_refused_total",
        "counter",
        "Holds (quota.hold) refused: the key's places were taken.",
    )
    .sample("", &[], load(&quotas.holds_refused));
    family(
        &mut out,
        "wsgate_quota_replicas",
        "gauge",
        "Replicas reconciling quotas through the same Redis, this one included, as of the last round (1 without Redis).",
    )
    .sample("", &[], load(&quotas.stats.replicas));
    family(
        &mut out,
        "wsgate_quota_redis_up",
        "gauge",
        "1 when the last reconciliation with Redis ([cluster] redis) succeeded, or none is set; 0 while quotas count locally.",
    )
    .sample("", &[], u64::from(quotas.stats.redis_up.load(Ordering::Relaxed)));
    family(
        &mut out,
        "wsgate_quota_sync_errors_total",
        "counter",
        "Reconciliation rounds with Redis that failed or timed out.",
    )
    .sample("", &[], load(&quotas.stats.errors));
    family(
        &mut out,
        "wsgate_quota_redis_commands_total",
        "counter",
        "Commands sent to Redis by quota reconciliation.",
    )
    .sample("", &[], load(&quotas.stats.commands));

    let mut f = family(
        &mut out,
        "wsgate_plugin_recent_call_seconds",
        "gauge",
        "Moving average of a plugin's recent call times; above its offload-above, its calls are offloaded (current generation).",
    );
    for plugin in &generation.plugins {
        f.sample(
            "",
            &[("plugin", plugin.id())],
            plugin.recent_call_time().as_secs_f64(),
        );
    }
    let mut f = family(
        &mut out,
        "wsgate_plugin_offloading",
        "gauge",
        "1 while a plugin's calls run on its offload threads, else 0 (current generation).",
    );
    for plugin in &generation.plugins {
        f.sample(
            "",
            &[("plugin", plugin.id())],
            u8::from(plugin.is_offloaded()),
        );
    }

    let monitor = gateway.monitor();
    family(
        &mut out,
        "wsgate_monitor_records_dropped_total",
        "counter",
        "Monitor records dropped because the store fell behind (traffic is never slowed down).",
    )
    .sample("", &[], monitor.dropped());
    family(
        &mut out,
        "wsgate_monitor_records_stored_total",
        "counter",
        "Monitor records written to the database.",
    )
    .sample("", &[], monitor.stored());

    let spans = gateway.trace_totals();
    let mut f = family(
        &mut out,
        "wsgate_trace_spans_total",
        "counter",
        "Trace spans by what became of them: exported, dropped (the export queue was full) or failed (the collector refused them or could not be reached).",
    );
    f.sample("", &[("outcome", "exported")], spans.exported);
    f.sample("", &[("outcome", "dropped")], spans.dropped);
    f.sample("", &[("outcome", "failed")], spans.failed);

    let (installed, refused) = gateway.deploy_totals();
    let mut f = family(
        &mut out,
        "wsgate_deploys_total",
        "counter",
        "Deploy attempts by result.",
    );
    f.sample("", &[("result", "ok")], installed);
    f.sample("", &[("result", "refused")], refused);

    let shadow = gateway.shadow();
    let counts = shadow
        .as_ref()
        .map(|shadow| shadow.stats.counts())
        .unwrap_or_default();
    let mut f = family(
        &mut out,
        "wsgate_shadow_messages_total",
        "counter",
        "Messages the shadow generation compared, by endpoint and result (same, changed, dropped, closed).",
    );
    for (endpoint, c) in &counts {
        for (result, count) in [
            ("same", c.same),
            ("changed", c.changed),
            ("dropped", c.dropped),
            ("closed", c.closed),
        ] {
            f.sample("", &[("endpoint", endpoint), ("result", result)], count);
        }
    }
    let mut f = family(
        &mut out,
        "wsgate_shadow_upgrades_changed_total",
        "counter",
        "Upgrades the shadow generation answers otherwise than the serving one, by endpoint.",
    );
    for (endpoint, c) in &counts {
        f.sample("", &[("endpoint", endpoint)], c.upgrades_changed);
    }
    let mut f = family(
        &mut out,
        "wsgate_shadow_connections_total",
        "counter",
        "Connections sampled into the shadow generation.",
    );
    if let Some(shadow) = &shadow {
        f.sample("", &[], load(&shadow.stats.connections));
    }
    let mut f = family(
        &mut out,
        "wsgate_shadow_dropped_total",
        "counter",
        "Sampled connections the shadow stopped following because its queue was full (the serving path never waits for it).",
    );
    if let Some(shadow) = &shadow {
        f.sample("", &[], load(&shadow.stats.dropped));
    }
    let mut f = family(
        &mut out,
        "wsgate_shadow_plugin_faults_total",
        "counter",
        "The shadow generation's plugin calls that failed, by kind.",
    );
    if let Some(shadow) = &shadow {
        for (i, pool) in shadow.generation.pools.iter().enumerate() {
            let stats = pool.stats();
            let index = i.to_string();
            for kind in wsgate_runtime::FaultKind::ALL {
                f.sample(
                    "",
                    &[
                        ("plugin", pool.plugin().id()),
                        ("pool", &index),
                        ("kind", kind.as_str()),
                    ],
                    stats.fault_count(kind),
                );
            }
        }
    }
    out
}

/// Escape a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
