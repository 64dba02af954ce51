//! Deploys without dropping a connection: connection-pinned generations,
//! refused deploys, listener moves, the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use wsgate_proxy::Gateway;
use wsgate_tests::*;

/// The load endpoint with `tagger@{version}` on client messages.
fn tagged(echo: SocketAddr, version: &str) -> String {
    config_text(&tagged_endpoint("/load", echo, version))
}

/// [`tagged`] with the listener on `listen` (a line of `[gateway]`, and any
/// more lines after it).
fn tagged_listening(echo: SocketAddr, version: &str, listen: &str) -> String {
    let config = tagged(echo, version).replace("listen = \"127.0.0.1:0\"", listen);
    assert!(config.contains(listen), "{config}");
    config
}

/// Deploy `tagger@2.0.0` with the listener moved to `address`, which is
/// taken: the refusal's message.
async fn refused_move(gateway: &Gateway, echo: SocketAddr, address: SocketAddr) -> String {
    let moved = tagged_listening(echo, "2.0.0", &format!("listen = \"{address}\""));
    gateway
        .deploy(parse_config(&moved), "test")
        .await
        .unwrap_err()
        .to_string()
}

/// A client that sends bursts of numbered messages until told to stop,
/// checking every echo: right order, nothing lost or duplicated, and the same
/// tagger version for the whole life of the connection.
struct Worker {
    progress: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(String, u64)>,
}

fn spawn_worker(
    gateway: &Gateway,
    name: String,
    stop: Arc<AtomicBool>,
    progressed: Arc<Notify>,
) -> Worker {
    let url = format!("ws://{}/load", gateway.local_addr());
    let progress = Arc::new(AtomicU64::new(0));
    let counter = progress.clone();
    let task = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut version: Option<String> = None;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            const BURST: u64 = 3;
            for i in 0..BURST {
                ws.feed(Message::text(format!("{name}-{}", seq + i)))
                    .await
                    .unwrap();
            }
            ws.flush().await.unwrap();
            for i in 0..BURST {
                let reply = tokio::time::timeout(Duration::from_secs(10), next_text(&mut ws))
                    .await
                    .unwrap_or_else(|_| panic!("{name}: message {} lost", seq + i));
                let (body, tag) = reply.split_once('+').unwrap();
                assert_eq!(body, format!("{name}-{}", seq + i), "{name}: out of order");
                match &version {
                    None => version = Some(tag.to_string()),
                    Some(v) => assert_eq!(v, tag, "{name}: its chain changed mid-connection"),
                }
            }
            seq += BURST;
            counter.store(seq, Ordering::Relaxed);
            progressed.notify_waiters();
        }
        ws.close(None).await.unwrap();
        // The close handshake completes: the connection was not dropped.
        while let Some(message) = ws.next().await {
            assert!(
                matches!(message, Ok(Message::Close(_))),
                "{name}: {message:?} after close"
            );
        }
        (version.unwrap(), seq)
    });
    Worker { progress, task }
}

/// Wait until every worker has answered more than `since[i]` messages.
async fn all_progress(workers: &[Worker], since: &[u64], progressed: &Notify) {
    loop {
        let notified = progressed.notified();
        let done = workers
            .iter()
            .zip(since)
            .all(|(w, s)| w.progress.load(Ordering::Relaxed) > *s);
        if done {
            return;
        }
        notified.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deploys_under_load_drop_nothing_and_pin_each_connection_to_its_generation() {
    init_logging();
    let echo = start_echo().await;
    let gateway = Gateway::start(parse_config(&tagged(echo, "1.0.0")), runtime())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let progressed = Arc::new(Notify::new());
    let mut workers = Vec::new();
    let mut expected = Vec::new();
    for i in 0..8 {
        workers.push(spawn_worker(
            &gateway,
            format!("w{i}"),
            stop.clone(),
            progressed.clone(),
        ));
        expected.push("v1.0.0".to_string());
    }
    let none: Vec<u64> = vec![0; workers.len()];
    all_progress(&workers, &none, &progressed).await;

    for deploy in 0..20 {
        let version = if deploy % 2 == 0 { "2.0.0" } else { "1.0.0" };
        let before: Vec<u64> = workers
            .iter()
            .map(|w| w.progress.load(Ordering::Relaxed))
            .collect();
        let generation = gateway
            .deploy(parse_config(&tagged(echo, version)), "test")
            .await
            .unwrap();
        assert_eq!(generation, deploy + 2);
        // A connection opened after the deploy gets the new version.
        workers.push(spawn_worker(
            &gateway,
            format!("d{deploy}"),
            stop.clone(),
            progressed.clone(),
        ));
        expected.push(format!("v{version}"));
        let mut since = before;
        since.push(0);
        // Every connection, old and new, keeps flowing across the deploy.
        all_progress(&workers, &since, &progressed).await;
    }

    // Old generations stay alive exactly while their connections do.
    let alive = gateway.generations();
    assert_eq!(alive.len(), 21, "{alive:?}");
    assert_eq!(alive.iter().map(|g| g.connections).sum::<u64>(), 28);
    assert!(alive.last().unwrap().current);

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (worker, expected) in workers.into_iter().zip(expected) {
        let (version, answered) = worker.task.await.unwrap();
        assert_eq!(version, expected);
        total += answered;
    }
    assert!(total > 0);
    gateway.wait_for_connections(0).await;
    let alive = gateway.generations();
    assert_eq!(alive.len(), 1, "old generations are freed: {alive:?}");
    assert_eq!(alive[0].id, 21);
}

#[tokio::test]
async fn a_broken_deploy_is_refused_with_every_error_and_traffic_is_untouched() {
    let echo = start_echo().await;
    let gateway = Gateway::start(parse_config(&tagged(echo, "1.0.0")), runtime())
        .await
        .unwrap();
    let mut client = connect(&gateway, "/load").await;
    send_text(&mut client, "before").await;
    assert_eq!(next_text(&mut client).await, "before+v1.0.0");

    // Two problems only a build finds: a plugin without a message hook in a
    // message chain, and a plugin refusing its config.
    let broken = config_text(&endpoint(
        "/load",
        echo,
        "client-messages = [{ plugin = \"static-router@1.0.0\", config = { url = \"ws://x/\" } }]\n\
         upstream-messages = [{ plugin = \"json-transform@1.0.0\", config = { set = { \"no-slash\" = 1 } } }]",
    ));
    let errors = match gateway.deploy(parse_config(&broken), "test").await {
        Ok(generation) => panic!("deployed generation {generation}"),
        Err(wsgate_proxy::DeployError::Config(errors)) => errors.0,
        Err(error) => panic!("refused for another reason: {error}"),
    };
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "endpoint[0].client-messages[0].plugin",
            "endpoint[0].upstream-messages[0].config.set.no-slash"
        ]
    );
    assert_eq!(gateway.generation().id, 1);
    // The open connection and new ones keep the running configuration.
    send_text(&mut client, "after").await;
    assert_eq!(next_text(&mut client).await, "after+v1.0.0");
    let mut fresh = connect(&gateway, "/load").await;
    send_text(&mut fresh, "fresh").await;
    assert_eq!(next_text(&mut fresh).await, "fresh+v1.0.0");
    let history = gateway.deploys();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].generation, None);
    assert!(!history[0].errors.is_empty());
}

#[tokio::test]
async fn a_deploy_that_moves_the_listener_keeps_connections_on_the_old_address() {
    let echo = start_echo().await;
    let gateway = Gateway::start(parse_config(&tagged(echo, "1.0.0")), runtime())
        .await
        .unwrap();
    let old_address = gateway.local_addr();
    let mut client = connect(&gateway, "/load").await;

    let moved = tagged_listening(echo, "2.0.0", "listen = \"127.0.0.2:0\"");
    gateway.deploy(parse_config(&moved), "test").await.unwrap();
    let new_address = gateway.local_addr();
    assert_ne!(old_address, new_address);
    // The connection accepted on the old address keeps working.
    send_text(&mut client, "old").await;
    assert_eq!(next_text(&mut client).await, "old+v1.0.0");
    // The new address serves the new generation; the old one stopped accepting.
    let mut fresh = connect(&gateway, "/load").await;
    send_text(&mut fresh, "new").await;
    assert_eq!(next_text(&mut fresh).await, "new+v2.0.0");
    assert!(tokio::net::TcpStream::connect(old_address).await.is_err());
}

#[tokio::test]
async fn a_listener_address_held_by_another_socket_is_refused_and_the_old_one_keeps_serving() {
    let echo = start_echo().await;
    let gateway = Gateway::start(parse_config(&tagged(echo, "1.0.0")), runtime())
        .await
        .unwrap();
    let old_address = gateway.local_addr();
    // A plain socket (without SO_REUSEPORT) holds the port.
    let held = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let taken = held.local_addr().unwrap();
    let error = refused_move(&gateway, echo, taken).await;
    assert!(
        error.contains("gateway.listen") && error.contains(&taken.to_string()),
        "{error}"
    );
    assert_eq!(gateway.local_addr(), old_address);
    // A socket that set SO_REUSEPORT itself (another gateway on the same
    // address) is refused too, rather than handed a share of connections.
    let sharing = tokio::net::TcpSocket::new_v4().unwrap();
    sharing.set_reuseport(true).unwrap();
    sharing.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let sharing = sharing.listen(16).unwrap();
    let error = refused_move(&gateway, echo, sharing.local_addr().unwrap()).await;
    assert!(error.contains("gateway.listen"), "{error}");
    assert_eq!(gateway.local_addr(), old_address);
    let mut client = connect(&gateway, "/load").await;
    send_text(&mut client, "still").await;
    assert_eq!(next_text(&mut client).await, "still+v1.0.0");
}

#[tokio::test]
async fn three_workers_each_accepting_on_one_port_serve_every_connection() {
    let echo = start_echo().await;
    let config = tagged_listening(echo, "1.0.0", "listen = \"127.0.0.1:0\"\nworkers = 3");
    let gateway = Gateway::start(parse_config(&config), runtime())
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(connect(&gateway, "/load").await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        send_text(client, &format!("c{i}")).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(next_text(client).await, format!("c{i}+v1.0.0"));
    }
    assert_eq!(gateway.active_connections(), 30);
}

#[tokio::test]
async fn the_admin_api_deploys_and_reports_generations_health_and_metrics() {
    let echo = start_echo().await;
    let gateway = Gateway::start(parse_config(&tagged(echo, "1.0.0")), runtime())
        .await
        .unwrap();
    let (admin, stop) = start_admin(&gateway, Some("secret")).await;
    let mut old = connect(&gateway, "/load").await;

    assert_eq!(admin_http(admin, "GET", "/healthz", None, "").await.0, 200);
    assert_eq!(admin_http(admin, "GET", "/readyz", None, "").await.0, 200);
    assert_eq!(
        admin_http(admin, "GET", "/api/generations", None, "")
            .await
            .0,
        401
    );
    assert_eq!(
        admin_http(
            admin,
            "POST",
            "/api/deploy",
            Some("wrong"),
            &tagged(echo, "2.0.0")
        )
        .await
        .0,
        401
    );

    let (status, body) = admin_http(
        admin,
        "POST",
        "/api/deploy",
        Some("secret"),
        &tagged(echo, "2.0.0"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"generation":2}"#));
    let (status, body) = admin_http(
        admin,
        "POST",
        "/api/deploy",
        Some("secret"),
        &tagged(echo, "2.0.0").replace("path = \"/load\"", "path = \"/load\"\nbogus = 1"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let errors: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(errors["errors"][0]["field"], "endpoint[0].bogus");
    assert!(errors["errors"][0]["line"].as_u64().unwrap() > 0);

    let mut new = connect(&gateway, "/load").await;
    send_text(&mut old, "a").await;
    send_text(&mut new, "b").await;
    assert_eq!(next_text(&mut old).await, "a+v1.0.0");
    assert_eq!(next_text(&mut new).await, "b+v2.0.0");

    let (_, body) = admin_http(admin, "GET", "/api/generations", Some("secret"), "").await;
    let generations: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        generations,
        serde_json::json!({"current": 2, "generations": [
            {"id": 1, "connections": 1, "current": false},
            {"id": 2, "connections": 1, "current": true},
        ]})
    );
    let (_, metrics) = admin_http(admin, "GET", "/metrics", Some("secret"), "").await;
    assert!(metrics.contains("wsgate_connections_active 2"), "{metrics}");
    assert!(
        metrics.contains("wsgate_generation_connections{generation=\"1\",current=\"false\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsgate_deploys_total{result=\"refused\"} 1"),
        "{metrics}"
    );

    let shutdown = tokio::spawn(gateway.clone().shutdown());
    assert_eq!(expect_close(&mut old).await.0, 1001);
    assert_eq!(expect_close(&mut new).await.0, 1001);
    shutdown.await.unwrap();
    assert_eq!(admin_http(admin, "GET", "/readyz", None, "").await.0, 503);
    stop.cancel();
}

#[tokio::test]
async fn remote_host_limits_count_connections_across_a_deploy() {
    let echo = start_echo().await;
    let text = config_text(
        &(format!("[[remote-host]]\naddress = \"{echo}\"\nmax-connections = 1\n\n")
            + &endpoint("/load", echo, "")),
    );
    let gateway = Gateway::start(parse_config(&text), runtime())
        .await
        .unwrap();
    let first = connect(&gateway, "/load").await;
    gateway.deploy(parse_config(&text), "test").await.unwrap();
    // The connection on the old generation still holds the only permit.
    assert_eq!(
        try_upgrade(&gateway, "/load", &[]).await.err().unwrap().0,
        503
    );
    drop(first);
    gateway.wait_for_connections(0).await;
    assert!(try_upgrade(&gateway, "/load", &[]).await.is_ok());
}

#[tokio::test]
async fn two_endpoints_pin_two_versions_of_one_plugin_side_by_side() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(endpoint(
            "/v1",
            echo,
            "client-messages = [{ plugin = \"tagger@1.0.0\" }]",
        ) + &endpoint(
            "/v2",
            echo,
            "client-messages = [{ plugin = \"tagger@2.0.0\" }]",
        )),
    )
    .await;
    let mut one = connect(&gateway, "/v1").await;
    let mut two = connect(&gateway, "/v2").await;
    send_text(&mut one, r#"{"n":1}"#).await;
    send_text(&mut two, r#"{"n":2}"#).await;
    assert_eq!(
        next_text(&mut one).await,
        r#"{"n":1,"tagged-by":"tagger@1.0.0"}"#
    );
    assert_eq!(
        next_text(&mut two).await,
        r#"{"n":2,"tagged-by":"tagger@2.0.0"}"#
    );
}

#[tokio::test]
async fn a_drain_stops_being_ready_accepts_through_the_grace_then_closes_each_client_with_1012() {
    let mut upstream = TestUpstream::start().await;
    let config = config_with_gateway(
        "drain-grace = \"4s\"\ndrain-window = \"300ms\"\nshutdown-timeout = \"5s\"",
        &endpoint("/d", upstream.address, ""),
    );
    let gateway = Gateway::start(parse_config(&config), runtime())
        .await
        .unwrap();
    let (admin, _stop) = start_admin(&gateway, None).await;
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&gateway, "/d").await);
        servers.push(upstream.accept().await);
    }
    assert_eq!(admin_http(admin, "GET", "/readyz", None, "").await.0, 200);

    // POST /api/drain: not ready at once, still accepting in the grace.
    let (status, body) = admin_http(admin, "POST", "/api/drain", None, "").await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"phase\":\"grace\""), "{body}");
    assert_eq!(admin_http(admin, "GET", "/readyz", None, "").await.0, 503);
    assert_eq!(
        admin_http(admin, "POST", "/api/drain", None, "").await.0,
        200
    );
    clients.push(connect(&gateway, "/d").await);
    servers.push(upstream.accept().await);
    // A deploy is refused while draining; traffic is untouched.
    let refused = gateway
        .deploy(
            parse_config(&config_text(&endpoint("/d", upstream.address, ""))),
            "test",
        )
        .await;
    assert!(matches!(refused, Err(wsgate_proxy::DeployError::Draining)));

    // Then every client gets 1012, every upstream 1001, the one accepted
    // in the grace too.
    for (client, server) in clients.iter_mut().zip(servers.iter_mut()) {
        let (client_close, server_close) =
            tokio::join!(expect_close(client), expect_close(&mut server.ws));
        assert_eq!(client_close, (1012, "service restart".to_string()));
        assert_eq!(server_close.0, 1001);
    }
    gateway.drain_state().done().await;
    assert_eq!(
        gateway.drain_state().phase(),
        wsgate_proxy::DrainPhase::Done
    );
    assert_eq!(gateway.drain_state().closed(), 4);
    assert_eq!(gateway.active_connections(), 0);
    // The listener is closed: the load balancer's next try goes elsewhere.
    assert!(
        tokio::net::TcpStream::connect(gateway.local_addr())
            .await
            .is_err()
    );
    let metrics = admin_http(admin, "GET", "/metrics", None, "").await.1;
    assert!(metrics.contains("wsgate_drain_phase 3"), "{metrics}");
    assert!(metrics.contains("wsgate_drain_closed_total 4"), "{metrics}");
}
