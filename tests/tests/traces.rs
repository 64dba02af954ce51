//! OpenTelemetry traces (`[tracing]`): a connection's span tree arrives in
//! an OTLP/HTTP receiver started here (decoded with OpenTelemetry's own
//! protocol definitions), the trace context reaches the upstream, and a
//! collector that never answers costs the relay nothing but dropped spans.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsgate_tests::{
    TestUpstream, next_text, send_text, start_gateway, start_silent_upstream, try_upgrade,
};

/// A span as the receiver decoded it, with the resource it came under.
struct Received {
    span: Span,
    service: String,
}

/// An OTLP/HTTP receiver on port 0: every export request's spans, or what
/// was wrong with a request (the test fails on it).
async fn start_receiver() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<Received, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, spans) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let sender = sender.clone();
                async move {
                    let content_type = request.headers().get("content-type").cloned();
                    let path = request.uri().path().to_string();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let export = match ExportTraceServiceRequest::decode(body) {
                        Ok(export)
                            if path == "/v1/traces"
                                && content_type
                                    .as_ref()
                                    .is_some_and(|c| c == "application/x-protobuf") =>
                        {
                            export
                        }
                        other => {
                            let _ = sender.send(Err(format!(
                                "a bad export: {path} {content_type:?} {:?}",
                                other.err()
                            )));
                            ExportTraceServiceRequest::default()
                        }
                    };
                    for resource in export.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                let _ = sender.send(Ok(Received {
                                    span,
                                    service: service.clone(),
                                }));
                            }
                        }
                    }
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header("content-type", "application/x-protobuf")
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (address, spans)
}

/// The next span the receiver got (a bad export request fails the test).
async fn next_span(spans: &mut mpsc::UnboundedReceiver<Result<Received, String>>) -> Received {
    tokio::time::timeout(Duration::from_secs(20), spans.recv())
        .await
        .expect("spans arrive")
        .expect("the receiver runs")
        .unwrap_or_else(|bad| panic!("{bad}"))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span's attribute, as text (strings) or a number written out.
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|a| a.key == key)?;
    match value.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read both ends of a closing connection to their end, so each answers
/// the close it gets and the gateway sees the handshake finish.
async fn finish(mut server: wsgate_tests::ServerWs, mut client: wsgate_tests::Client) {
    let upstream =
        tokio::spawn(
            async move { while futures_util::StreamExt::next(&mut server).await.is_some() {} },
        );
    while futures_util::StreamExt::next(&mut client).await.is_some() {}
    upstream.await.unwrap();
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_arrives_in_the_otlp_receiver_as_one_span_tree() {
    let (receiver, mut spans) = start_receiver().await;
    let mut upstream = TestUpstream::start().await;
    let body = format!(
        "[tracing]\notlp-endpoint = \"http://{receiver}/v1/traces\"\nexport-interval = \"20ms\"\n\n\
         {}",
        wsgate_tests::endpoint(
            "/traced",
            upstream.address,
            // header-rewrite shows the upstream the traceparent the
            // upgrade plugins saw.
            "trace-sample = 1.0\nclient-messages = [{ plugin = \"tagger@1.0.0\" }]\n\
             [[endpoint.upgrade]]\nplugin = \"header-rewrite@1.0.0\"\n\
             config = { set = { \"x-seen-traceparent\" = \"${header.traceparent}\" } }"
        )
    );
    let gateway = start_gateway(&body).await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (mut client, _) = try_upgrade(&gateway, "/traced", &[("traceparent", &traceparent)])
        .await
        .unwrap();
    let mut server = upstream.accept().await;

    // The upstream is handed the trace, with the gateway's connection span
    // as its parent.
    let forwarded = server.header("traceparent").unwrap().to_string();
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"));
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the gateway's own span is the parent"
    );
    let connection_span = parts[2].to_string();
    assert_eq!(
        server.header("x-seen-traceparent"),
        Some(forwarded.as_str()),
        "the upgrade plugins see the gateway's traceparent"
    );

    send_text(&mut client, "hello").await;
    let seen = next_text(&mut server.ws).await;
    assert!(seen.contains("hello"), "{seen}");
    server.ws.send(Message::text("world")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "world");
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    // The close handshake finishes on both sides.
    finish(server.ws, client).await;

    // Spans arrive until the connection's own, which ends last.
    let mut received = Vec::new();
    let connection = loop {
        let next = next_span(&mut spans).await;
        assert_eq!(next.service, "wsgate");
        assert_eq!(hex(&next.span.trace_id), TRACE, "one trace: the client's");
        if next.span.name == "websocket /traced" {
            break next.span;
        }
        received.push(next.span);
    };
    assert_eq!(hex(&connection.span_id), connection_span);
    assert_eq!(hex(&connection.parent_span_id), CLIENT_SPAN);
    assert_eq!(connection.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&connection, "wsgate.endpoint").as_deref(),
        Some("/traced")
    );
    assert_eq!(
        attribute(&connection, "http.response.status_code").as_deref(),
        Some("101")
    );
    assert_eq!(
        attribute(&connection, "websocket.close.code").as_deref(),
        Some("1000")
    );
    assert_eq!(
        attribute(&connection, "wsgate.closed_by").as_deref(),
        Some("client")
    );

    let by_id: HashMap<String, &Span> = received.iter().map(|s| (hex(&s.span_id), s)).collect();
    let children_of = |parent: &str| -> Vec<&Span> {
        received
            .iter()
            .filter(|s| hex(&s.parent_span_id) == parent)
            .collect()
    };
    // The upgrade, under the connection, with its plugin's call under it.
    let upgrades: Vec<&Span> = children_of(&connection_span)
        .into_iter()
        .filter(|s| s.name == "upgrade")
        .collect();
    assert_eq!(upgrades.len(), 1);
    let upgrade = upgrades[0];
    assert_eq!(
        attribute(upgrade, "http.response.status_code").as_deref(),
        Some("101")
    );
    let mut upgrade_calls = children_of(&hex(&upgrade.span_id));
    upgrade_calls.sort_by_key(|s| s.start_time_unix_nano);
    let calls: Vec<(&str, Option<String>)> = upgrade_calls
        .iter()
        .map(|s| (s.name.as_str(), attribute(s, "wsgate.verdict")))
        .collect();
    assert_eq!(
        calls,
        [
            ("plugin header-rewrite@1.0.0", Some("modify".to_string())),
            ("plugin static-router@1.0.0", Some("route".to_string()))
        ]
    );
    for call in &upgrade_calls {
        assert!(call.start_time_unix_nano >= upgrade.start_time_unix_nano);
        assert!(call.end_time_unix_nano <= upgrade.end_time_unix_nano);
    }

    // Each message through its chain (sampled at 1.0): one span each under
    // the connection, as OpenTelemetry's messaging conventions name them.
    let messages: Vec<&Span> = children_of(&connection_span)
        .into_iter()
        .filter(|s| s.name == "process /traced")
        .collect();
    let direction = |d: &str| -> Vec<&Span> {
        messages
            .iter()
            .copied()
            .filter(|s| attribute(s, "wsgate.direction").as_deref() == Some(d))
            .collect()
    };
    let hello = direction("client-to-upstream")
        .into_iter()
        .find(|s| attribute(s, "websocket.opcode").as_deref() == Some("text"))
        .expect("the client's text message has a span");
    assert_eq!(hello.kind, SpanKind::Consumer as i32);
    assert_eq!(
        attribute(hello, "messaging.system").as_deref(),
        Some("websocket")
    );
    assert_eq!(
        attribute(hello, "messaging.destination.name").as_deref(),
        Some("/traced")
    );
    assert_eq!(
        attribute(hello, "messaging.message.body.size").as_deref(),
        Some("5")
    );
    assert_eq!(
        attribute(hello, "wsgate.outcome").as_deref(),
        Some("forward")
    );
    let calls = children_of(&hex(&hello.span_id));
    assert_eq!(calls.len(), 1, "one span per plugin call");
    assert_eq!(calls[0].name, "plugin tagger@1.0.0");
    assert_eq!(
        attribute(calls[0], "wsgate.verdict").as_deref(),
        Some("replace")
    );
    // The upstream's message has no chain: a span of its own, no calls.
    let world = direction("upstream-to-client")
        .into_iter()
        .find(|s| attribute(s, "websocket.opcode").as_deref() == Some("text"))
        .expect("the upstream's text message has a span");
    assert!(children_of(&hex(&world.span_id)).is_empty());
    // The client's close went through the chain too.
    assert!(
        direction("client-to-upstream")
            .iter()
            .any(|s| attribute(s, "websocket.opcode").as_deref() == Some("close"))
    );
    // Every span received belongs to the tree.
    for span in &received {
        let parent = hex(&span.parent_span_id);
        assert!(
            parent == connection_span || by_id.contains_key(&parent),
            "{} has an unknown parent",
            span.name
        );
    }
    let totals = gateway.trace_totals();
    assert_eq!(totals.dropped + totals.failed, 0, "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_dropped_spans_not_messages() {
    // It accepts connections and never answers: every export waits for
    // its timeout while the queue fills.
    let collector = start_silent_upstream().await;
    let mut upstream = TestUpstream::start().await;
    let body = format!(
        "[tracing]\notlp-endpoint = \"http://{collector}/v1/traces\"\nqueue = 4\nbatch = 1\n\
         export-timeout = \"30s\"\n\n{}",
        wsgate_tests::endpoint("/traced", upstream.address, "trace-sample = 1.0")
    );
    let gateway = start_gateway(&body).await;
    let (mut client, _) = try_upgrade(&gateway, "/traced", &[]).await.unwrap();
    let mut server = upstream.accept().await;
    for i in 0..200 {
        let text = format!("message {i}");
        send_text(&mut client, &text).await;
        assert_eq!(next_text(&mut server.ws).await, text);
    }
    let totals = gateway.trace_totals();
    assert!(totals.dropped > 150, "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_says_not_sampled_is_followed() {
    let (receiver, mut spans) = start_receiver().await;
    let mut upstream = TestUpstream::start().await;
    let body = format!(
        "[tracing]\notlp-endpoint = \"http://{receiver}/v1/traces\"\nexport-interval = \"20ms\"\n\n{}{}",
        wsgate_tests::endpoint("/parent-unsampled", upstream.address, "trace-sample = 1.0"),
        wsgate_tests::endpoint(
            "/messages-unsampled",
            upstream.address,
            "trace-sample = 0.0"
        ),
    );
    let gateway = start_gateway(&body).await;
    // The client's parent was not sampled: no spans, and the upstream gets
    // the client's traceparent as it came.
    let unsampled = format!("00-{TRACE}-{CLIENT_SPAN}-00");
    let (mut client, _) = try_upgrade(
        &gateway,
        "/parent-unsampled",
        &[("traceparent", &unsampled)],
    )
    .await
    .unwrap();
    let mut server = upstream.accept().await;
    assert_eq!(server.header("traceparent"), Some(unsampled.as_str()));
    send_text(&mut client, "quiet").await;
    assert_eq!(next_text(&mut server.ws).await, "quiet");
    client.close(None).await.unwrap();
    finish(server.ws, client).await;

    // Then a connection without a parent, its messages sampled at 0: a new
    // trace with the connection and its upgrade only. It is the first
    // trace to arrive, so the unsampled one sent nothing.
    let (mut client, _) = try_upgrade(&gateway, "/messages-unsampled", &[])
        .await
        .unwrap();
    let mut server = upstream.accept().await;
    send_text(&mut client, "unsampled message").await;
    assert_eq!(next_text(&mut server.ws).await, "unsampled message");
    client.close(None).await.unwrap();
    finish(server.ws, client).await;
    let mut names = Vec::new();
    loop {
        let next = next_span(&mut spans).await;
        assert_ne!(
            hex(&next.span.trace_id),
            TRACE,
            "the unsampled trace sent nothing"
        );
        assert!(
            next.span.parent_span_id.is_empty()
                || next.span.name != "websocket /messages-unsampled"
        );
        let done = next.span.name == "websocket /messages-unsampled";
        names.push(next.span.name);
        if done {
            break;
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "plugin static-router@1.0.0",
            "upgrade",
            "websocket /messages-unsampled"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_with_a_malformed_parent_is_a_trace_of_its_own() {
    let (receiver, mut spans) = start_receiver().await;
    let down = wsgate_tests::closed_port().await;
    let body = format!(
        "[tracing]\notlp-endpoint = \"http://{receiver}/v1/traces\"\nexport-interval = \"20ms\"\n\n{}",
        wsgate_tests::endpoint("/down", down, ""),
    );
    let gateway = start_gateway(&body).await;
    // Not a traceparent: the connection starts a trace of its own.
    let refused = try_upgrade(&gateway, "/down", &[("traceparent", "00-nonsense-01")]).await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(502));
    let mut received = Vec::new();
    let connection = loop {
        let next = next_span(&mut spans).await.span;
        if next.name == "websocket /down" {
            break next;
        }
        received.push(next);
    };
    assert!(connection.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&connection.trace_id).len(), 32);
    assert_eq!(
        attribute(&connection, "http.response.status_code").as_deref(),
        Some("502")
    );
    // A 5xx answer is the gateway's failure: the spans say error (2).
    assert_eq!(connection.status.as_ref().map(|s| s.code), Some(2));
    let upgrade = received
        .iter()
        .find(|s| s.name == "upgrade")
        .expect("the upgrade's span");
    assert_eq!(hex(&upgrade.parent_span_id), hex(&connection.span_id));
    assert_eq!(upgrade.status.as_ref().map(|s| s.code), Some(2));
    assert!(
        received
            .iter()
            .any(|s| s.name == "plugin static-router@1.0.0"
                && hex(&s.parent_span_id) == hex(&upgrade.span_id))
    );
    assert!(received.iter().all(|s| s.trace_id == connection.trace_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_spans_are_sent_at_shutdown() {
    let (receiver, mut spans) = start_receiver().await;
    let mut upstream = TestUpstream::start().await;
    // Spans wait up to an hour for their batch: only the flush at shutdown
    // sends them.
    let body = format!(
        "[tracing]\notlp-endpoint = \"http://{receiver}/v1/traces\"\nexport-interval = \"1h\"\n\n{}",
        wsgate_tests::endpoint("/last", upstream.address, "trace-sample = 1.0"),
    );
    let gateway = start_gateway(&body).await;
    let (mut client, _) = try_upgrade(&gateway, "/last", &[]).await.unwrap();
    let mut server = upstream.accept().await;
    send_text(&mut client, "last words").await;
    assert_eq!(next_text(&mut server.ws).await, "last words");
    client.close(None).await.unwrap();
    finish(server.ws, client).await;
    assert!(spans.try_recv().is_err(), "nothing is sent before its time");
    gateway.shutdown().await;
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("websocket /last") {
        names.push(next_span(&mut spans).await.span.name);
    }
    assert!(names.iter().any(|n| n == "process /last"), "{names:?}");
}
