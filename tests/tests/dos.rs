//! Denial of service: what a client without credentials, or a caller of
//! the admin listener, can make the gateway hold, and that each bound
//! answers as documented (`docs/hardening.md`) while healthy clients are
//! still served. Real sockets; every wait is on an event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Error as WsError;
use wsgate_proxy::Gateway;
use wsgate_tests::*;

/// A loopback address other than 127.0.0.1: another client address.
const OTHER_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A TCP connection to `to` from the address `from`.
async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Upgrade to `path` from the address `from`; the echo of one message.
async fn echo_from(from: IpAddr, gateway: &Gateway, path: &str) -> String {
    let stream = tcp_from(from, gateway.local_addr()).await;
    let url = format!("ws://{}{path}", gateway.local_addr());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap_or_else(|e| panic!("upgrade from {from}: {e}"));
    send_text(&mut ws, "still served").await;
    let echoed = next_text(&mut ws).await;
    drop(ws);
    echoed
}

/// Everything the peer sends until it closes.
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    // A reset after a close counts as the end too.
    let _ = stream.read_to_end(&mut received).await;
    received
}

/// Connect from `from` and expect the connection closed without a byte.
async fn closed_at_accept(from: IpAddr, to: SocketAddr) {
    let mut stream = tcp_from(from, to).await;
    let received = read_all(&mut stream).await;
    assert!(
        received.is_empty(),
        "expected a close, got {:?}",
        String::from_utf8_lossy(&received)
    );
}

/// An upstream that accepts TCP connections and hands them to the test,
/// never answering: an upgrade routed to it stays in its upstream connect.
struct HeldUpstream {
    address: SocketAddr,
    accepted: mpsc::UnboundedReceiver<TcpStream>,
}

impl HeldUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if sender.send(stream).is_err() {
                    return;
                }
            }
        });
        Self { address, accepted }
    }

    /// The next connection the gateway opens (its upgrade is now pending).
    async fn accept(&mut self) -> TcpStream {
        self.accepted.recv().await.unwrap()
    }
}

/// A gateway with `/held` (routed to `held`, a one-hour connect timeout)
/// and `/echo`, with extra `[gateway]` lines.
async fn gateway_with(gateway_lines: &str, held: SocketAddr) -> Gateway {
    let echo = start_echo().await;
    let body = format!(
        "[[remote-host]]\naddress = \"{held}\"\nconnect-timeout = \"1h\"\n\n{}{}",
        endpoint("/held", held, ""),
        endpoint("/echo", echo, ""),
    );
    init_logging();
    Gateway::start(
        parse_config(&config_with_gateway(gateway_lines, &body)),
        runtime(),
    )
    .await
    .unwrap()
}

/// Start `count` upgrades to `/held` from 127.0.0.1 and wait until the
/// gateway's upstream connect of each is under way; the held upstream
/// connections and the clients' outcomes.
async fn hold_upgrades(
    gateway: &Gateway,
    held: &mut HeldUpstream,
    count: usize,
) -> (
    Vec<TcpStream>,
    Vec<tokio::task::JoinHandle<Result<(), (u16, String)>>>,
) {
    let mut clients = Vec::new();
    let mut upstreams = Vec::new();
    for _ in 0..count {
        let gateway = gateway.clone();
        clients.push(tokio::spawn(async move {
            try_upgrade(&gateway, "/held", &[]).await.map(drop)
        }));
        upstreams.push(held.accept().await);
    }
    (upstreams, clients)
}

/// Let the held upgrades fail (the upstream closes): each client gets 502.
async fn release(
    upstreams: Vec<TcpStream>,
    clients: Vec<tokio::task::JoinHandle<Result<(), (u16, String)>>>,
) {
    drop(upstreams);
    for client in clients {
        let (status, _) = client.await.unwrap().err().unwrap();
        assert_eq!(status, 502);
    }
}

fn refused(gateway: &Gateway, limit: &str) -> u64 {
    gateway
        .pending_refusals()
        .into_iter()
        .find(|(key, _)| *key == limit)
        .map_or(0, |(_, count)| count)
}

#[tokio::test]
async fn pending_upgrades_per_address_are_bounded_and_other_addresses_are_served() {
    let mut held = HeldUpstream::start().await;
    let gateway = gateway_with("max-pending-upgrades-per-ip = 2\n", held.address).await;

    // Two upgrades from 127.0.0.1 wait on their upstream connect.
    let (upstreams, clients) = hold_upgrades(&gateway, &mut held, 2).await;
    assert_eq!(gateway.pending_upgrades(), 2);

    // A third connection from the same address is closed at accept,
    // before a byte is read; another address is served meanwhile.
    closed_at_accept(CLIENT, gateway.local_addr()).await;
    assert_eq!(refused(&gateway, "max-pending-upgrades-per-ip"), 1);
    assert_eq!(
        echo_from(OTHER_CLIENT, &gateway, "/echo").await,
        "still served"
    );
    assert_eq!(gateway.pending_upgrades(), 2);

    // Answered (502 when the upstream goes away), they give their places
    // back and the address is served again.
    release(upstreams, clients).await;
    assert_eq!(gateway.pending_upgrades(), 0);
    assert_eq!(echo_from(CLIENT, &gateway, "/echo").await, "still served");
    assert_eq!(refused(&gateway, "max-pending-upgrades"), 0);
}

#[tokio::test]
async fn pending_upgrades_are_bounded_for_all_addresses_together() {
    let mut held = HeldUpstream::start().await;
    let gateway = gateway_with("max-pending-upgrades = 2\n", held.address).await;

    let (upstreams, clients) = hold_upgrades(&gateway, &mut held, 2).await;
    closed_at_accept(OTHER_CLIENT, gateway.local_addr()).await;
    assert_eq!(refused(&gateway, "max-pending-upgrades"), 1);

    release(upstreams, clients).await;
    assert_eq!(
        echo_from(OTHER_CLIENT, &gateway, "/echo").await,
        "still served"
    );
}

#[tokio::test]
async fn a_connection_carries_one_request_and_its_body_is_not_read() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/echo", echo, "")).await;

    // Pipelined requests to a path without an endpoint: one answer, then
    // the connection closes.
    let mut stream = TcpStream::connect(gateway.local_addr()).await.unwrap();
    let one = "GET /nowhere HTTP/1.1\r\nhost: gw\r\n\r\n";
    stream.write_all(one.repeat(3).as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert!(response.contains("connection: close"), "{response}");

    // A request announcing a gigabyte body is answered without waiting for it.
    let mut stream = TcpStream::connect(gateway.local_addr()).await.unwrap();
    let head = "POST /nowhere HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000000\r\n\r\n";
    stream
        .write_all(format!("{head}{}", "x".repeat(100)).as_bytes())
        .await
        .unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    assert_eq!(echo_from(CLIENT, &gateway, "/echo").await, "still served");
}

#[tokio::test]
async fn a_head_just_over_max_header_bytes_gets_431() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint("/echo", echo, "")).await;
    // 16 KiB by default; the whole head is written at once.
    let filler = "a".repeat(17 << 10);
    let request = format!(
        "GET /echo HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         x-filler: {filler}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(gateway.local_addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(echo_from(CLIENT, &gateway, "/echo").await, "still served");
}

#[tokio::test]
async fn too_many_header_fields_get_431() {
    let echo = start_echo().await;
    let body = endpoint("/echo", echo, "");
    init_logging();
    let gateway = Gateway::start(
        parse_config(&config_with_gateway("max-headers = 24\n", &body)),
        runtime(),
    )
    .await
    .unwrap();

    let fields: String = (0..30).map(|i| format!("x-field-{i}: {i}\r\n")).collect();
    let mut stream = TcpStream::connect(gateway.local_addr()).await.unwrap();
    let request = format!(
        "GET /echo HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{fields}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    // Within the count, an upgrade with extra fields is served.
    let names: Vec<String> = (0..12).map(|i| format!("x-field-{i}")).collect();
    let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (mut ws, _) = try_upgrade(&gateway, "/echo", &extra).await.unwrap();
    send_text(&mut ws, "fields").await;
    assert_eq!(next_text(&mut ws).await, "fields");
}

/// A gateway with an `[admin]` table of `admin_lines` (and extra
/// `[gateway]` lines), its admin API served on port 0.
async fn admin_with(gateway_lines: &str, admin_lines: &str) -> (Gateway, SocketAddr) {
    let echo = start_echo().await;
    let body = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n{admin_lines}\n",
        endpoint("/echo", echo, "")
    );
    init_logging();
    let gateway = Gateway::start(
        parse_config(&config_with_gateway(gateway_lines, &body)),
        runtime(),
    )
    .await
    .unwrap();
    let (address, _stop) = start_admin(&gateway, None).await;
    (gateway, address)
}

/// Send a keep-alive `GET /healthz` and read its whole answer.
async fn healthz_keep_alive(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !received.ends_with(b"ok\n") {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn admin_connections_are_bounded_and_given_back_when_they_close() {
    let (_gateway, admin) = admin_with("", "max-connections = 2").await;

    let mut first = TcpStream::connect(admin).await.unwrap();
    let mut second = TcpStream::connect(admin).await.unwrap();
    healthz_keep_alive(&mut first).await;
    healthz_keep_alive(&mut second).await;

    closed_at_accept(CLIENT, admin).await;

    // One closes; its place is back before it sees the close.
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8(read_all(&mut first).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (status, body) = admin_http(admin, "GET", "/readyz", None, "").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (_, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains("wsgate_admin_refused_total{limit=\"max-connections\"} 1\n"),
        "{metrics}"
    );
    drop(second);
}

#[tokio::test]
async fn an_idle_admin_connection_is_closed_after_the_handshake_timeout() {
    let (_gateway, admin) = admin_with("handshake-timeout = \"200ms\"\n", "").await;

    // Nothing sent: closed.
    let mut silent = TcpStream::connect(admin).await.unwrap();
    assert!(read_all(&mut silent).await.is_empty());

    // Idle after one answer on a keep-alive connection: closed too.
    let mut idle = TcpStream::connect(admin).await.unwrap();
    healthz_keep_alive(&mut idle).await;
    assert!(read_all(&mut idle).await.is_empty());
}

#[tokio::test]
async fn admin_live_tails_are_bounded_with_503() {
    let (_gateway, admin) = admin_with("", "max-tails = 1").await;
    let url = format!("ws://{admin}/api/tail");

    let (mut first, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(WsError::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // The rest of the API is still served.
    let generations = admin_json(admin, "/api/generations").await;
    assert_eq!(generations["current"], 1);
    let (_, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
    for line in [
        "wsgate_admin_tails 1\n",
        "wsgate_admin_refused_total{limit=\"max-tails\"} 1\n",
        "wsgate_pending_upgrades 0\n",
        "wsgate_pending_refused_total{limit=\"max-pending-upgrades\"} 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The tail's place is back before its close reply arrives.
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut first).await {}
    let (second, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    drop(second);
}

#[tokio::test]
async fn an_admin_request_head_over_64_kib_gets_431() {
    let (_gateway, admin) = admin_with("", "").await;
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let filler = "a".repeat(70 << 10);
    let request = format!("GET /healthz HTTP/1.1\r\nhost: admin\r\nx-filler: {filler}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    let (status, _) = admin_http(admin, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_deploy_body_over_one_mebibyte_gets_413() {
    let (gateway, admin) = admin_with("", "").await;
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let body = "#".repeat((1 << 20) + 1);
    let request = format!(
        "POST /api/deploy HTTP/1.1\r\nhost: admin\r\ncontent-length: {}\r\n\r\n{body}",
        (2 << 20)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = String::from_utf8(read_all(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(gateway.generation().id, 1);
}
