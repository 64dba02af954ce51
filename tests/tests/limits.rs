//! Limits and abuse: Origin allow-lists, connection limits (gateway,
//! endpoint, client address) and the idle timeout, over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use wsgate_tests::*;

#[tokio::test]
async fn only_allowed_origins_may_connect() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint(
        "/app",
        echo,
        "allowed-origins = [\"https://app.example\"]",
    ))
    .await;
    assert!(
        try_upgrade(&gateway, "/app", &[("origin", "https://app.example")])
            .await
            .is_ok()
    );
    assert!(
        try_upgrade(&gateway, "/app", &[("origin", "HTTPS://APP.EXAMPLE")])
            .await
            .is_ok()
    );
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let (status, body) = try_upgrade(&gateway, "/app", &headers).await.err().unwrap();
        assert_eq!(status, 403, "{origin:?}");
        assert!(body.contains("origin"), "{body}");
    }
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn connection_limits_answer_503_or_429_and_places_come_back() {
    let echo = start_echo().await;
    let body = format!(
        "{}{}{}",
        endpoint("/a", echo, "max-connections = 2"),
        endpoint("/b", echo, "max-connections-per-ip = 1"),
        endpoint("/c", echo, ""),
    );
    let text = config_with_gateway("max-connections = 3\n", &body);
    init_logging();
    let gateway = wsgate_proxy::Gateway::start(parse_config(&text), runtime())
        .await
        .unwrap();

    let a1 = try_upgrade(&gateway, "/a", &[]).await.unwrap().0;
    let _a2 = try_upgrade(&gateway, "/a", &[]).await.unwrap().0;
    let (status, body) = try_upgrade(&gateway, "/a", &[]).await.err().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "this endpoint is at its connection limit\n")
    );

    let b1 = try_upgrade(&gateway, "/b", &[]).await.unwrap().0;
    // A second connection from this client on /b is over its per-address limit.
    drop(a1);
    gateway.wait_for_connections(2).await;
    let (status, body) = try_upgrade(&gateway, "/b", &[]).await.err().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (429, "too many connections from this address\n")
    );

    let _c1 = try_upgrade(&gateway, "/c", &[]).await.unwrap().0;
    let (status, body) = try_upgrade(&gateway, "/c", &[]).await.err().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "the gateway is at its connection limit\n")
    );

    drop(b1);
    gateway.wait_for_connections(2).await;
    let mut b2 = try_upgrade(&gateway, "/b", &[]).await.unwrap().0;
    send_text(&mut b2, "back").await;
    assert_eq!(next_text(&mut b2).await, "back");
}

#[tokio::test]
async fn an_idle_connection_is_closed_on_both_sides() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/idle",
        upstream.address,
        "idle-timeout = \"300ms\"",
    ))
    .await;
    let mut client = connect(&gateway, "/idle").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, "still here").await;
    assert_eq!(next_text(&mut server.ws).await, "still here");
    // Then nothing either way: the gateway closes both sides.
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close, (1001, "idle timeout".to_string()));
    assert_eq!(server_close, (1001, "idle timeout".to_string()));
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = start_echo().await;
    let text = config_with_gateway("max-header-bytes = \"8KiB\"\n", &endpoint("/ws", echo, ""));
    init_logging();
    let gateway = wsgate_proxy::Gateway::start(parse_config(&text), runtime())
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(gateway.local_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         x-padding: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    // The gateway may answer and close before reading everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    let too_small = config_with_gateway("max-header-bytes = \"1KiB\"\n", "");
    let error = wsgate_config::parse(&too_small, std::path::Path::new("small.toml"))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("gateway.max-header-bytes"), "{error}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_the_upstream_closed() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/firehose",
        upstream.address,
        "send-timeout = \"300ms\"\nmax-message-size = \"1MiB\"",
    ))
    .await;
    // A client that connects and then never reads.
    let _deaf = connect(&gateway, "/firehose").await;
    let server = upstream.accept().await;
    // The upstream sends until the gateway stops taking its messages and
    // closes it; the gateway holds at most the sockets' buffers meanwhile.
    let (close, sent) = flood_until_closed(server.ws, 64 * 1024).await;
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "client not reading");
    gateway.wait_for_connections(0).await;
    assert!(sent > 0);
}
