//! Test guest: returns the verdict a message or request asks for, so tests
//! can exercise every branch of the contract through the real gateway.
//!
//! Messages (text): `drop`, `reply:TEXT`, `close:CODE:REASON`,
//! `inject:N:TEXT` (N copies), `count` (per-connection counter in host
//! state), `context` (the connection context as JSON); anything else is
//! forwarded with the configured `tag` appended.
//! Upgrades: header `x-test-reject: STATUS` rejects; `x-test-header: VALUE`
//! sets `x-test-seen` upstream and publishes the connection attribute
//! `marker`; otherwise continues.

use wsgate_plugin_sdk::prelude::*;

/// Configuration of `test-verdicts`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Appended to forwarded text messages.
    #[serde(default)]
    tag: String,
}

struct TestVerdicts;

impl Plugin for TestVerdicts {
    type Config = Config;
}

impl UpgradeFilter for TestVerdicts {
    fn on_upgrade(_config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        if let Some(status) = request.header("x-test-reject") {
            let status = status.parse().unwrap_or(403);
            return UpgradeVerdict::Reject(Rejection {
                status,
                headers: vec![Header::new("x-test-rejected", "yes")],
                body: "rejected by test-verdicts\n".into(),
            });
        }
        if let Some(value) = request.header("x-test-header") {
            state::set("seen", value.as_bytes());
            state::set_attribute("marker", value);
            return UpgradeVerdict::Modify(vec![
                HeaderOp::Set(Header::new("x-test-seen", value)),
                HeaderOp::Remove("x-test-header".into()),
            ]);
        }
        UpgradeVerdict::Continue
    }
}

impl MessageFilter for TestVerdicts {
    fn on_message(config: &Config, direction: Direction, message: Message) -> MessageVerdict {
        let Message::Text(text) = message else {
            return MessageVerdict::Forward;
        };
        if text == "drop" {
            return MessageVerdict::Drop;
        }
        if let Some(reply) = text.strip_prefix("reply:") {
            return MessageVerdict::Reply(vec![Message::Text(reply.to_string())]);
        }
        if let Some(rest) = text.strip_prefix("close:") {
            let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
            return MessageVerdict::close(code.parse().unwrap_or(1008), reason);
        }
        if let Some(rest) = text.strip_prefix("inject:") {
            let (count, body) = rest.split_once(':').unwrap_or((rest, ""));
            let count = count.parse().unwrap_or(1);
            return MessageVerdict::Replace(
                (0..count)
                    .map(|i| Message::Text(format!("{body}#{i}")))
                    .collect(),
            );
        }
        if text == "count" {
            let n = state::get_string("count")
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            state::set("count", n.to_string().as_bytes());
            return MessageVerdict::modify(Message::Text(format!("count={n}")));
        }
        if text == "context" {
            let context = serde_json::json!({
                "connection-id": context::connection_id(),
                "endpoint": context::endpoint_path(),
                "content-type": context::content_type(),
                "route": context::route_url(),
                "user-agent": context::request_header("user-agent"),
                "seen": state::get_string("seen"),
                "direction": format!("{direction:?}"),
            });
            return MessageVerdict::modify(Message::Text(context.to_string()));
        }
        MessageVerdict::modify(Message::Text(format!("{text}{}", config.tag)))
    }
}

wsgate_plugin_sdk::export_filter!(TestVerdicts);
