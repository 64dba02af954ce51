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
    let text = config_text(&body).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nmax-connections = 3\n",
    );
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
    assert_eq!(
        expect_close(&mut client).await,
        (1001, "idle timeout".to_string())
    );
    assert_eq!(
        expect_close(&mut server.ws).await,
        (1001, "idle timeout".to_string())
    );
    gateway.wait_for_connections(0).await;
}
