//! Property tests over real sockets ("fuzzing" in CI's budget;
//! `scripts/fuzz` runs many more cases): arbitrary upgrade requests always
//! get an HTTP answer from the expected set, and arbitrary message traffic
//! through a filter chain always comes back intact; the gateway stays
//! healthy throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

/// A request head: a request line and headers, each part sometimes wrong.
fn request_head() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        Just("GET"),
        Just("GET"),
        Just("POST"),
        Just("get"),
        Just("OPTIONS"),
        Just("G\tT")
    ];
    let path = prop_oneof![
        Just("/ws".to_string()),
        Just("/ws?room=1&x=%zz".to_string()),
        Just("/nope".to_string()),
        Just("/ws/../ws".to_string()),
        "/[ -~&&[^ ]]{0,40}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0")
    ];
    let header = prop_oneof![
        Just("Upgrade: websocket".to_string()),
        Just("Upgrade: WebSocket, h2c".to_string()),
        Just("Connection: Upgrade".to_string()),
        Just("Connection: keep-alive, upgrade".to_string()),
        Just("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        Just("Sec-WebSocket-Key: short".to_string()),
        Just("Sec-WebSocket-Version: 13".to_string()),
        Just("Sec-WebSocket-Version: 8".to_string()),
        Just("Sec-WebSocket-Protocol: chat, , superchat".to_string()),
        Just("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits".to_string()),
        Just("Origin: https://example.com".to_string()),
        Just("Content-Length: 0".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        "[A-Za-z-]{1,20}: [ -~]{0,60}",
    ];
    (
        method,
        path,
        version,
        prop::collection::vec(header, 0..10),
        any::<bool>(),
    )
        .prop_map(|(method, path, version, headers, host)| {
            let mut head = format!("{method} {path} {version}\r\n");
            if host {
                head += "Host: gateway\r\n";
            }
            for header in headers {
                head += &header;
                head += "\r\n";
            }
            head + "\r\n"
        })
}

/// Send `head` and read the status line's code (`None`: closed without one).
async fn status_of(address: SocketAddr, head: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(head.as_bytes()).await;
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    // Read until the head of the answer is in (a 101 keeps the socket open).
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("no answer within 15 s to:\n{head}"),
        }
    }
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

#[test]
fn arbitrary_upgrade_requests_get_an_expected_answer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let gateway = runtime.block_on(async {
        let echo = start_echo().await;
        start_gateway(&endpoint(
            "/ws",
            echo,
            "client-messages = [{ plugin = \"passthrough@1.0.0\" }]",
        ))
        .await
    });
    let address = gateway.local_addr();
    proptest!(|(head in request_head())| {
        let status = runtime.block_on(status_of(address, &head));
        prop_assert!(
            matches!(status, Some(101 | 400 | 404 | 426 | 431 | 505) | None),
            "{status:?} for:\n{head}"
        );
    });
    runtime.block_on(async {
        let mut client = connect(&gateway, "/ws").await;
        send_text(&mut client, "still serving").await;
        assert_eq!(next_text(&mut client).await, "still serving");
    });
}

/// A message a client may send.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        "[ -~]{0,200}".prop_map(Message::text),
        any::<String>().prop_map(Message::text),
        prop::collection::vec(any::<u8>(), 0..3000).prop_map(Message::binary),
        "\\{\"password\": \"[a-z]{0,8}\", \"n\": [1-9][0-9]{0,3}\\}".prop_map(Message::text),
    ]
}

#[test]
fn arbitrary_messages_through_a_filter_chain_come_back_as_filtered() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let gateway = runtime.block_on(async {
        let echo = start_echo().await;
        start_gateway(&endpoint(
            "/ws",
            echo,
            "client-messages = [{ plugin = \"passthrough@1.0.0\" }, { plugin = \"json-mask@1.0.0\", config = { fields = [\"password\"] } }]\n\
             upstream-messages = [{ plugin = \"passthrough@1.0.0\" }]",
        ))
        .await
    });
    proptest!(|(messages in prop::collection::vec(message(), 1..16))| {
        runtime.block_on(async {
            let mut client = connect(&gateway, "/ws").await;
            for message in &messages {
                client.send(message.clone()).await.unwrap();
            }
            for message in &messages {
                let back = next_data(&mut client).await;
                match (message, &back) {
                    (Message::Text(sent), Message::Text(got))
                        if serde_json::from_str::<serde_json::Value>(sent)
                            .is_ok_and(|v| v.get("password").is_some()) =>
                    {
                        let sent: serde_json::Value = serde_json::from_str(sent).unwrap();
                        let got: serde_json::Value = serde_json::from_str(got).unwrap();
                        assert_eq!(got["password"], "***");
                        assert_eq!(got["n"], sent["n"]);
                    }
                    _ => assert_eq!(&back, message),
                }
            }
        });
    });
}
