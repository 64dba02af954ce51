//! The web console in a real browser (headless Chromium through
//! chromedriver): the test client page opens a connection through the
//! gateway and sends a message; Traffic > HTTP shows the upgrade, live;
//! Traffic > WebSockets shows its frames, and a frame's detail has the
//! seed's fields; the Overview charts a client's traffic live and marks a
//! deploy; the Deploys page shows what a deploy changed and why another
//! was refused; the Shadow page counts a candidate's differences.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use wsgate_tests::webdriver::Browser;
use wsgate_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_upgrade_and_each_frame_of_a_test_client_connection() {
    let echo = start_echo().await;
    let gateway = start_gateway(&endpoint(
        "/chat",
        echo,
        "monitor = \"full\"\n\
         client-messages = [{ plugin = \"json-mask@1.0.0\", config = { fields = [\"password\"] } }]",
    ))
    .await;
    let (admin, _stop) = start_admin(&gateway, None).await;
    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "http://127.0.0.1:{}/console/#/client",
            admin.port()
        ))
        .await;

    // The test client page: connect to /chat through the gateway, send, see the reply.
    browser
        .wait_for("#client-endpoint option", |t| t == "/chat")
        .await;
    browser.wait_for("#live", |t| t == "live").await;
    browser.click_on("#client-connect", |_| true).await;
    browser
        .wait_for("#client-status", |t| t.starts_with("connected"))
        .await;
    let sent = r#"{"text":"hi","password":"p4ss"}"#;
    browser.type_into("#client-message", sent).await;
    browser.click_on("#client-send", |_| true).await;
    browser
        .wait_for("#client-log .log-received", |t| {
            t.contains(r#"{"password":"***","text":"hi"}"#)
        })
        .await;

    // Traffic > HTTP: the upgrade, with its status.
    browser.click_on("#nav-http", |_| true).await;
    browser
        .click_on("#http-table tbody tr[data-endpoint='/chat']", |t| {
            t.contains("101")
        })
        .await;
    browser.wait_for("#upgrade-status", |t| t == "101").await;
    let key = browser
        .wait_for("#upgrade-connection", |t| !t.is_empty())
        .await;
    assert_eq!(key, gateway.monitor().key(1));

    // Live: a connection opened now appears without a reload.
    let mut other = connect(&gateway, "/chat").await;
    let second = gateway.monitor().key(2);
    browser
        .wait_for("#http-table tbody tr", |t| t.contains(&second))
        .await;
    send_text(&mut other, "bye").await;
    assert_eq!(next_text(&mut other).await, "bye");

    // Traffic > WebSockets: the client's text frame and its fields.
    browser.click_on("#upgrade-frames", |_| true).await;
    browser
        .click_on(
            "#ws-table tbody tr[data-origin='client'][data-opcode='text']",
            |t| t.contains(&key),
        )
        .await;
    browser.wait_for("#frame-origin", |t| t == "client").await;
    browser.wait_for("#frame-opcode", |t| t == "text (1)").await;
    // Chromium offers permessage-deflate, so the message crossed the wire
    // compressed; the payload below is what the filters saw.
    browser
        .wait_for("#frame-length", |t| {
            t.ends_with(&format!(
                " bytes on the wire, {} bytes uncompressed",
                sent.len()
            ))
        })
        .await;
    browser
        .wait_for("#frame-mask", |t| {
            t.len() == 8 && t.chars().all(|c| c.is_ascii_hexdigit())
        })
        .await;
    browser
        .wait_for("#frame-duration", |t| t.ends_with("µs in filters"))
        .await;
    browser
        .wait_for("#frame-verdict", |t| t == "json-mask@1.0.0 replace (1)")
        .await;
    // The payload as pretty JSON (the default for JSON), hex and text.
    browser
        .wait_for("#frame-payload", |t| t.contains("\"password\": \"p4ss\""))
        .await;
    browser.click_on("#payload-hex", |_| true).await;
    browser
        .wait_for("#frame-payload", |t| {
            t.starts_with("00000000  7b 22 74 65 78 74 22")
        })
        .await;
    browser.click_on("#payload-text", |_| true).await;
    browser.wait_for("#frame-payload", |t| t == sent).await;

    // The frame the client received: no mask, the filtered payload.
    browser
        .click_on(
            "#ws-table tbody tr[data-origin='server'][data-opcode='text']",
            |t| t.contains(&key),
        )
        .await;
    browser.wait_for("#frame-origin", |t| t == "server").await;
    browser.wait_for("#frame-mask", |t| t == "none").await;
    browser
        .wait_for("#frame-payload", |t| t.contains("\"password\": \"***\""))
        .await;

    let shot = browser.screenshot().await;
    let _ = std::fs::write(repo_root().join("target/console.png"), shot);
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_page_counts_what_a_candidate_would_change_live() {
    let echo = start_echo().await;
    let gateway = start_gateway(&tagged_endpoint("/chat", echo, "1.0.0")).await;
    let (admin, _stop) = start_admin(&gateway, None).await;
    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "http://127.0.0.1:{}/console/#/shadow",
            admin.port()
        ))
        .await;
    browser
        .wait_for("#shadow-summary", |t| {
            t.starts_with("No shadow generation runs")
        })
        .await;

    // tagger 2.0.0 in the shadow; a client's messages counted while the
    // page is open.
    let candidate = config_text(&tagged_endpoint("/chat", echo, "2.0.0"));
    gateway
        .deploy_shadow(&candidate, std::path::Path::new("next.toml"), "test", 1.0)
        .await
        .unwrap();
    let mut client = connect(&gateway, "/chat").await;
    for text in ["one", "two", "three"] {
        send_text(&mut client, text).await;
        assert_eq!(next_text(&mut client).await, format!("{text}+v1.0.0"));
    }
    browser
        .wait_for(
            "#shadow-endpoints tr[data-endpoint='/chat'] .changed",
            |t| t == "3",
        )
        .await;
    browser
        .wait_for("#shadow-endpoints tr[data-endpoint='/chat'] .same", |t| {
            t == "3"
        })
        .await;
    browser
        .wait_for(
            "#shadow-plugins tr[data-plugin='tagger@2.0.0'] .faults",
            |t| t == "none",
        )
        .await;
    browser
        .wait_for("#shadow-examples .diff", |t| {
            t.contains("- forward [three+v1.0.0]") && t.contains("+ forward [three+v2.0.0]")
        })
        .await;
    browser
        .wait_for("#shadow-summary", |t| t.contains("1 sampled, 0 dropped"))
        .await;
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_charts_traffic_live_and_deploys_show_what_changed() {
    let echo = start_echo().await;
    let tagged = |version: &str| config_text(&tagged_endpoint("/chat", echo, version));
    let gateway = start_gateway(&tagged_endpoint("/chat", echo, "1.0.0")).await;
    let (admin, _stop) = start_admin(&gateway, None).await;
    let browser = Browser::start().await;
    // The Overview is the console's first page.
    browser
        .goto(&format!("http://127.0.0.1:{}/console/", admin.port()))
        .await;
    browser.wait_for("#nav-overview.active", |_| true).await;

    // A client that keeps talking while the page polls.
    let mut client = connect(&gateway, "/chat").await;
    let (stop_talking, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let talker = tokio::spawn(async move {
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = &mut stopped => return client,
                _ = pace.tick() => {
                    send_text(&mut client, "tick").await;
                    assert_eq!(next_text(&mut client).await, "tick+v1.0.0");
                }
            }
        }
    });
    let rate = |t: &str| {
        t.rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    browser
        .wait_for("#chart-messages [data-series='client → upstream']", |t| {
            rate(t) > 0.0
        })
        .await;
    browser
        .wait_for("#chart-messages [data-series='upstream → client']", |t| {
            rate(t) > 0.0
        })
        .await;
    browser
        .wait_for(
            "#overview-figures [data-figure='open connections'] dd",
            |t| t == "1",
        )
        .await;
    browser
        .wait_for("#chart-upgrades [data-series='101']", |_| true)
        .await;
    browser
        .wait_for(
            "#overview-plugins tr[data-plugin='tagger@1.0.0'] .calls",
            |t| t.parse::<f64>().is_ok_and(|calls| calls > 0.0),
        )
        .await;
    browser
        .wait_for(
            "#overview-plugins tr[data-plugin='tagger@1.0.0'] .faults",
            |t| t == "none",
        )
        .await;
    browser
        .wait_for("#health", |t| t.starts_with("Healthy since"))
        .await;

    // A deploy (tagger 2.0.0) and a refused one; the client keeps generation 1.
    let next = std::path::Path::new("next.toml");
    assert_eq!(
        gateway.deploy_text(&tagged("2.0.0"), next).await.unwrap(),
        2
    );
    assert!(gateway.deploy_text(&tagged("9.9.9"), next).await.is_err());
    browser
        .wait_for("#chart-messages .mark-label", |t| t == "g2")
        .await;
    browser
        .wait_for("#chart-messages .mark-label.refused", |t| t == "✕")
        .await;
    let shot = browser.screenshot().await;
    let _ = std::fs::write(repo_root().join("target/console-overview.png"), shot);
    stop_talking.send(()).unwrap();
    let _client = talker.await.unwrap();

    browser.click_on("#nav-deploys", |_| true).await;
    browser
        .wait_for(
            "#deploys-generations tr[data-generation='1'] .connections",
            |t| t == "1",
        )
        .await;
    browser
        .wait_for("#deploys-generations tr[data-generation='2']", |t| {
            t.contains("serves them")
        })
        .await;
    browser
        .wait_for("#deploys-history .deploy.deployed", |t| {
            t.contains("generation 2 from next.toml")
                && t.contains("-client-messages = [{ plugin = \"tagger@1.0.0\" }]")
                && t.contains("+client-messages = [{ plugin = \"tagger@2.0.0\" }]")
        })
        .await;
    browser
        .wait_for("#deploys-history .deploy.refused", |t| {
            t.contains("refused from next.toml") && t.contains("tagger@9.9.9")
        })
        .await;
    browser.quit().await;
}
