//! A minimal W3C WebDriver client for the console's browser tests: Debian's
//! chromium driven through chromedriver, over plain HTTP.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a condition may take to become true in the page.
const PATIENCE: Duration = Duration::from_secs(20);
/// How often a condition is checked again.
const RECHECK: Duration = Duration::from_millis(50);
/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element in the page.
#[derive(Clone)]
struct Element(String);

impl Browser {
    /// Start chromedriver on a free port and open a headless Chromium.
    pub async fn start() -> Self {
        // chromedriver on port 0 once exited before it listened, in CI,
        // beside tests taking ports in parallel (its reason was not
        // captured): a driver that exits before listening is started
        // again, a few times.
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        let (driver, port) = loop {
            match start_driver().await {
                Some(started) => break started,
                None if attempt < ATTEMPTS => attempt += 1,
                None => panic!("chromedriver exited before it listened, {ATTEMPTS} times"),
            }
        };
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        }}});
        let created = request(port, "POST", "/session", Some(&capabilities))
            .await
            .unwrap_or_else(|error| panic!("cannot start Chromium: {error}"));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Self {
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    async fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    /// A command that may find its element gone: the console re-renders
    /// lists on live updates, so an element found a moment ago can be
    /// replaced before it is read or clicked.
    async fn try_command(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Value> {
        let path = format!("/session/{}{path}", self.session);
        request(self.port, method, &path, body).await
    }

    /// Load `url`.
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .await;
    }

    /// Run `script` (a function body) in the page and return its result.
    pub async fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Every element matching the CSS `selector`.
    async fn find_all(&self, selector: &str) -> Vec<Element> {
        let found = self
            .command(
                "POST",
                "/elements",
                Some(&json!({ "using": "css selector", "value": selector })),
            )
            .await;
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The text of the first element matching `selector` whose text
    /// satisfies `check`, waiting for the page to produce it.
    pub async fn wait_for(&self, selector: &str, check: impl Fn(&str) -> bool) -> String {
        self.find_then(selector, check, false).await
    }

    /// Click the first element matching `selector` whose text satisfies
    /// `check`, waiting for the page to produce it.
    pub async fn click_on(&self, selector: &str, check: impl Fn(&str) -> bool) {
        self.find_then(selector, check, true).await;
    }

    async fn find_then(&self, selector: &str, check: impl Fn(&str) -> bool, click: bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut last = Vec::new();
        loop {
            last.clear();
            for element in self.find_all(selector).await {
                let Ok(text) = self
                    .try_command("GET", &format!("/element/{}/text", element.0), None)
                    .await
                else {
                    continue; // replaced meanwhile: look again
                };
                let text = text.as_str().unwrap_or_default().to_string();
                if !check(&text) {
                    last.push(text);
                    continue;
                }
                if !click {
                    return text;
                }
                let clicked = self
                    .try_command(
                        "POST",
                        &format!("/element/{}/click", element.0),
                        Some(&json!({})),
                    )
                    .await;
                if clicked.is_ok() {
                    return text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nothing matching `{selector}` became as expected; last texts: {last:?}"
            );
            tokio::time::sleep(RECHECK).await;
        }
    }

    /// Replace the text of the input matching `selector`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self
            .find_all(selector)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no `{selector}`"));
        self.command(
            "POST",
            &format!("/element/{}/clear", element.0),
            Some(&json!({})),
        )
        .await;
        self.command(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(&json!({ "text": text })),
        )
        .await;
    }

    /// A PNG screenshot of the page.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.command("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap_or_default())
            .unwrap_or_default()
    }

    /// End the session and the driver.
    pub async fn quit(mut self) {
        self.command("DELETE", "", None).await;
        let _ = self.driver.kill().await;
    }
}

/// Start a chromedriver on port 0: it and the port it listens on, or
/// `None` if it exited before it said so.
async fn start_driver() -> Option<(Child, u16)> {
    let mut driver = Command::new("chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; scripts/setup-browser installs it)");
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next_line().await.unwrap()?;
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            return Some((driver, rest.trim_end_matches('.').parse().unwrap()));
        }
    }
}

/// One WebDriver call; the response's `value`. Errors fail the test.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    // chromedriver may keep the connection open: read the head, then
    // exactly the body its length announces.
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        chunked |= line == "transfer-encoding: chunked";
    }
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..size]);
        }
        String::from_utf8(out).unwrap()
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    };
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
    match value["value"].get("error") {
        None => Ok(value["value"].clone()),
        Some(_) => Err(value["value"].clone()),
    }
}
