//! Each plugin, and every verdict of the contract, through the real gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

#[tokio::test]
async fn dynamic_router_routes_by_host_segment_header_and_query() {
    let mut a = TestUpstream::start().await;
    let mut b = TestUpstream::start().await;
    let (a_url, b_url) = (
        format!("ws://{}/a", a.address),
        format!("ws://{}/b", b.address),
    );
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/route\"\nmatch = \"prefix\"\n\
         allowed-upstreams = [\"ws://{}\", \"ws://{}\"]\n\
         [[endpoint.upgrade]]\nplugin = \"dynamic-router@1.0.0\"\n\
         config = {{ rules = [\
            {{ host = \"b.example\", url = \"{b_url}\" }},\
            {{ segment = 1, equals = \"bee\", url = \"{b_url}\" }},\
            {{ header = \"x-region\", equals = \"b\", url = \"{b_url}\" }},\
            {{ query = \"to\", equals = \"b\", url = \"{b_url}\" }},\
            {{ segment = 1, equals = \"ay\", url = \"{a_url}\" }}\
         ] }}\n",
        a.address, b.address
    ))
    .await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("/route", &[("host", "B.example:8080")]),
        ("/route/bee", &[]),
        ("/route", &[("x-region", "b")]),
        ("/route?to=b", &[]),
    ];
    for (path, headers) in cases {
        let _client = try_upgrade(&gateway, path, headers).await.unwrap();
        assert_eq!(b.accept().await.uri, "/b", "{path} {headers:?}");
    }
    let _client = try_upgrade(&gateway, "/route/ay", &[]).await.unwrap();
    assert_eq!(a.accept().await.uri, "/a");
    let (status, body) = try_upgrade(&gateway, "/route/none", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (404, "no route matches this request\n")
    );
}

#[tokio::test]
async fn connect_to_url_builds_the_upstream_from_the_request() {
    let mut upstream = TestUpstream::start().await;
    let port = upstream.address.port();
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/rooms\"\nmatch = \"prefix\"\n\
         allowed-upstreams = [\"ws://127.0.0.1:{port}/chat\"]\n\
         [[endpoint.upgrade]]\nplugin = \"connect-to-url@1.0.0\"\n\
         config = {{ url = \"ws://127.0.0.1:{port}/chat/${{segment.1}}?user=${{query.user}}\", headers = {{ x-room = \"${{segment.1}}\", x-tenant = \"${{header.x-tenant}}\" }} }}\n"
    ))
    .await;
    let _client = try_upgrade(&gateway, "/rooms/lobby?user=ann", &[("x-tenant", "acme")])
        .await
        .unwrap();
    let server = upstream.accept().await;
    assert_eq!(server.uri, "/chat/lobby?user=ann");
    assert_eq!(server.header("x-room"), Some("lobby"));
    assert_eq!(server.header("x-tenant"), Some("acme"));

    // A missing selector, and a value that would change the URL's shape.
    let (status, body) = try_upgrade(&gateway, "/rooms/lobby", &[("x-tenant", "acme")])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("query.user"), "{body}");
    let refused = try_upgrade(
        &gateway,
        "/rooms/lobby?user=a%2F..%2Fadmin",
        &[("x-tenant", "t")],
    )
    .await;
    assert_eq!(refused.err().unwrap().0, 400);
}

#[tokio::test]
async fn connect_to_url_can_route_by_host_within_allowed_upstreams() {
    let echo = start_echo().await;
    let port = echo.port();
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/h\"\nallowed-upstreams = [\"ws://localhost:{port}\"]\n\
         upgrade = [{{ plugin = \"connect-to-url@1.0.0\", config = {{ url = \"ws://${{host}}:{port}/\" }} }}]\n"
    ))
    .await;
    // Host names the upstream: allowed, and proxied.
    let mut client = try_upgrade(&gateway, "/h", &[("host", "localhost")])
        .await
        .unwrap()
        .0;
    send_text(&mut client, "via host").await;
    assert_eq!(next_text(&mut client).await, "via host");
    // A host outside allowed-upstreams is refused, not connected.
    let refused = try_upgrade(&gateway, "/h", &[("host", "127.0.0.2")]).await;
    assert_eq!(refused.err().unwrap().0, 403);
}

#[tokio::test]
async fn json_transform_sets_removes_renames_and_handles_non_json() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/ws",
        upstream.address,
        "client-messages = [{ plugin = \"json-transform@1.0.0\", config = { set = { \"/meta/user\" = \"${header.x-user}\", \"/n\" = 1 }, remove = [\"/password\"], rename = { \"/msg\" = \"/text\" }, non-json = \"drop\" } }]",
    ))
    .await;
    let (mut client, _) = try_upgrade(&gateway, "/ws", &[("x-user", "ann")])
        .await
        .unwrap();
    let mut server = upstream.accept().await;
    send_text(&mut client, r#"{"msg":"hi","password":"x"}"#).await;
    let seen: serde_json::Value = serde_json::from_str(&next_text(&mut server.ws).await).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({"text": "hi", "meta": {"user": "ann"}, "n": 1})
    );
    // Non-JSON is dropped as configured; the next JSON message still flows.
    send_text(&mut client, "plain text").await;
    client.send(Message::binary(vec![1u8, 2])).await.unwrap();
    send_text(&mut client, "{}").await;
    let seen: serde_json::Value = serde_json::from_str(&next_text(&mut server.ws).await).unwrap();
    assert_eq!(seen, serde_json::json!({"meta": {"user": "ann"}, "n": 1}));
}

fn verdicts_endpoint(upstream: std::net::SocketAddr) -> String {
    endpoint(
        "/v",
        upstream,
        "client-messages = [{ plugin = \"test-verdicts@0.1.0\", config = { tag = \"+c\" } }]\n\
         upstream-messages = [{ plugin = \"test-verdicts@0.1.0\", config = { tag = \"+s\" } }]",
    )
}

#[tokio::test]
async fn message_verdicts_forward_drop_reply_inject_and_close() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&verdicts_endpoint(upstream.address)).await;
    let mut client = connect(&gateway, "/v").await;
    let mut server = upstream.accept().await;

    send_text(&mut client, "hello").await;
    assert_eq!(next_text(&mut server.ws).await, "hello+c");
    send_text(&mut server.ws, "hi").await;
    assert_eq!(next_text(&mut client).await, "hi+s");

    // Drop: nothing arrives; the next message proves order is kept.
    send_text(&mut client, "drop").await;
    // Reply: goes back to the sender only.
    send_text(&mut client, "reply:pong").await;
    assert_eq!(next_text(&mut client).await, "pong");
    // Inject: one message becomes three, in order.
    send_text(&mut client, "inject:3:x").await;
    for i in 0..3 {
        assert_eq!(next_text(&mut server.ws).await, format!("x#{i}"));
    }
    // Close: both sides, with the plugin's code and reason.
    send_text(&mut client, "close:4403:not allowed").await;
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close, (4403, "not allowed".to_string()));
    assert_eq!(server_close, (4403, "not allowed".to_string()));
    gateway.wait_for_connections(0).await;
}

/// A chain of two steps, where each step may make several messages of
/// one: each output of the first goes once through the second, in order,
/// and what the second answers with a reply is not forwarded.
#[tokio::test]
async fn each_message_a_step_makes_goes_through_the_next_step_in_order() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/v",
        upstream.address,
        "client-messages = [{ plugin = \"test-verdicts@0.1.0\", config = { tag = \"+a\" } }, \
         { plugin = \"test-verdicts@0.1.0\", config = { tag = \"+b\" } }]",
    ))
    .await;
    let mut client = connect(&gateway, "/v").await;
    let mut server = upstream.accept().await;

    // Both steps change it.
    send_text(&mut client, "hello").await;
    assert_eq!(next_text(&mut server.ws).await, "hello+a+b");
    // The first step makes three; the second changes each.
    send_text(&mut client, "inject:3:x").await;
    for i in 0..3 {
        assert_eq!(next_text(&mut server.ws).await, format!("x#{i}+b"));
    }
    // The first step makes two; the second makes two of each.
    send_text(&mut client, "inject:2:inject:2:y").await;
    for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        assert_eq!(next_text(&mut server.ws).await, format!("y#{i}#{j}"));
    }
    // The first step makes two; the second answers each back.
    send_text(&mut client, "inject:2:reply:z").await;
    assert_eq!(next_text(&mut client).await, "z#0");
    assert_eq!(next_text(&mut client).await, "z#1");
    // Nothing of those was forwarded: the next message is.
    send_text(&mut client, "after").await;
    assert_eq!(next_text(&mut server.ws).await, "after+a+b");
}

/// Messages a step forwards as they are keep their places among those it
/// changes: here the second step changes only the middle one of three.
#[tokio::test]
async fn messages_a_step_keeps_stay_in_order_around_one_it_changes() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/v",
        upstream.address,
        "client-messages = [{ plugin = \"test-verdicts@0.1.0\" }, \
         { plugin = \"text-replace@1.0.0\", config = { rules = [{ pattern = \"#1\", replacement = \"#one\" }] } }]",
    ))
    .await;
    let mut client = connect(&gateway, "/v").await;
    let mut server = upstream.accept().await;

    send_text(&mut client, "inject:3:m").await;
    for expected in ["m#0", "m#one", "m#2"] {
        assert_eq!(next_text(&mut server.ws).await, expected);
    }
    // One message: the first step gives it back as it was (its tag is
    // empty), the second forwards it.
    send_text(&mut client, "plain").await;
    assert_eq!(next_text(&mut server.ws).await, "plain");
}

#[tokio::test]
async fn per_connection_state_is_kept_per_connection() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&verdicts_endpoint(upstream.address)).await;
    let mut first = connect(&gateway, "/v").await;
    let mut first_server = upstream.accept().await;
    let mut second = connect(&gateway, "/v").await;
    let mut second_server = upstream.accept().await;
    for n in 1..=3 {
        send_text(&mut first, "count").await;
        assert_eq!(next_text(&mut first_server.ws).await, format!("count={n}"));
    }
    send_text(&mut second, "count").await;
    assert_eq!(next_text(&mut second_server.ws).await, "count=1");
}

#[tokio::test]
async fn plugins_see_the_read_only_connection_context() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/v\"\ncontent-type = \"text/plain\"\nallowed-upstreams = [\"ws://{0}\"]\n\
         upgrade = [{{ plugin = \"test-verdicts@0.1.0\" }}, {{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{0}/\" }} }}]\n\
         client-messages = [{{ plugin = \"test-verdicts@0.1.0\" }}]\n\
         upstream-messages = [{{ plugin = \"json-transform@1.0.0\", config = {{ set = {{ \"/marker\" = \"${{attribute.marker}}\" }} }} }}]\n",
        upstream.address
    ))
    .await;
    let (mut client, _) = try_upgrade(
        &gateway,
        "/v",
        &[("user-agent", "ctx-test"), ("x-test-header", "marked")],
    )
    .await
    .unwrap();
    let mut server = upstream.accept().await;
    // The upgrade verdict's header changes reached the upstream.
    assert_eq!(server.header("x-test-seen"), Some("marked"));
    assert_eq!(server.header("x-test-header"), None);
    send_text(&mut client, "context").await;
    let context: serde_json::Value =
        serde_json::from_str(&next_text(&mut server.ws).await).unwrap();
    assert_eq!(context["endpoint"], "/v");
    assert_eq!(context["content-type"], "text/plain");
    assert_eq!(context["user-agent"], "ctx-test");
    assert_eq!(context["route"], format!("ws://{}/", upstream.address));
    assert_eq!(context["direction"], "Direction::ClientToServer");
    assert!(context["connection-id"].as_u64().unwrap() > 0);
    // State set by the upgrade hook is visible to the message hook of the same plugin.
    assert_eq!(context["seen"], "marked");
    // An attribute published by one plugin is visible to another (json-transform).
    send_text(&mut server.ws, "{}").await;
    assert_eq!(next_text(&mut client).await, r#"{"marker":"marked"}"#);
}

#[tokio::test]
async fn a_trapping_plugin_hurts_only_its_own_connection() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/f",
        upstream.address,
        "client-messages = [{ plugin = \"test-faults@0.1.0\" }]",
    ))
    .await;
    let mut healthy = connect(&gateway, "/f").await;
    let mut healthy_server = upstream.accept().await;
    for fault in ["trap", "loop", "alloc"] {
        let mut victim = connect(&gateway, "/f").await;
        let mut victim_server = upstream.accept().await;
        send_text(&mut victim, fault).await;
        let (client_close, _) = tokio::join!(
            expect_close(&mut victim),
            expect_close(&mut victim_server.ws)
        );
        assert_eq!(client_close.0, 1011, "{fault}");
        // The other connection keeps full service through fresh instances.
        send_text(&mut healthy, &format!("after {fault}")).await;
        assert_eq!(
            next_text(&mut healthy_server.ws).await,
            format!("after {fault}")
        );
    }
    gateway.wait_for_connections(1).await;
    assert_eq!(gateway.active_connections(), 1);
}

#[tokio::test]
async fn bad_plugin_configs_and_roles_are_reported_with_line_and_field() {
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n{}\
         [[endpoint]]\npath = \"/x\"\nallowed-upstreams = [\"ws://127.0.0.1:1\"]\n\
         upgrade = [{{ plugin = \"dynamic-router@1.0.0\", config = {{ rules = [{{ host = \"a\", url = \"http://nope\" }}] }} }}]\n\
         client-messages = [{{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://a/\" }} }}]\n\
         upstream-messages = [{{ plugin = \"json-transform@1.0.0\", config = {{ sett = {{}} }} }}]\n",
        all_plugins()
    );
    let config = wsgate_config::parse(&text, Path::new("bad.toml")).unwrap();
    let errors = wsgate_proxy::Generation::build(0, config, runtime())
        .err()
        .unwrap()
        .0;
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let fields: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert_eq!(
        fields,
        [
            (
                "endpoint[0].upgrade[0].config.rules[0].url",
                line_of("upgrade = [")
            ),
            (
                "endpoint[0].client-messages[0].plugin",
                line_of("client-messages")
            ),
            (
                "endpoint[0].upstream-messages[0].config.sett",
                line_of("upstream-messages")
            ),
        ]
    );
    assert!(
        errors[0].message.contains("dynamic-router@1.0.0"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].message.contains("no message hook"),
        "{}",
        errors[1]
    );
}

#[tokio::test]
async fn a_digest_mismatch_refuses_to_load() {
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[plugin]]\nname = \"static-router\"\nversion = \"1.0.0\"\n\
         path = \"{}\"\ndigest = \"sha256:{}\"\n",
        plugin_path("static-router").display(),
        "0".repeat(64)
    );
    let config = wsgate_config::parse(&text, Path::new("pinned.toml")).unwrap();
    let errors = wsgate_proxy::Generation::build(0, config, runtime())
        .err()
        .unwrap()
        .0;
    assert_eq!(errors[0].field, "plugin[0].digest");
    assert!(
        errors[0].message.contains("digest mismatch"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].message.contains("static-router@1.0.0"),
        "{}",
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_pooled_not_created_per_connection() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint(
        "/pooled",
        echo,
        "client-messages = [{ plugin = \"json-transform@1.0.0\", config = { set = { \"/n\" = 1 } } }]",
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&gateway, "/pooled").await);
    }
    let exchanges = clients.iter_mut().map(|client| async move {
        send_text(client, "{}").await;
        assert_eq!(next_text(client).await, r#"{"n":1}"#);
    });
    futures_util::future::join_all(exchanges).await;
    let generation = gateway.generation();
    let stats = generation.pools[0].stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.calls(), 100);
    // Calls are synchronous on the runtime's two worker threads, so at most
    // two instances are ever busy at once, whatever the connection count.
    let created = stats.instances_created.load(Relaxed);
    assert!(created <= 3, "{created} instances for 100 connections");
}

/// Plugins built against the frozen contract 0.1.0 load unchanged and run
/// beside 0.2.0 ones: one endpoint of each, and a third chaining both.
#[tokio::test]
async fn contract_0_1_plugins_run_unchanged_beside_0_2_ones() {
    let mut upstream = TestUpstream::start().await;
    let address = upstream.address;
    let old = |name: &str, krate: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nversion = \"1.0.0\"\npath = \"{}\"\n\n",
            contract_0_1_plugin_path(krate).display()
        )
    };
    let route = |plugin: &str| {
        format!("{{ plugin = \"{plugin}\", config = {{ url = \"ws://{address}/\" }} }}")
    };
    let endpoint = |path: &str, upgrade: &str, messages: &str| {
        format!(
            "[[endpoint]]\npath = \"{path}\"\nallowed-upstreams = [\"ws://{address}\"]\n\
             upgrade = [{upgrade}]\nclient-messages = [{messages}]\nupstream-messages = [{messages}]\n\n"
        )
    };
    let body = [
        old("old-router", "static-router"),
        old("old-passthrough", "passthrough"),
        endpoint(
            "/old",
            &route("old-router@1.0.0"),
            "{ plugin = \"old-passthrough@1.0.0\" }",
        ),
        endpoint(
            "/new",
            &route("static-router@1.0.0"),
            "{ plugin = \"passthrough@1.0.0\" }",
        ),
        endpoint(
            "/mixed",
            &format!(
                "{{ plugin = \"test-verdicts@0.1.0\" }}, {}",
                route("old-router@1.0.0")
            ),
            "{ plugin = \"old-passthrough@1.0.0\" }, { plugin = \"test-verdicts@0.1.0\", config = { tag = \"+new\" } }, { plugin = \"passthrough@1.0.0\" }",
        ),
    ]
    .concat();
    let gateway = start_gateway(&body).await;

    let contract = |id: &str| {
        let generation = gateway.generation();
        let pool = generation.pools.iter().find(|p| p.plugin().id() == id);
        pool.unwrap().plugin().contract()
    };
    use wsgate_runtime::Contract;
    assert_eq!(contract("old-router@1.0.0"), Contract::V0_1);
    assert_eq!(contract("old-passthrough@1.0.0"), Contract::V0_1);
    assert_eq!(contract("static-router@1.0.0"), Contract::V0_2);
    assert_eq!(contract("passthrough@1.0.0"), Contract::V0_2);

    for (path, upward, downward) in [
        ("/old", "up", "down"),
        ("/new", "up", "down"),
        ("/mixed", "up+new", "down+new"),
    ] {
        let mut client = connect(&gateway, path).await;
        let mut server = upstream.accept().await;
        send_text(&mut client, "up").await;
        assert_eq!(next_text(&mut server.ws).await, upward, "{path}");
        send_text(&mut server.ws, "down").await;
        assert_eq!(next_text(&mut client).await, downward, "{path}");
    }
}
