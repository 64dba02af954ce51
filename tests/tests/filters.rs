//! The standard filter library through the real gateway, over real sockets:
//! each plugin's behaviour and failure modes, and one composition of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::SinkExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An endpoint whose upgrade chain is `auth` (TOML inline table) then the router.
fn guarded(path: &str, upstream: SocketAddr, auth: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nallowed-upstreams = [\"ws://{upstream}\"]\n{extra}\n\
         upgrade = [{auth}, {{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{upstream}/\" }} }}]\n\n"
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn api_key_accepts_hashed_keys_from_header_or_query_and_refuses_with_401() {
    let echo = start_echo().await;
    let auth = format!(
        "{{ plugin = \"api-key@1.1.0\", config = {{ query = \"key\", keys = [{{ name = \"svc\", sha256 = \"{}\" }}] }} }}",
        sha256_hex("k-123")
    );
    let gateway = start_gateway(&guarded("/k", echo, &auth, "")).await;
    assert!(
        try_upgrade(&gateway, "/k", &[("x-api-key", "k-123")])
            .await
            .is_ok()
    );
    assert!(try_upgrade(&gateway, "/k?key=k-123", &[]).await.is_ok());
    let (status, body) = try_upgrade(&gateway, "/k", &[]).await.err().unwrap();
    assert_eq!((status, body.as_str()), (401, "missing API key\n"));
    let (status, body) = try_upgrade(&gateway, "/k", &[("x-api-key", "k-124")])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body.as_str()), (401, "invalid API key\n"));
}

#[tokio::test]
async fn api_key_max_session_seconds_closes_the_connection_with_1008() {
    let echo = start_echo().await;
    let auth = format!(
        "{{ plugin = \"api-key@1.1.0\", config = {{ max-session-seconds = 1, keys = [{{ name = \"svc\", sha256 = \"{}\" }}] }} }}",
        sha256_hex("k-123")
    );
    let gateway = start_gateway(&guarded("/k", echo, &auth, "")).await;
    let opened_ms = now_ms();
    let (mut client, _) = try_upgrade(&gateway, "/k", &[("x-api-key", "k-123")])
        .await
        .unwrap();
    send_text(&mut client, "hi").await;
    assert_eq!(next_text(&mut client).await, "hi");
    assert_eq!(
        expect_close(&mut client).await,
        (1008, "credentials expired".to_string())
    );
    assert!(now_ms() >= opened_ms + 1000);
}

#[tokio::test]
async fn basic_auth_checks_salted_hashes_and_publishes_the_user() {
    let mut upstream = TestUpstream::start().await;
    let auth = format!(
        "{{ plugin = \"basic-auth@1.1.0\", config = {{ realm = \"chat\", users = [{{ user = \"ann\", salt = \"s1\", sha256 = \"{}\" }}] }} }}",
        sha256_hex("s1pw")
    );
    let extra = "client-messages = [{ plugin = \"json-transform@1.0.0\", config = { set = { \"/user\" = \"${attribute.user}\" } } }]";
    let gateway = start_gateway(&guarded("/b", upstream.address, &auth, extra)).await;
    let basic = |credentials: &str| format!("Basic {}", STANDARD.encode(credentials));
    assert_eq!(try_upgrade(&gateway, "/b", &[]).await.err().unwrap().0, 401);
    let wrong = basic("ann:nope");
    assert_eq!(
        try_upgrade(&gateway, "/b", &[("authorization", &wrong)])
            .await
            .err()
            .unwrap()
            .0,
        401
    );
    let right = basic("ann:pw");
    let (mut client, _) = try_upgrade(&gateway, "/b", &[("authorization", &right)])
        .await
        .unwrap();
    let mut server = upstream.accept().await;
    send_text(&mut client, "{}").await;
    assert_eq!(next_text(&mut server.ws).await, r#"{"user":"ann"}"#);
}

#[tokio::test]
async fn ip_filter_allows_and_denies_by_cidr() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(guarded(
            "/allowed",
            echo,
            "{ plugin = \"ip-filter@1.0.0\", config = { allow = [\"127.0.0.0/8\"] } }",
            "",
        ) + &guarded(
            "/denied",
            echo,
            "{ plugin = \"ip-filter@1.0.0\", config = { deny = [\"127.0.0.1/32\"], status = 451 } }",
            "",
        )),
    )
    .await;
    assert!(try_upgrade(&gateway, "/allowed", &[]).await.is_ok());
    assert_eq!(
        try_upgrade(&gateway, "/denied", &[]).await.err().unwrap().0,
        451
    );
}

#[tokio::test]
async fn key_limit_bounds_open_connections_and_upgrades_per_key_with_429() {
    let echo = start_echo().await;
    let limit = "{ plugin = \"key-limit@1.0.0\", config = { key = \"${header.x-user}\", max-connections = 2, max-upgrades = 4, upgrade-window-seconds = 60 } }";
    let gateway = start_gateway(
        &(guarded("/k", echo, limit, "")
            + "[[endpoint]]\npath = \"/down\"\nallowed-upstreams = [\"ws://127.0.0.1:1\"]\n\
                upgrade = [{ plugin = \"key-limit@1.0.0\", config = { key = \"${header.x-user}\", max-connections = 1 } }, \
                { plugin = \"static-router@1.0.0\", config = { url = \"ws://127.0.0.1:1/\" } }]\n\n"),
    )
    .await;
    // Two open connections per user; a third is refused, another user is not.
    let address = gateway.local_addr().to_string();
    let first = upgrade_as(&address, "/k", "ann").await.unwrap();
    let _second = upgrade_as(&address, "/k", "ann").await.unwrap();
    let refused = upgrade_as(&address, "/k", "ann").await.err().unwrap();
    assert_eq!(
        (refused.status, refused.retry_after, refused.body.as_str()),
        (429, None, "too many open connections for this user\n")
    );
    let _bob = upgrade_as(&address, "/k", "bob").await.unwrap();
    // A closed connection gives its place back.
    drop(first);
    gateway.wait_for_connections(2).await;
    let _third = upgrade_as(&address, "/k", "ann").await.unwrap();
    // The fifth upgrade in the window is refused, with the time to wait.
    let refused = upgrade_as(&address, "/k", "ann").await.err().unwrap();
    assert_eq!(refused.status, 429);
    let seconds: u64 = refused.retry_after.expect("Retry-After").parse().unwrap();
    // A sliding window: the upgrades taken in this window still weigh on
    // the next one, so the wait is at most two windows.
    assert!((1..=120).contains(&seconds), "Retry-After {seconds}");
    // No key: no credentials.
    assert_eq!(
        upgrade_as(&address, "/k", "").await.err().unwrap().status,
        401
    );
    // An upgrade refused after its hold (the upstream is down) gives the
    // place back: with one place, every attempt reaches the upstream.
    for _ in 0..3 {
        assert_eq!(
            upgrade_as(&address, "/down", "ann")
                .await
                .err()
                .unwrap()
                .status,
            502
        );
    }
}

#[tokio::test]
async fn header_rewrite_sets_appends_and_removes_upstream_headers() {
    let mut upstream = TestUpstream::start().await;
    let auth = "{ plugin = \"header-rewrite@1.0.0\", config = { set = { x-path = \"${path}\", x-from = \"${header.x-a}-${query.q}\", x-none = \"${header.absent}\" }, append = { x-tag = \"t2\" }, remove = [\"cookie\"] } }";
    let gateway = start_gateway(&guarded("/h", upstream.address, auth, "")).await;
    let _client = try_upgrade(
        &gateway,
        "/h?q=9",
        &[("x-a", "A"), ("cookie", "secret=1"), ("x-tag", "t1")],
    )
    .await
    .unwrap();
    let server = upstream.accept().await;
    assert_eq!(server.header("x-path"), Some("/h"));
    assert_eq!(server.header("x-from"), Some("A-9"));
    assert_eq!(server.header("x-none"), None);
    assert_eq!(server.header("cookie"), None);
    let tags: Vec<_> = server
        .headers
        .iter()
        .filter(|(k, _)| k == "x-tag")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["t1", "t2"]);
}

/// Keys and token minting for the three JWT algorithms.
struct Signers {
    rsa: rsa::RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
}

impl Signers {
    fn new() -> Self {
        let mut rng = rand::thread_rng();
        Self {
            rsa: rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            ec: p256::ecdsa::SigningKey::random(&mut rng),
        }
    }

    /// A JWKS with the RSA and EC public keys, as JSON text.
    fn jwks(&self) -> String {
        use rsa::traits::PublicKeyParts;
        let public = self.rsa.to_public_key();
        let point = self.ec.verifying_key().to_encoded_point(false);
        json!({"keys": [
            {"kty": "RSA", "kid": "r1", "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())},
        ]})
        .to_string()
    }

    fn token(&self, alg: &str, claims: &Value) -> String {
        let kid = match alg {
            "RS256" => "r1",
            "ES256" => "e1",
            _ => "h1",
        };
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let signature = match alg {
            "HS256" => {
                use hmac::Mac;
                let mut mac = hmac::Hmac::<Sha256>::new_from_slice(b"hs-secret").unwrap();
                mac.update(signed.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            "RS256" => {
                use rsa::signature::{SignatureEncoding, Signer};
                let key = rsa::pkcs1v15::SigningKey::<Sha256>::new(self.rsa.clone());
                key.sign(signed.as_bytes()).to_vec()
            }
            _ => {
                use p256::ecdsa::signature::Signer;
                let signature: p256::ecdsa::Signature = self.ec.sign(signed.as_bytes());
                signature.to_bytes().to_vec()
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// TOML for a `jwt` chain entry trusting the HS256 secret and the JWKS.
fn jwt_entry(signers: &Signers, extra: &str) -> String {
    let jwks = signers.jwks().replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "{{ plugin = \"jwt@1.1.0\", config = {{ keys = [{{ kid = \"h1\", alg = \"HS256\", secret = \"hs-secret\" }}], jwks = \"{jwks}\", query = \"access_token\", issuer = \"https://idp.test\", audience = \"chat\"{extra} }} }}"
    )
}

#[tokio::test]
async fn jwt_verifies_hs256_rs256_and_es256_and_refuses_with_401_or_403() {
    let echo = start_echo().await;
    let signers = Signers::new();
    let gateway = start_gateway(&guarded("/j", echo, &jwt_entry(&signers, ""), "")).await;
    let claims =
        json!({"sub": "ann", "iss": "https://idp.test", "aud": ["chat"], "exp": now() + 300});
    for alg in ["HS256", "RS256", "ES256"] {
        let bearer = format!("Bearer {}", signers.token(alg, &claims));
        assert!(
            try_upgrade(&gateway, "/j", &[("authorization", &bearer)])
                .await
                .is_ok(),
            "{alg}"
        );
    }
    // From the query string, as browsers must.
    let token = signers.token("ES256", &claims);
    assert!(
        try_upgrade(&gateway, &format!("/j?access_token={token}"), &[])
            .await
            .is_ok()
    );

    let refused = |claims: Value, alg: &'static str| {
        let bearer = format!("Bearer {}", signers.token(alg, &claims));
        let gateway = &gateway;
        async move {
            try_upgrade(gateway, "/j", &[("authorization", &bearer)])
                .await
                .err()
                .unwrap()
        }
    };
    let expired =
        json!({"sub": "ann", "iss": "https://idp.test", "aud": "chat", "exp": now() - 3600});
    assert_eq!(
        refused(expired, "RS256").await,
        (401, "token expired\n".to_string())
    );
    let wrong_audience = json!({"iss": "https://idp.test", "aud": "admin", "exp": now() + 60});
    assert_eq!(refused(wrong_audience, "HS256").await.0, 403);
    assert_eq!(try_upgrade(&gateway, "/j", &[]).await.err().unwrap().0, 401);
    // A token signed by a key the gateway does not trust.
    let stranger = Signers::new();
    let bearer = format!("Bearer {}", stranger.token("ES256", &claims));
    let (status, body) = try_upgrade(&gateway, "/j", &[("authorization", &bearer)])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body.as_str()), (401, "invalid token signature\n"));
}

/// Now in Unix milliseconds.
fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn expired_by_credentials(gateway: &wsgate_proxy::Gateway) -> u64 {
    gateway
        .counters()
        .expirations()
        .find(|(by, _)| *by == wsgate_proxy::counters::ExpiredBy::Credentials)
        .unwrap()
        .1
}

#[tokio::test]
async fn jwt_closes_the_connection_when_its_token_expires() {
    let mut upstream = TestUpstream::start().await;
    let signers = Signers::new();
    let entry = jwt_entry(&signers, ", leeway-seconds = 0");
    let gateway = start_gateway(&guarded("/j", upstream.address, &entry, "")).await;
    let exp = now() + 2;
    let claims = json!({"sub": "ann", "iss": "https://idp.test", "aud": "chat", "exp": exp});
    let bearer = format!("Bearer {}", signers.token("ES256", &claims));
    let (mut client, _) = try_upgrade(&gateway, "/j", &[("authorization", &bearer)])
        .await
        .unwrap();
    let mut server = upstream.accept().await;
    // Traffic flows until the token's exp.
    send_text(&mut client, "before exp").await;
    assert_eq!(next_text(&mut server.ws).await, "before exp");
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    let closed_ms = now_ms();
    assert_eq!(client_close, (1008, "credentials expired".to_string()));
    assert_eq!(server_close, (1001, "credentials expired".to_string()));
    // Never before the token's exp (the figure, not asserted: how late).
    assert!(closed_ms >= exp * 1000, "closed at {closed_ms}, exp {exp}");
    eprintln!("closed {} ms after the token's exp", closed_ms - exp * 1000);
    assert_eq!(expired_by_credentials(&gateway), 1);
}

#[tokio::test]
async fn jwt_renewal_in_a_message_moves_the_expiry_for_the_same_subject_only() {
    let mut upstream = TestUpstream::start().await;
    let signers = Signers::new();
    let config = ", leeway-seconds = 0, renew = { type = \"auth\" }";
    let entry = jwt_entry(&signers, config);
    let messages = format!("client-messages = [{entry}]");
    let gateway = start_gateway(&guarded("/j", upstream.address, &entry, &messages)).await;
    let token = |sub: &str, exp: u64| {
        let claims = json!({"sub": sub, "iss": "https://idp.test", "aud": "chat", "exp": exp});
        signers.token("HS256", &claims)
    };
    let first_exp = now() + 2;
    let bearer = format!("Bearer {}", token("ann", first_exp));
    let (mut client, _) = try_upgrade(&gateway, "/j", &[("authorization", &bearer)])
        .await
        .unwrap();
    let mut server = upstream.accept().await;

    let renewed_exp = first_exp + 2;
    let renewal = json!({"type": "auth", "token": token("ann", renewed_exp)});
    send_text(&mut client, &renewal.to_string()).await;
    let answer: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(
        answer,
        json!({"type": "auth", "ok": true, "exp": renewed_exp})
    );
    // Another subject's token does not move it.
    let stranger = json!({"type": "auth", "token": token("bob", renewed_exp + 60)});
    send_text(&mut client, &stranger.to_string()).await;
    let answer: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(
        answer,
        json!({"type": "auth", "ok": false, "error": "token for another subject"})
    );
    // Renewals never reach the upstream; other messages do.
    send_text(&mut client, "chat").await;
    assert_eq!(next_text(&mut server.ws).await, "chat");

    let (client_close, _) = tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    let closed_ms = now_ms();
    assert_eq!(client_close, (1008, "credentials expired".to_string()));
    assert!(
        closed_ms >= renewed_exp * 1000,
        "closed at {closed_ms}: before the renewed exp {renewed_exp}"
    );
    eprintln!(
        "closed {} ms after the renewed token's exp",
        closed_ms - renewed_exp * 1000
    );
}

#[tokio::test]
async fn size_limit_closes_with_1009_or_drops() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(
        &(endpoint(
            "/close",
            upstream.address,
            "client-messages = [{ plugin = \"size-limit@1.0.0\", config = { max-bytes = 8 } }]",
        ) + &endpoint(
            "/drop",
            upstream.address,
            "client-messages = [{ plugin = \"size-limit@1.0.0\", config = { max-bytes = 8, action = \"drop\" } }]",
        )),
    )
    .await;
    let mut dropping = connect(&gateway, "/drop").await;
    let mut dropping_server = upstream.accept().await;
    send_text(&mut dropping, "far too long").await;
    send_text(&mut dropping, "short").await;
    assert_eq!(next_text(&mut dropping_server.ws).await, "short");

    let mut client = connect(&gateway, "/close").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, "ok").await;
    assert_eq!(next_text(&mut server.ws).await, "ok");
    client.send(Message::binary(vec![0u8; 9])).await.unwrap();
    let (client_close, server_close) =
        tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close, (1009, "message too big".to_string()));
    assert_eq!(server_close.0, 1009);
}

#[tokio::test]
async fn rate_limit_closes_with_1008_past_the_burst() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/r",
        upstream.address,
        "client-messages = [{ plugin = \"rate-limit@1.1.0\", config = { messages-per-second = 2, action = \"close\" } }]",
    ))
    .await;
    let mut client = connect(&gateway, "/r").await;
    let mut server = upstream.accept().await;
    for text in ["1", "2", "3"] {
        client.feed(Message::text(text)).await.unwrap();
    }
    client.flush().await.unwrap();
    assert_eq!(next_text(&mut server.ws).await, "1");
    assert_eq!(next_text(&mut server.ws).await, "2");
    let (client_close, _) = tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close, (1008, "rate limit exceeded".to_string()));
}

#[tokio::test]
async fn message_filter_drops_or_answers_messages_outside_the_allow_list() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/m",
        upstream.address,
        "client-messages = [{ plugin = \"message-filter@1.0.0\", config = { field = \"/type\", allow = [\"chat\", \"typing\"], action = \"reply\" } }]",
    ))
    .await;
    let mut client = connect(&gateway, "/m").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, r#"{"type":"spam"}"#).await;
    let reply: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(reply, json!({"error": "message not allowed", "code": 1008}));
    send_text(&mut client, r#"{"type":"chat","text":"hi"}"#).await;
    assert_eq!(
        next_text(&mut server.ws).await,
        r#"{"type":"chat","text":"hi"}"#
    );
}

#[tokio::test]
async fn envelope_wraps_toward_the_server_and_unwraps_toward_the_client() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/e",
        upstream.address,
        "client-messages = [{ plugin = \"envelope@1.0.0\", config = { mode = \"wrap\", field = \"data\", metadata = { kind = \"chat\", endpoint = \"${endpoint}\" } } }]\n\
         upstream-messages = [{ plugin = \"envelope@1.0.0\", config = { mode = \"unwrap\", field = \"data\", non-json = \"drop\" } }]",
    ))
    .await;
    let mut client = connect(&gateway, "/e").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, r#"{"n":1}"#).await;
    let wrapped: Value = serde_json::from_str(&next_text(&mut server.ws).await).unwrap();
    assert_eq!(
        wrapped,
        json!({"data": {"n": 1}, "kind": "chat", "endpoint": "/e"})
    );
    send_text(&mut client, "plain").await;
    let wrapped: Value = serde_json::from_str(&next_text(&mut server.ws).await).unwrap();
    assert_eq!(wrapped["data"], "plain");
    // Toward the client: unwrapped; a non-envelope is dropped.
    send_text(&mut server.ws, "not an envelope").await;
    send_text(&mut server.ws, r#"{"data":"hello","kind":"chat"}"#).await;
    assert_eq!(next_text(&mut client).await, "hello");
}

#[tokio::test]
async fn redact_and_text_replace_rewrite_server_text() {
    let mut upstream = TestUpstream::start().await;
    let gateway = start_gateway(&endpoint(
        "/t",
        upstream.address,
        // Deliberately the deprecated key `server-messages` (now
        // `upstream-messages`): the old name must keep working end to end.
        "server-messages = [{ plugin = \"text-replace@1.0.0\", config = { rules = [{ pattern = \"internal-(\\\\w+)\", replacement = \"public-$1\" }] } }, { plugin = \"redact@1.0.0\" }]",
    ))
    .await;
    let mut client = connect(&gateway, "/t").await;
    let mut server = upstream.accept().await;
    send_text(
        &mut server.ws,
        "card 4111-1111-1111-1111 of ann@example.com on internal-db",
    )
    .await;
    assert_eq!(
        next_text(&mut client).await,
        "card ****-****-****-1111 of [redacted] on public-db"
    );
}

#[tokio::test]
async fn json_schema_closes_with_1007_or_replies_with_the_error() {
    let mut upstream = TestUpstream::start().await;
    let schema = "schema = { type = \"object\", required = [\"type\"], properties = { type = { enum = [\"chat\"] }, text = { type = \"string\", maxLength = 5 } } }";
    let gateway = start_gateway(
        &(endpoint(
            "/close",
            upstream.address,
            &format!("client-messages = [{{ plugin = \"json-schema@1.0.0\", config = {{ {schema} }} }}]"),
        ) + &endpoint(
            "/reply",
            upstream.address,
            &format!("client-messages = [{{ plugin = \"json-schema@1.0.0\", config = {{ {schema}, action = \"reply\" }} }}]"),
        )),
    )
    .await;
    let mut replying = connect(&gateway, "/reply").await;
    let mut replying_server = upstream.accept().await;
    send_text(&mut replying, r#"{"type":"chat","text":"too long"}"#).await;
    let reply: Value = serde_json::from_str(&next_text(&mut replying).await).unwrap();
    assert_eq!(reply["code"], 1007);
    assert!(
        reply["error"].as_str().unwrap().contains("/text"),
        "{reply}"
    );
    send_text(&mut replying, r#"{"type":"chat","text":"ok"}"#).await;
    assert_eq!(
        next_text(&mut replying_server.ws).await,
        r#"{"type":"chat","text":"ok"}"#
    );

    let mut client = connect(&gateway, "/close").await;
    let mut server = upstream.accept().await;
    send_text(&mut client, "not json").await;
    let (client_close, _) = tokio::join!(expect_close(&mut client), expect_close(&mut server.ws));
    assert_eq!(client_close.0, 1007);
}

#[tokio::test]
async fn bad_filter_configs_name_plugin_endpoint_and_field() {
    let text = config_text(
        "[[endpoint]]\npath = \"/bad\"\nallowed-upstreams = [\"ws://127.0.0.1:1\"]\n\
         upgrade = [{ plugin = \"jwt@1.1.0\", config = { keys = [{ alg = \"RS256\", n = \"AQAB\" }] } }, { plugin = \"static-router@1.0.0\", config = { url = \"ws://127.0.0.1:1/\" } }]\n\
         client-messages = [{ plugin = \"rate-limit@1.1.0\", config = { messages-per-second = -1 } }, { plugin = \"redact@1.0.0\", config = { patterns = [{ name = \"x\", regex = \"(\" }] } }]\n",
    );
    let errors = wsgate_proxy::Generation::build(0, parse_config(&text), runtime())
        .err()
        .unwrap()
        .0;
    let found: Vec<_> = errors
        .iter()
        .map(|e| (e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0].0, "endpoint[0].upgrade[0].config.keys[0]");
    assert!(
        found[0].1.contains("jwt@1.1.0") && found[0].1.contains("`e`"),
        "{found:?}"
    );
    assert_eq!(
        found[1].0,
        "endpoint[0].client-messages[0].config.messages-per-second"
    );
    assert!(
        found[1].1.contains("rate-limit@1.1.0 on endpoint /bad"),
        "{found:?}"
    );
    assert_eq!(
        found[2].0,
        "endpoint[0].client-messages[1].config.patterns[0].regex"
    );
}

#[tokio::test]
async fn composition_jwt_rewrite_route_then_schema_rate_transform_and_redact() {
    let mut eu = TestUpstream::start().await;
    let mut us = TestUpstream::start().await;
    let signers = Signers::new();
    let gateway = start_gateway(&format!(
        "[[endpoint]]\npath = \"/chat\"\nallowed-upstreams = [\"ws://{eu}\", \"ws://{us}\"]\n\
         upgrade = [\
           {jwt},\
           {{ plugin = \"header-rewrite@1.0.0\", config = {{ set = {{ x-user-id = \"${{claim.sub}}\" }}, remove = [\"authorization\"], missing = \"reject\" }} }},\
           {{ plugin = \"dynamic-router@1.0.0\", config = {{ rules = [{{ claim = \"tenant\", equals = \"eu\", url = \"ws://{eu}/\" }}, {{ claim = \"tenant\", equals = \"us\", url = \"ws://{us}/\" }}], no-match-status = 403 }} }}\
         ]\n\
         client-messages = [\
           {{ plugin = \"json-schema@1.0.0\", config = {{ schema = {{ type = \"object\", required = [\"text\"] }} }} }},\
           {{ plugin = \"rate-limit@1.1.0\", config = {{ messages-per-second = 100 }} }},\
           {{ plugin = \"json-transform@1.0.0\", config = {{ set = {{ \"/from\" = \"${{attribute.claim.sub}}\" }} }} }}\
         ]\n\
         upstream-messages = [{{ plugin = \"redact@1.0.0\" }}]\n",
        eu = eu.address,
        us = us.address,
        jwt = jwt_entry(&signers, ", publish-claims = [\"sub\", \"tenant\"]"),
    ))
    .await;
    let token = |sub: &str, tenant: &str| {
        let claims = json!({"sub": sub, "tenant": tenant, "iss": "https://idp.test", "aud": "chat", "exp": now() + 300});
        format!("Bearer {}", signers.token("RS256", &claims))
    };

    // ann (eu) and bob (us) each land on their tenant's upstream, as themselves.
    let ann_token = token("ann", "eu");
    let (mut ann, _) = try_upgrade(&gateway, "/chat", &[("authorization", &ann_token)])
        .await
        .unwrap();
    let mut ann_server = eu.accept().await;
    assert_eq!(ann_server.header("x-user-id"), Some("ann"));
    assert_eq!(ann_server.header("authorization"), None);
    let bob_token = token("bob", "us");
    let (mut bob, _) = try_upgrade(&gateway, "/chat", &[("authorization", &bob_token)])
        .await
        .unwrap();
    let mut bob_server = us.accept().await;
    assert_eq!(bob_server.header("x-user-id"), Some("bob"));
    let nowhere = token("cid", "apac");
    assert_eq!(
        try_upgrade(&gateway, "/chat", &[("authorization", &nowhere)])
            .await
            .err()
            .unwrap()
            .0,
        403
    );

    // Client messages: validated, rate-limited, stamped with the user.
    send_text(&mut ann, r#"{"text":"hello"}"#).await;
    let seen: Value = serde_json::from_str(&next_text(&mut ann_server.ws).await).unwrap();
    assert_eq!(seen, json!({"text": "hello", "from": "ann"}));
    send_text(&mut bob, r#"{"text":"hi"}"#).await;
    let seen: Value = serde_json::from_str(&next_text(&mut bob_server.ws).await).unwrap();
    assert_eq!(seen["from"], "bob");

    // Server messages: redacted on the way to the client.
    send_text(&mut ann_server.ws, r#"{"text":"card 4111 1111 1111 1111"}"#).await;
    assert_eq!(
        next_text(&mut ann).await,
        r#"{"text":"card **** **** **** 1111"}"#
    );

    // A message failing the schema closes ann's connection with 1007; bob's is untouched.
    send_text(&mut ann, r#"{"no":"text"}"#).await;
    let (ann_close, _) = tokio::join!(expect_close(&mut ann), expect_close(&mut ann_server.ws));
    assert_eq!(ann_close.0, 1007);
    send_text(&mut bob, r#"{"text":"still here"}"#).await;
    let seen: Value = serde_json::from_str(&next_text(&mut bob_server.ws).await).unwrap();
    assert_eq!(seen["text"], "still here");
}
