//! The gateway's memory while a peer never reads: bounded buffers, then a
//! close with a clear code. Alone in its test binary, so the process's peak
//! resident size (VmHWM) is this test's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_grow_the_gateway() {
    const MESSAGE: usize = 1 << 20;
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/firehose",
        upstream.address,
        "send-timeout = \"1s\"\nmax-message-size = \"1MiB\"\n\
         upstream-messages = [{ plugin = \"passthrough@1.0.0\" }]",
    ))
    .await;
    // Warm up: one message each way through the same path, so what the
    // first message allocates (plugin instance, buffers) is in the baseline.
    let mut deaf = connect(&gateway, "/firehose").await;
    let mut server = upstream.accept().await;
    server
        .ws
        .send(Message::binary(vec![1u8; MESSAGE]))
        .await
        .unwrap();
    assert_eq!(next_data(&mut deaf).await.len(), MESSAGE);
    let before = peak_rss();

    // From now on the client reads nothing. The upstream sends 1 MiB
    // messages as fast as the gateway takes them, until it is closed.
    let (close, sent) = flood_until_closed(server.ws, MESSAGE).await;
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "client not reading");
    gateway.wait_for_connections(0).await;
    let grown = peak_rss().saturating_sub(before);
    eprintln!(
        "a client that never reads: upstream got {sent} MiB in before the gateway stopped taking it; \
         peak RSS grew {:.1} MiB",
        grown as f64 / f64::from(1 << 20)
    );
    // Without backpressure a second of loopback would move gigabytes; with
    // it, the sockets' buffers and a message or two in flight.
    assert!(sent < 64, "the gateway kept taking messages: {sent} MiB");
    assert!(grown < 32 << 20, "peak RSS grew {grown} bytes");
    drop(deaf);
}
