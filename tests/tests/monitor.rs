//! The traffic monitor end to end: a real client through the gateway, the
//! records read back through the admin API (connections, frames, tail,
//! metrics), monitor levels, history across a restart, and a store that
//! falls behind without slowing traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsgate_monitor::Record;
use wsgate_proxy::Gateway;
use wsgate_tests::*;

/// A gateway whose `/m` endpoint masks `password` in client messages and
/// records at `level`; `monitor` is the `[monitor]` table's body.
async fn gateway(level: &str, monitor: &str) -> (Gateway, std::net::SocketAddr) {
    let echo = start_echo().await;
    let body = format!(
        "[monitor]\n{monitor}\n\n{}",
        endpoint(
            "/m",
            echo,
            &format!(
                "monitor = \"{level}\"\nmonitor-capture = \"64\"\n\
                 client-messages = [{{ plugin = \"json-mask@1.0.0\", config = {{ fields = [\"password\"] }} }}]"
            )
        )
    );
    let gateway = start_gateway(&body).await;
    let (admin, _stop) = start_admin(&gateway, None).await;
    (gateway, admin)
}

/// Wait for the monitor to publish the end of connection `key`.
async fn ended(live: &mut tokio::sync::broadcast::Receiver<Arc<Record>>, key: &str) {
    loop {
        if let Record::End(end) = live.recv().await.unwrap().as_ref()
            && end.connection == key
        {
            return;
        }
    }
}

async fn close_normally(client: &mut Client) {
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    expect_close(client).await;
}

fn payload(frame: &Value) -> String {
    String::from_utf8(STANDARD.decode(frame["payload"].as_str().unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn upgrades_frames_verdicts_and_ends_are_recorded_and_served() {
    let (gateway, admin) = gateway("full", "").await;
    let mut live = gateway.monitor().subscribe();
    let mut client = connect(&gateway, "/m?room=1").await;
    send_text(&mut client, r#"{"user":"ann","password":"hunter2"}"#).await;
    assert_eq!(
        next_text(&mut client).await,
        r#"{"password":"***","user":"ann"}"#
    );
    // Large enough that the gateway writes the echo from the message itself
    // (header and payload in one vectored write through the tap).
    let binary_len = 2 * wsgate_wire::websocket::DIRECT_WRITE_MIN;
    client
        .send(Message::binary(vec![7u8; binary_len]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut client).await,
        Message::binary(vec![7u8; binary_len])
    );
    close_normally(&mut client).await;
    let key = gateway.monitor().key(1);
    ended(&mut live, &key).await;

    let list = admin_json(admin, "/api/connections?endpoint=/m").await;
    let connection = &list["connections"][0];
    let upgrade = &connection["upgrade"];
    assert_eq!(upgrade["connection"], key.as_str());
    assert_eq!(upgrade["status"], 101);
    assert_eq!(
        (upgrade["method"].as_str(), upgrade["query"].as_str()),
        (Some("GET"), Some("room=1"))
    );
    assert!(
        upgrade["request_headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "sec-websocket-key")
    );
    assert!(
        upgrade["response_headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "sec-websocket-accept")
    );
    assert_eq!(upgrade["verdicts"][0]["plugin"], "static-router@1.0.0");
    assert!(
        upgrade["verdicts"][0]["verdict"]
            .as_str()
            .unwrap()
            .starts_with("route ws://")
    );
    assert!(
        upgrade["route"]
            .as_str()
            .unwrap()
            .starts_with("ws://127.0.0.1:")
    );
    assert_eq!(connection["end"]["closed_by"], "client");
    assert_eq!(connection["end"]["code"], 1000);
    assert_eq!(connection["end"]["reason"], "bye");

    let detail = admin_json(admin, &format!("/api/connections/{key}")).await;
    let frames = detail["frames"].as_array().unwrap();
    let described: Vec<(String, u64)> = frames
        .iter()
        .map(|f| {
            (
                f["origin"].as_str().unwrap().to_string(),
                f["opcode"].as_u64().unwrap(),
            )
        })
        .collect();
    let pairs = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(o, c)| (o.to_string(), *c))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        described,
        pairs(&[
            ("client", 1),
            ("server", 1),
            ("client", 2),
            ("server", 2),
            ("client", 8),
            ("server", 8)
        ])
    );
    let sent = &frames[0];
    assert_eq!(sent["masking_key"].as_str().unwrap().len(), 8);
    assert_eq!(sent["length"], 35);
    assert_eq!(payload(sent), r#"{"user":"ann","password":"hunter2"}"#);
    assert!(sent["fin"].as_bool().unwrap());
    assert_eq!(sent["verdict"], "json-mask@1.0.0 replace (1)");
    assert!(sent["filter_us"].as_u64().is_some());
    let echoed = &frames[1];
    assert_eq!(echoed["masking_key"], Value::Null);
    assert_eq!(payload(echoed), r#"{"password":"***","user":"ann"}"#);
    for binary in &frames[2..4] {
        assert_eq!(
            (binary["length"].as_u64(), binary["truncated"].as_bool()),
            (Some(binary_len as u64), Some(true)),
            "{binary}"
        );
        assert_eq!(
            STANDARD
                .decode(binary["payload"].as_str().unwrap())
                .unwrap(),
            [7u8; 64]
        );
    }
    assert!(
        frames
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );

    let binary = admin_json(admin, "/api/frames?opcode=binary&origin=client").await;
    assert_eq!(binary["frames"].as_array().unwrap().len(), 1);
    assert_eq!(
        admin_json(admin, "/api/connections?close_code=1000").await["connections"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        admin_json(admin, "/api/connections?close_code=1001").await["connections"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (status, body) = admin_http(admin, "GET", "/api/frames?opcode=shout", None, "").await;
    assert_eq!(status, 400);
    assert!(body.contains("opcode"), "{body}");
    assert_eq!(
        admin_http(admin, "GET", "/api/connections/none-1", None, "")
            .await
            .0,
        404
    );

    let overview = admin_json(admin, "/api/endpoints").await;
    assert_eq!(overview["endpoints"][0]["monitor"], "full");
    assert_eq!(
        overview["endpoints"][0]["client_messages"][0]["plugin"],
        "json-mask@1.0.0"
    );
    assert_eq!(overview["listen"], gateway.local_addr().to_string());
}

#[tokio::test]
async fn the_live_tail_streams_records_as_they_happen() {
    let (gateway, admin) = gateway("metadata", "").await;
    let (mut tail, _) =
        tokio_tungstenite::connect_async(format!("ws://{admin}/api/tail?endpoint=/m"))
            .await
            .unwrap();
    let mut client = connect(&gateway, "/m").await;
    send_text(&mut client, "not json").await;
    assert_eq!(next_text(&mut client).await, "not json");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let Some(Ok(Message::Text(text))) = tail.next().await else {
            panic!("the tail ended");
        };
        let record: Value = serde_json::from_str(&text).unwrap();
        seen.push((
            record["type"].as_str().unwrap().to_string(),
            record["origin"].as_str().map(str::to_string),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("upgrade".to_string(), None),
            ("frame".to_string(), Some("client".to_string())),
            ("frame".to_string(), Some("server".to_string())),
        ]
    );
    close_normally(&mut client).await;
}

#[tokio::test]
async fn each_level_records_what_it_promises() {
    for (level, upgrades, frames, payloads) in [
        ("off", 0, 0, false),
        ("headers", 1, 0, false),
        ("metadata", 1, 4, false),
        ("full", 1, 4, true),
    ] {
        let (gateway, _) = gateway(level, "").await;
        let mut live = gateway.monitor().subscribe();
        let mut client = connect(&gateway, "/m").await;
        send_text(&mut client, "hello").await;
        assert_eq!(next_text(&mut client).await, "hello");
        close_normally(&mut client).await;
        let key = gateway.monitor().key(1);
        if level != "off" {
            ended(&mut live, &key).await;
        }
        gateway.monitor().flush().await;
        let monitor = gateway.monitor().clone();
        let listed = tokio::task::spawn_blocking(move || {
            let connections = monitor
                .connections(&wsgate_monitor::ConnectionFilter {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap();
            let frames = monitor
                .frames(&wsgate_monitor::FrameFilter {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap();
            (connections, frames)
        })
        .await
        .unwrap();
        assert_eq!(listed.0.len(), upgrades, "{level}");
        assert_eq!(listed.1.len(), frames, "{level}");
        assert!(
            listed.1.iter().all(|f| f.payload.is_some() == payloads),
            "{level}"
        );
    }
}

#[tokio::test]
async fn history_survives_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("database = \"{}\"", dir.path().join("monitor.db").display());
    let (first, _) = gateway("full", &database).await;
    let mut live = first.monitor().subscribe();
    let mut client = connect(&first, "/m").await;
    send_text(&mut client, "remember me").await;
    assert_eq!(next_text(&mut client).await, "remember me");
    close_normally(&mut client).await;
    let key = first.monitor().key(1);
    ended(&mut live, &key).await;
    first.shutdown().await;

    let (second, admin) = gateway("full", &database).await;
    let detail = admin_json(admin, &format!("/api/connections/{key}")).await;
    assert_eq!(detail["connection"]["end"]["code"], 1000);
    assert_eq!(payload(&detail["frames"][0]), "remember me");
    assert_ne!(second.monitor().key(1), key, "keys stay unique across runs");
    assert!(Path::new(&dir.path().join("monitor.db")).exists());
}

#[tokio::test]
async fn a_store_that_falls_behind_drops_records_not_messages() {
    let (gateway, admin) = gateway("full", "queue = 1").await;
    let mut client = connect(&gateway, "/m").await;
    for i in 0..1000 {
        send_text(&mut client, &format!("message {i}")).await;
    }
    for i in 0..1000 {
        assert_eq!(next_text(&mut client).await, format!("message {i}"));
    }
    let (_, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
    let dropped: u64 = metric(&metrics, "wsgate_monitor_records_dropped_total")
        .parse()
        .unwrap();
    assert!(dropped > 0, "{metrics}");
    assert_eq!(gateway.monitor().dropped(), dropped);
    close_normally(&mut client).await;
}

/// The value of the sample line starting with `name`.
fn metric<'a>(metrics: &'a str, name: &str) -> &'a str {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
}

#[tokio::test]
async fn metrics_scrape_cleanly_with_traffic_verdicts_and_latency() {
    let (gateway, admin) = gateway("headers", "").await;
    let mut client = connect(&gateway, "/m").await;
    send_text(&mut client, r#"{"password":"x"}"#).await;
    next_text(&mut client).await;
    send_text(&mut client, "plain").await;
    next_text(&mut client).await;
    let (status, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    // Every sample belongs to the family whose TYPE line came last, and no
    // family appears twice: the text format's grouping rule.
    let mut families = std::collections::HashSet::new();
    let mut current = String::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap().to_string();
            assert!(families.insert(current.clone()), "{current} twice");
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| *b == current)
                .unwrap_or(name);
            assert_eq!(base, current, "sample {line} outside its family");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        }
    }
    for expected in [
        "wsgate_upgrades_total{endpoint=\"/m\",status=\"101\"} 1",
        "wsgate_messages_total{endpoint=\"/m\",direction=\"client_to_server\"} 2",
        "wsgate_message_verdicts_total{verdict=\"replace\"} 1",
        "wsgate_message_verdicts_total{verdict=\"forward\"} 1",
        "wsgate_upgrade_verdicts_total{verdict=\"route\"} 1",
        "wsgate_endpoint_connections{endpoint=\"/m\"} 1",
        "wsgate_monitor_records_dropped_total 0",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("wsgate_plugin_call_duration_seconds_count{plugin=\"json-mask@1.0.0\""),
        "{metrics}"
    );
    close_normally(&mut client).await;
}

#[tokio::test]
async fn a_client_that_vanishes_is_recorded_as_gone_not_as_an_error() {
    let (gateway, admin) = gateway("headers", "").await;
    let mut live = gateway.monitor().subscribe();
    let client = connect(&gateway, "/m").await;
    drop(client); // TCP closed without a close frame
    let key = gateway.monitor().key(1);
    ended(&mut live, &key).await;
    let detail = admin_json(admin, &format!("/api/connections/{key}")).await;
    let end = &detail["connection"]["end"];
    assert_eq!(
        (
            end["closed_by"].as_str(),
            end["code"].as_u64(),
            end["reason"].as_str()
        ),
        (Some("client"), None, Some("client went away"))
    );
}
