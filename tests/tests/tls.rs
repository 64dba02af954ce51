//! TLS both ways, with certificates made at test time: a `wss://`
//! listener; `wss://` upstreams verified against a configured CA bundle,
//! with SNI and an optional client certificate; bad certificates upstream
//! answered with 502.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::tls::{tls_echo, wss_client};
use wsgate_tests::*;

#[tokio::test]
async fn the_listener_serves_wss_and_marks_requests_as_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("wsgate test CA");
    let (cert, key) = ca.issue(dir.path(), "gateway", &["localhost"], false);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let mut upstream = TestUpstream::start().await;
    let text = config_with_gateway(
        &format!(
            "tls = {{ certificate = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
        &endpoint("/secure", upstream.address, ""),
    );
    init_logging();
    let gateway = wsgate_proxy::Gateway::start(parse_config(&text), runtime())
        .await
        .unwrap();
    let port = gateway.local_addr().port();
    let mut client = wss_client(port, "/secure", &ca_path).await;
    let mut server = upstream.accept().await;
    // The upgrade request plugins see has `tls` set; the gateway passes it on.
    assert_eq!(server.header("x-forwarded-proto"), Some("wss"));
    client.send(Message::text("hello over tls")).await.unwrap();
    assert_eq!(next_text(&mut server.ws).await, "hello over tls");
    server.ws.send(Message::text("and back")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "and back");

    // Plain HTTP to the TLS port gets no WebSocket.
    let plain = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/secure")).await;
    assert!(plain.is_err());
    drop((client, server));
    gateway.wait_for_connections(0).await;
}

#[tokio::test]
async fn wss_upstreams_are_verified_against_the_configured_ca_with_optional_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("upstream CA");
    let stranger = Authority::new("some other CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let trusted = tls_echo(
        &ca.issue(dir.path(), "trusted", &["localhost"], false),
        None,
    )
    .await;
    let untrusted = tls_echo(
        &stranger.issue(dir.path(), "untrusted", &["localhost"], false),
        None,
    )
    .await;
    let wrong_name = tls_echo(
        &ca.issue(dir.path(), "elsewhere", &["elsewhere.test"], false),
        None,
    )
    .await;
    let mutual = tls_echo(
        &ca.issue(dir.path(), "mutual", &["localhost"], false),
        Some(&ca_path),
    )
    .await;
    let mutual_too = tls_echo(
        &ca.issue(dir.path(), "mutual-too", &["localhost"], false),
        Some(&ca_path),
    )
    .await;
    let (client_cert, client_key) = ca.issue(dir.path(), "client", &["wsgate"], true);

    let remote = |port: u16, client: bool| {
        let mut text = format!(
            "[[remote-host]]\naddress = \"localhost:{port}\"\nca-bundle = \"{}\"\n",
            ca_path.display()
        );
        if client {
            text += &format!(
                "client-certificate = \"{}\"\nclient-key = \"{}\"\n",
                client_cert.display(),
                client_key.display()
            );
        }
        text + "\n"
    };
    let routed = |path: &str, port: u16| {
        format!(
            "[[endpoint]]\npath = \"{path}\"\nallowed-upstreams = [\"wss://localhost:{port}\"]\n\
             upgrade = [{{ plugin = \"static-router@1.0.0\", config = {{ url = \"wss://localhost:{port}/\" }} }}]\n\n"
        )
    };
    // Two upstreams that require a client certificate: one remote host
    // presents ours, the other presents none.
    let body = remote(trusted.port(), false)
        + &remote(untrusted.port(), false)
        + &remote(wrong_name.port(), false)
        + &remote(mutual.port(), true)
        + &remote(mutual_too.port(), false)
        + &routed("/trusted", trusted.port())
        + &routed("/untrusted", untrusted.port())
        + &routed("/wrong-name", wrong_name.port())
        + &routed("/mutual", mutual.port())
        + &routed("/mutual-without-certificate", mutual_too.port());
    let gateway = start_gateway(&body).await;

    for path in ["/trusted", "/mutual"] {
        let mut client = connect(&gateway, path).await;
        send_text(&mut client, "through tls").await;
        assert_eq!(next_text(&mut client).await, "through tls", "{path}");
    }
    for path in ["/untrusted", "/wrong-name", "/mutual-without-certificate"] {
        let (status, body) = try_upgrade(&gateway, path, &[]).await.err().unwrap();
        assert_eq!(status, 502, "{path}: {body}");
    }
}

#[tokio::test]
async fn unreadable_tls_files_refuse_the_configuration_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ntls = {{ certificate = \"{0}\", key = \"{0}\" }}\n\n\
         [[remote-host]]\naddress = \"localhost:1\"\nca-bundle = \"{0}\"\nclient-certificate = \"{0}\"\n",
        missing.display()
    );
    let errors = wsgate_config::parse(&text, Path::new("tls.toml"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        errors.contains("remote-host[0].client-certificate"),
        "{errors}"
    );
    let text = text.replace(
        &format!("client-certificate = \"{}\"\n", missing.display()),
        "",
    );
    let config = wsgate_config::parse(&text, Path::new("tls.toml")).unwrap();
    let error = wsgate_proxy::Gateway::start(config, runtime())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("gateway.tls") && error.contains("missing.pem"),
        "{error}"
    );
    assert!(error.contains("remote-host[0]"), "{error}");
}
