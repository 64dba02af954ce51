//! Micro-benchmarks: one plugin call, and a message round trip through the
//! gateway against the same round trip straight to the echo server (the
//! baseline measured in the same run).
//!
//! `cargo bench -p wsgate-tests --bench gateway`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_runtime::{CallContext, ConnectionInfo, Direction, Message};
use wsgate_tests::*;

fn plugin_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(start_echo());
    let gateway = runtime.block_on(start_gateway(&endpoint(
        "/p",
        echo,
        "client-messages = [{ plugin = \"passthrough@1.0.0\" }]",
    )));
    let generation = gateway.generation();
    let pool = generation.pools[0].clone();
    let mut context = CallContext::new(Arc::new(ConnectionInfo::default()));
    let mut group = c.benchmark_group("plugin_call/passthrough");
    for size in [32usize, 64 * 1024] {
        let message = Message::Binary(vec![7u8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &message, |b, message| {
            b.iter(|| {
                pool.on_message(&mut context, Direction::ClientToServer, message)
                    .unwrap()
            });
        });
    }
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let echo = runtime.block_on(start_echo());
    let gateway = runtime.block_on(start_gateway(
        &(endpoint("/plain", echo, "")
            + &endpoint(
                "/filtered",
                echo,
                "client-messages = [{ plugin = \"passthrough@1.0.0\" }]\n\
                 server-messages = [{ plugin = \"passthrough@1.0.0\" }]",
            )),
    ));
    let targets = [
        ("direct_to_echo", format!("ws://{echo}/")),
        (
            "gateway_no_filters",
            format!("ws://{}/plain", gateway.local_addr()),
        ),
        (
            "gateway_passthrough_both_ways",
            format!("ws://{}/filtered", gateway.local_addr()),
        ),
    ];
    let mut group = c.benchmark_group("round_trip_32B");
    for (name, url) in targets {
        let (client, _) = runtime
            .block_on(tokio_tungstenite::connect_async(url))
            .unwrap();
        let client = tokio::sync::Mutex::new(client);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let mut client = client.lock().await;
                client.send(WsMessage::binary(vec![1u8; 32])).await.unwrap();
                client.next().await.unwrap().unwrap()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, plugin_call, round_trip);
criterion_main!(benches);
