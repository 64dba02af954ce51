//! The error-mapping table, over real sockets:
//!
//! | cause                                  | client gets            |
//! |----------------------------------------|------------------------|
//! | unknown or disabled path               | 404                    |
//! | not a websocket upgrade                | 426 + Upgrade          |
//! | wrong websocket version                | 426 + version 13       |
//! | plugin rejects                         | the plugin's status    |
//! | route outside allowed-upstreams        | 403                    |
//! | remote host at max-connections         | 503                    |
//! | upstream refuses the connection        | 502                    |
//! | upstream does not answer in time       | 504                    |
//! | upstream answers without 101           | 502                    |
//! | upgrade plugin fault, fail-closed      | 500                    |
//! | upgrade plugin fault, fail-open        | plugin skipped         |
//! | chain ends without a route             | 500                    |
//! | message plugin fault, fail-closed      | close 1011 both sides  |
//! | message plugin fault, fail-open        | message forwarded      |

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate_tests::*;

/// A raw HTTP/1.1 request; the status line and headers of the response.
async fn raw_request(gateway: &wsgate_proxy::Gateway, request: &str) -> String {
    let mut stream = TcpStream::connect(gateway.local_addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    let n = stream.read(&mut response).await.unwrap();
    String::from_utf8_lossy(&response[..n]).into_owned()
}

#[tokio::test]
async fn unknown_and_disabled_paths_get_404() {
    let echo = start_echo().await;
    let gateway =
        start_gateway(&(endpoint("/echo", echo, "") + &endpoint("/off", echo, "enabled = false")))
            .await;
    assert_eq!(
        try_upgrade(&gateway, "/nope", &[]).await.err().unwrap().0,
        404
    );
    assert_eq!(
        try_upgrade(&gateway, "/off", &[]).await.err().unwrap().0,
        404
    );
    assert_eq!(
        try_upgrade(&gateway, "/echo/sub", &[])
            .await
            .err()
            .unwrap()
            .0,
        404
    );
}

#[tokio::test]
async fn a_plain_http_request_gets_426_with_upgrade_websocket() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/echo", echo, "")).await;
    let response = raw_request(&gateway, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("upgrade: websocket"),
        "{response}"
    );
}

#[tokio::test]
async fn an_unsupported_websocket_version_gets_426_naming_13() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/echo", echo, "")).await;
    let response = raw_request(
        &gateway,
        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{response}"
    );
    let response = raw_request(
        &gateway,
        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[tokio::test]
async fn a_plugin_rejection_gets_its_status_headers_and_body() {
    let echo = start_echo().await;
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/ws\"\nallowed-upstreams = [\"ws://{echo}\"]\n\
         upgrade = [{{ plugin = \"test-verdicts@0.1.0\" }}, {{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{echo}/\" }} }}]\n"
    ))
    .await;
    let (status, body) = try_upgrade(&gateway, "/ws", &[("x-test-reject", "429")])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 429);
    assert_eq!(body, "rejected by test-verdicts\n");
    // Without the header the chain continues to the router.
    assert!(try_upgrade(&gateway, "/ws", &[]).await.is_ok());
}

/// An endpoint `/ws` whose chain routes to `upstream`, with `allowed`
/// (TOML list items) as its `allowed-upstreams`.
fn routed_to(upstream: std::net::SocketAddr, allowed: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"/ws\"\nallowed-upstreams = [{allowed}]\n\
         upgrade = [{{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{upstream}/\" }} }}]\n"
    )
}

#[tokio::test]
async fn a_route_outside_allowed_upstreams_gets_403() {
    let echo = start_echo().await;
    let other = start_echo().await;
    let gateway = start_gateway(&routed_to(other, &format!("\"ws://{echo}\""))).await;
    // A refused route is not remembered as admitted: refused again.
    for _ in 0..2 {
        assert_eq!(
            try_upgrade(&gateway, "/ws", &[]).await.err().unwrap().0,
            403
        );
    }
}

#[tokio::test]
async fn a_route_admitted_before_a_deploy_is_checked_again_by_the_new_generation() {
    let echo = start_echo().await;
    let other = start_echo().await;
    let gateway = start_gateway(&routed_to(
        other,
        &format!("\"ws://{echo}\", \"ws://{other}\""),
    ))
    .await;
    for _ in 0..2 {
        assert!(try_upgrade(&gateway, "/ws", &[]).await.is_ok());
    }
    let narrowed = config_text(&routed_to(other, &format!("\"ws://{echo}\"")));
    gateway
        .deploy(parse_config(&narrowed), "test")
        .await
        .unwrap();
    assert_eq!(
        try_upgrade(&gateway, "/ws", &[]).await.err().unwrap().0,
        403
    );
}

#[tokio::test]
async fn a_remote_host_at_max_connections_gets_503() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(format!("[[remote-host]]\naddress = \"{echo}\"\nmax-connections = 1\n\n")
            + &endpoint("/echo", echo, "")),
    )
    .await;
    let first = connect(&gateway, "/echo").await;
    assert_eq!(
        try_upgrade(&gateway, "/echo", &[]).await.err().unwrap().0,
        503
    );
    drop(first);
    gateway.wait_for_connections(0).await;
    // The permit comes back when the connection ends.
    assert!(try_upgrade(&gateway, "/echo", &[]).await.is_ok());
}

#[tokio::test]
async fn a_refused_upstream_gets_502() {
    let nothing = closed_port().await;
    let gateway = start_gateway(&endpoint("/ws", nothing, "")).await;
    assert_eq!(
        try_upgrade(&gateway, "/ws", &[]).await.err().unwrap().0,
        502
    );
}

#[tokio::test]
async fn a_silent_upstream_gets_504_after_the_connect_timeout() {
    let silent = start_silent_upstream().await;
    let gateway = start_gateway(
        &(format!("[[remote-host]]\naddress = \"{silent}\"\nconnect-timeout = \"300ms\"\n\n")
            + &endpoint("/ws", silent, "")),
    )
    .await;
    assert_eq!(
        try_upgrade(&gateway, "/ws", &[]).await.err().unwrap().0,
        504
    );
}

#[tokio::test]
async fn an_upstream_that_is_not_websocket_gets_502() {
    // A plain HTTP server answering 200 to everything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 2048];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let gateway = start_gateway(&endpoint("/ws", address, "")).await;
    assert_eq!(
        try_upgrade(&gateway, "/ws", &[]).await.err().unwrap().0,
        502
    );
}

fn faulty_upgrade_endpoint(path: &str, echo: std::net::SocketAddr, fail: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nallowed-upstreams = [\"ws://{echo}\"]\n\
         upgrade = [{{ plugin = \"faults@1.0.0\", fail = \"{fail}\" }}, {{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{echo}/\" }} }}]\n\n"
    )
}

/// `test-faults` as `faults@1.0.0`, its deadline far from what a trap or
/// an allocation takes: once `loop` makes its calls slow they run
/// offloaded, at a lower priority, and a machine busy with other tests
/// must not turn them into deadline faults.
fn faults_plugin() -> String {
    format!(
        "[[plugin]]\nname = \"faults\"\nversion = \"1.0.0\"\npath = \"{}\"\n\
         grants = [\"log\", \"clocks\", \"state\"]\ndeadline = \"2s\"\n\n",
        plugin_path("test-faults").display()
    )
}

#[tokio::test]
async fn an_upgrade_plugin_fault_gets_500_fail_closed_and_is_skipped_fail_open() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(faults_plugin()
            + &faulty_upgrade_endpoint("/closed", echo, "closed")
            + &faulty_upgrade_endpoint("/open", echo, "open")),
    )
    .await;
    for fault in ["trap", "loop", "alloc"] {
        let refused = try_upgrade(&gateway, "/closed", &[("x-test-fault", fault)]).await;
        assert_eq!(refused.err().unwrap().0, 500, "{fault}");
        let mut client = try_upgrade(&gateway, "/open", &[("x-test-fault", fault)])
            .await
            .unwrap_or_else(|e| panic!("{fault}: {e:?}"))
            .0;
        send_text(&mut client, "still works").await;
        assert_eq!(next_text(&mut client).await, "still works");
    }
    // Every fault was counted by kind, on the one pool of test-faults.
    let generation = gateway.generation();
    let pool = generation
        .pools
        .iter()
        .find(|p| p.plugin().id() == "faults@1.0.0")
        .unwrap();
    let stats = pool.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.trap_faults.load(Relaxed), 2);
    assert_eq!(stats.deadline_faults.load(Relaxed), 2);
    assert_eq!(stats.memory_faults.load(Relaxed), 2);
}

#[tokio::test]
async fn a_chain_that_never_routes_gets_500() {
    let echo = start_echo().await;
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/ws\"\nallowed-upstreams = [\"ws://{echo}\"]\n\
         upgrade = [{{ plugin = \"test-verdicts@0.1.0\" }}]\n"
    ))
    .await;
    assert_eq!(
        try_upgrade(&gateway, "/ws", &[]).await.err().unwrap().0,
        500
    );
}

#[tokio::test]
async fn a_message_plugin_fault_closes_1011_fail_closed_and_forwards_fail_open() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(
        &(endpoint(
            "/closed",
            upstream.address,
            "client-messages = [{ plugin = \"test-faults@0.1.0\" }]",
        ) + &endpoint(
            "/open",
            upstream.address,
            "client-messages = [{ plugin = \"test-faults@0.1.0\", fail = \"open\" }]",
        )),
    )
    .await;
    let mut open = connect(&gateway, "/open").await;
    let mut open_server = upstream.accept().await;
    send_text(&mut open, "trap").await;
    assert_eq!(next_text(&mut open_server.ws).await, "trap");

    let mut closed = connect(&gateway, "/closed").await;
    let mut closed_server = upstream.accept().await;
    send_text(&mut closed, "trap").await;
    let (client_close, server_close) = tokio::join!(
        expect_close(&mut closed),
        expect_close(&mut closed_server.ws)
    );
    assert_eq!(client_close.0, 1011);
    assert_eq!(server_close.0, 1011);
    assert!(
        client_close.1.contains("test-faults@0.1.0"),
        "{client_close:?}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    let echo = start_echo().await;
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nhandshake-timeout = \"200ms\"\n\n{}{}",
        all_plugins(),
        endpoint("/echo", echo, "")
    );
    let config = wsgate_config::parse(&text, std::path::Path::new("slow.toml")).unwrap();
    let gateway = wsgate_proxy::Gateway::start(config, runtime())
        .await
        .unwrap();
    let mut stream = TcpStream::connect(gateway.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The gateway answers 408 or just closes; either way the read ends.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}
