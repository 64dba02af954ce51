//! permessage-deflate (RFC 7692) end to end, with an independent
//! implementation on the other side: Python's `websockets` as a compressing
//! client and as a compressing upstream. Filters see plain messages either
//! way; the monitor records wire and uncompressed lengths; broken or
//! oversized compressed data closes with 1007 / 1009.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Write as _;
use std::process::Stdio;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use wsgate_monitor::Record;
use wsgate_tests::*;

fn python_script(name: &str) -> String {
    repo_root()
        .join("tests/python")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// JSON that compresses well, with a `password` for json-mask to find.
fn repetitive_json() -> String {
    let items: Vec<String> = (0..400)
        .map(|i| format!(r#"{{"id":{i},"kind":"reading","unit":"celsius"}}"#))
        .collect();
    format!(r#"{{"password":"hunter2","items":[{}]}}"#, items.join(","))
}

#[tokio::test]
async fn a_compressing_client_gets_compressed_answers_and_filters_see_plain_text() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/z",
        upstream.address,
        "monitor = \"full\"\nmonitor-capture = \"64\"\n\
         client-messages = [{ plugin = \"json-mask@1.0.0\", config = { fields = [\"password\"] } }]",
    ))
    .await;
    let (admin, _stop) = start_admin(&gateway, None).await;
    let mut live = gateway.monitor().subscribe();
    let sent = repetitive_json();
    let mut client = Command::new("python3")
        .arg(python_script("deflate_client.py"))
        .arg(format!("ws://{}/z", gateway.local_addr()))
        .arg("1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with websockets (scripts/setup-languages installs it)");
    let mut stdin = client.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(&[&sent]).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    // Its output is read as it comes (a long line would fill the pipe).
    let output = tokio::spawn(client.wait_with_output());

    // The plugin saw (and the upstream gets) the plain text, masked.
    let mut server = upstream.accept().await;
    assert_eq!(server.header("sec-websocket-extensions"), None);
    let received: Value = serde_json::from_str(&next_text(&mut server.ws).await).unwrap();
    let mut expected: Value = serde_json::from_str(&sent).unwrap();
    expected["password"] = Value::from("***");
    assert_eq!(received, expected);
    let answer = "the same words again and again; ".repeat(3125); // 100,000 bytes
    send_text(&mut server.ws, &answer).await;

    // The client's close reaches the upstream, which answers it and, as the
    // server, closes the TCP connection.
    match server.ws.next().await {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("expected the client's close, got {other:?}"),
    }
    server.ws.flush().await.unwrap();
    drop(server);
    let output = output.await.unwrap().unwrap();
    assert!(output.status.success(), "the python client failed");
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let extensions = lines[0]["extensions"].as_str().unwrap();
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
    assert_eq!(lines[1]["message"].as_str().unwrap(), answer);

    // The monitor: both messages crossed the client's wire compressed.
    let key = gateway.monitor().key(1);
    loop {
        if let Record::End(end) = live.recv().await.unwrap().as_ref()
            && end.connection == key
        {
            break;
        }
    }
    let detail = admin_json(admin, &format!("/api/connections/{key}")).await;
    let frames = detail["frames"].as_array().unwrap();
    let text_from = |origin: &str| {
        frames
            .iter()
            .find(|f| f["origin"] == origin && f["opcode"] == 1)
            .unwrap_or_else(|| panic!("no text frame from the {origin}: {frames:?}"))
    };
    for (origin, plain) in [("client", sent.len()), ("server", answer.len())] {
        let frame = text_from(origin);
        assert_eq!(frame["rsv"][0], true, "{frame}");
        assert_eq!(frame["uncompressed_length"], plain as u64, "{frame}");
        assert!(
            frame["length"].as_u64().unwrap() < plain as u64 / 5,
            "{frame}"
        );
        assert_eq!(frame["truncated"], true);
    }
    // The captured payload is the message as the filters saw it, not the
    // compressed bytes.
    let captured = STANDARD
        .decode(text_from("client")["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(captured, sent.as_bytes()[..64]);
    let upgrade = &detail["connection"]["upgrade"];
    let answered = upgrade["response_headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "sec-websocket-extensions")
        .unwrap_or_else(|| panic!("no extensions in the 101: {upgrade}"));
    assert!(
        answered[1]
            .as_str()
            .unwrap()
            .starts_with("permessage-deflate")
    );
}

/// Start the Python upstream; its port is the first line it prints.
async fn python_upstream() -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = Command::new("python3")
        .arg(python_script("deflate_upstream.py"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with websockets (scripts/setup-languages installs it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
    (child, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test]
async fn a_compressing_upstream_is_negotiated_on_its_own() {
    let (_upstream, address) = python_upstream().await;
    let gateway = start_gateway(&endpoint(
        "/u",
        address,
        "permessage-deflate = \"both\"\n\
         upstream-messages = [{ plugin = \"json-mask@1.0.0\", config = { fields = [\"password\"] } }]",
    ))
    .await;
    // This client offers no compression: it gets none.
    let (mut client, response) = try_upgrade(&gateway, "/u", &[]).await.unwrap();
    assert_eq!(response.headers().get("sec-websocket-extensions"), None);
    // The upstream agreed to it with the gateway.
    let hello: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    let agreed = hello["extensions"].as_str().unwrap_or_default();
    assert!(agreed.starts_with("permessage-deflate"), "{hello}");
    // Sent plain, compressed on to the upstream, echoed compressed, inflated
    // for json-mask, and delivered plain.
    let sent = repetitive_json();
    send_text(&mut client, &sent).await;
    let received: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    let mut expected: Value = serde_json::from_str(&sent).unwrap();
    expected["password"] = Value::from("***");
    assert_eq!(received, expected);
    client.close(None).await.unwrap();
    expect_close(&mut client).await;
}

/// Open a raw connection to `path` offering permessage-deflate; the
/// WebSocket over it, after the 101 was checked for the agreement.
async fn raw_compressing_client(gateway: &wsgate_proxy::Gateway, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(gateway.local_addr()).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    tcp
}

/// A masked binary frame with RSV1 (a compressed message) carrying `payload`.
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | 0x40 | 0x02, 0x80 | 127];
    frame.extend((payload.len() as u64).to_be_bytes());
    frame.extend(key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

#[tokio::test]
async fn broken_compressed_data_closes_with_1007() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/z", echo, "")).await;
    let mut tcp = raw_compressing_client(&gateway, "/z").await;
    // Block type 3 does not exist.
    tcp.write_all(&compressed_frame(&[0xff; 8])).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    assert_eq!(expect_close(&mut ws).await.0, 1007);
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn a_compressed_message_over_the_limit_closes_with_1009_without_inflating_it_all() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/z", echo, "max-message-size = \"1MiB\"")).await;
    let mut tcp = raw_compressing_client(&gateway, "/z").await;
    // 64 MiB of zeros deflate to about 64 KiB.
    let mut deflater = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        deflater.write_all(&zeros).unwrap();
    }
    let bomb = deflater.finish().unwrap();
    assert!(bomb.len() < 128 * 1024);
    tcp.write_all(&compressed_frame(&bomb)).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);
    gateway.wait_for_connections(0).await;
}
