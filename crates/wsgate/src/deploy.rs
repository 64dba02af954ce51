//! `wsgate deploy`: post a configuration to a running gateway's admin API.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Deploy the file at `path` to the gateway whose admin listener is `admin`
/// (default: the file's own `[admin] listen`).
/// What a deploy makes of the file.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The serving generation.
    Serve,
    /// A shadow generation seeing this share of the connections (0 to 1).
    Shadow(f64),
    /// Promote the running shadow to serving (the file names the admin
    /// listener only).
    Promote,
}

/// With `gate`, the candidate is replayed on recorded traffic first and
/// refused without being sent when the replay says so.
pub async fn run(
    path: &Path,
    admin: Option<SocketAddr>,
    token: Option<String>,
    gate: Option<crate::replay::Gate>,
    target: Target,
) -> anyhow::Result<()> {
    let path = std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // Parse locally first: a file that does not parse never leaves this machine.
    let config = wsgate_config::parse(&text, &path).map_err(anyhow::Error::msg)?;
    crate::print_warnings(&config);
    if let Some(gate) = &gate {
        crate::replay::gate(&path, gate).await?;
    }
    let admin = admin
        .or_else(|| config.admin.as_ref().map(|a| *a.listen.get_ref()))
        .context("no admin address: pass --admin or set [admin] listen in the file")?;
    let token = token
        .or_else(|| std::env::var("WSGATE_ADMIN_TOKEN").ok())
        .or_else(|| config.admin.as_ref().and_then(|a| a.token.clone()));

    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin handshake failed")?;
    tokio::spawn(connection);
    let (route, text) = match target {
        Target::Serve => ("/api/deploy".to_string(), text),
        Target::Shadow(sample) => (format!("/api/shadow?sample={sample}"), text),
        Target::Promote => ("/api/shadow/promote".to_string(), String::new()),
    };
    let mut request = http::Request::post(route)
        .header(http::header::HOST, admin.to_string())
        .header(http::header::CONTENT_TYPE, "application/toml")
        .header("x-wsgate-config-path", path.display().to_string());
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(text)))
        .context("cannot build the deploy request")?;
    let response = sender
        .send_request(request)
        .await
        .context("deploy request failed")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("cannot read the admin response")?
        .to_bytes();
    let reply: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    if status.is_success() {
        let generation = reply.get("generation").unwrap_or(&serde_json::Value::Null);
        match target {
            Target::Serve => eprintln!("deployed {} as generation {generation}", path.display()),
            Target::Shadow(sample) => eprintln!(
                "{} runs in the shadow as generation {generation}, on {sample} of the connections; `wsgate deploy --promote` serves it",
                path.display()
            ),
            Target::Promote => eprintln!("promoted the shadow: serving generation {generation}"),
        }
        return Ok(());
    }
    if let Some(errors) = reply.get("errors").and_then(serde_json::Value::as_array) {
        for error in errors {
            let text = error.get("text").and_then(serde_json::Value::as_str);
            eprintln!("{}", text.unwrap_or_default());
        }
        bail!(
            "deploy refused ({} problems); the gateway keeps serving its current configuration",
            errors.len()
        );
    }
    bail!("deploy failed: {status}: {reply}")
}
