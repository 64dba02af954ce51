//! The proxy over real sockets: the seed's scenario, the close handshake,
//! abrupt disconnects, expiry, limits, fragmentation, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use wsgate_tests::*;

#[tokio::test]
async fn the_seed_scenario_client_gateway_echo_and_back_transformed() {
    let echo = start_echo().await;
    let gateway = start_gateway(&(endpoint("/echo", echo, "") + "[[endpoint.upstream-messages]]\nplugin = \"json-transform@1.0.0\"\nconfig = { set = { \"/via\" = \"wsgate\", \"/endpoint\" = \"${endpoint}\" }, remove = [\"/secret\"] }\n"))
    .await;
    let mut client = connect(&gateway, "/echo").await;
    send_text(&mut client, r#"{"hello":"world","secret":"s3cr3t"}"#).await;
    let reply: serde_json::Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"hello": "world", "via": "wsgate", "endpoint": "/echo"})
    );
    // Binary passes untouched (non-json = pass by default).
    client
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut client).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    client.close(None).await.unwrap();
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn the_client_gets_the_upstreams_chosen_subprotocol() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/echo", echo, "")).await;
    let (_, response) = try_upgrade(
        &gateway,
        "/echo",
        &[("sec-websocket-protocol", "chat.v2, chat.v1")],
    )
    .await
    .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
}

/// With no filters, and through `passthrough` both ways (a close a plugin
/// forwards goes on as it came).
#[tokio::test]
async fn close_codes_travel_both_ways() {
    let passthrough = "client-messages = [{ plugin = \"passthrough@1.0.0\" }]\n\
                       upstream-messages = [{ plugin = \"passthrough@1.0.0\" }]";
    for chains in ["", passthrough] {
        let mut upstream = TestUpstream::start().await;
        let gateway = start_gateway(&endpoint("/ws", upstream.address, chains)).await;

        // Client closes: the upstream sees the client's code and reason.
        let mut client = connect(&gateway, "/ws").await;
        let mut server = upstream.accept().await;
        client
            .close(Some(CloseFrame {
                code: CloseCode::from(4000),
                reason: "client done".into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            expect_close(&mut server.ws).await,
            (4000, "client done".into()),
            "{chains}"
        );
        gateway.wait_for_connections(0).await;

        // Upstream closes: the client sees the upstream's code and reason.
        let mut client = connect(&gateway, "/ws").await;
        let mut server = upstream.accept().await;
        server
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "server done".into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            expect_close(&mut client).await,
            (4001, "server done".into()),
            "{chains}"
        );
        gateway.wait_for_connections(0).await;
    }
}

#[tokio::test]
async fn a_vanished_client_closes_the_upstream_and_nothing_leaks() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "")).await;
    let client = connect(&gateway, "/ws").await;
    let mut server = upstream.accept().await;
    assert_eq!(gateway.active_connections(), 1);
    drop(client); // TCP closed, no close frame
    assert_eq!(expect_close(&mut server.ws).await.0, 1001);
    gateway.wait_for_connections(0).await;
    let endpoint = gateway.generation().endpoints[0].clone();
    assert_eq!(endpoint.active_connections(), 0);
}

#[tokio::test]
async fn a_vanished_upstream_closes_the_client_and_nothing_leaks() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "")).await;
    let mut client = connect(&gateway, "/ws").await;
    let server = upstream.accept().await;
    drop(server);
    assert_eq!(expect_close(&mut client).await.0, 1001);
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn messages_flow_both_ways_with_pings() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "")).await;
    let mut client = connect(&gateway, "/ws").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, "to server").await;
    assert_eq!(next_text(&mut server.ws).await, "to server");
    send_text(&mut server.ws, "to client").await;
    assert_eq!(next_text(&mut client).await, "to client");
    client
        .send(Message::Ping(b"p1".to_vec().into()))
        .await
        .unwrap();
    // The upstream sees the client's ping.
    match server.ws.next().await.unwrap().unwrap() {
        Message::Ping(data) => assert_eq!(&data[..], b"p1"),
        other => panic!("unexpected {other:?}"),
    }
    // And the client gets one pong: the gateway's. The upstream's answer to
    // the forwarded ping stops at the gateway, so the next message the
    // client sees after the pong is the upstream's text.
    match client.next().await.unwrap().unwrap() {
        Message::Pong(data) => assert_eq!(&data[..], b"p1"),
        other => panic!("unexpected {other:?}"),
    }
    send_text(&mut server.ws, "after the ping").await;
    match client.next().await.unwrap().unwrap() {
        Message::Text(text) => assert_eq!(text.as_str(), "after the ping"),
        other => panic!("expected the text, got {other:?}"),
    }
}

#[tokio::test]
async fn upgrade_headers_reach_the_upstream_and_handshake_headers_do_not() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "")).await;
    let (_client, _) = try_upgrade(
        &gateway,
        "/ws?room=1",
        &[
            ("authorization", "Bearer abc"),
            ("user-agent", "test-client/1"),
        ],
    )
    .await
    .unwrap();
    let server = upstream.accept().await;
    assert_eq!(server.uri, "/");
    assert_eq!(server.header("authorization"), Some("Bearer abc"));
    assert_eq!(server.header("user-agent"), Some("test-client/1"));
    assert_eq!(server.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(server.header("x-forwarded-proto"), Some("ws"));
    // The gateway made its own handshake with its own key.
    assert_eq!(server.header("upgrade"), Some("websocket"));
    assert_eq!(server.header("sec-websocket-extensions"), None);
}

#[tokio::test]
async fn connections_expire_with_a_proper_close_on_both_sides() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "expire = \"1s\"")).await;
    let mut client = connect(&gateway, "/ws").await;
    let mut server = upstream.accept().await;
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close, (1001, "connection expired".to_string()));
    assert_eq!(server_close.0, 1001);
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn a_message_over_the_endpoint_limit_closes_with_1009() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/ws",
        upstream.address,
        "max-message-size = \"1KiB\"",
    ))
    .await;
    let mut client = connect(&gateway, "/ws").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, &"a".repeat(1000)).await;
    assert_eq!(next_text(&mut server.ws).await.len(), 1000);
    send_text(&mut client, &"a".repeat(2000)).await;
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close.0, 1009);
    assert_eq!(server_close.0, 1001);
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_before_plugins_see_them() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(endpoint("/echo", echo, "")
            + "[[endpoint.client-messages]]\nplugin = \"test-verdicts@0.1.0\"\nconfig = { tag = \"+seen\" }\n"),
    )
    .await;
    let mut client = connect(&gateway, "/echo").await;
    let first = FrameHeader {
        is_final: false,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let middle = FrameHeader {
        is_final: false,
        opcode: OpCode::Data(Data::Continue),
        ..FrameHeader::default()
    };
    let last = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Continue),
        ..FrameHeader::default()
    };
    client
        .send(Message::Frame(Frame::from_payload(
            first,
            b"hel".to_vec().into(),
        )))
        .await
        .unwrap();
    client
        .send(Message::Frame(Frame::from_payload(
            middle,
            b"lo wo".to_vec().into(),
        )))
        .await
        .unwrap();
    client
        .send(Message::Frame(Frame::from_payload(
            last,
            b"rld".to_vec().into(),
        )))
        .await
        .unwrap();
    assert_eq!(next_text(&mut client).await, "hello world+seen");
}

#[tokio::test]
async fn invalid_utf8_from_the_client_closes_it_with_1007() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "")).await;
    let mut client = connect(&gateway, "/ws").await;
    let mut server = upstream.accept().await;
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    client
        .send(Message::Frame(Frame::from_payload(
            header,
            vec![0xff, 0xfe].into(),
        )))
        .await
        .unwrap();
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close.0, 1007);
    assert_eq!(server_close.0, 1001);
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_upstreams_with_1000() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint("/ws", upstream.address, "")).await;
    let mut client = connect(&gateway, "/ws").await;
    let mut server = upstream.accept().await;
    let shutdown = tokio::spawn(gateway.shutdown());
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close.0, 1001);
    assert_eq!(server_close.0, 1000);
    // Answer the closes so the drain completes.
    drop(client);
    drop(server);
    shutdown.await.unwrap();
}
