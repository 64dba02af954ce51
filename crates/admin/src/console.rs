//! The web console's files, built into the binary.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use crate::{AdminResponse, text};

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/style.css");

/// `/`: to the console.
pub fn redirect() -> AdminResponse {
    let mut response = text(StatusCode::FOUND, "the console is at /console/\n");
    response.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_static("/console/"),
    );
    response
}

/// One of the console's files.
pub fn asset(path: &str) -> AdminResponse {
    let (body, kind) = match path {
        "/console" | "/console/" | "/console/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/console/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return text(StatusCode::NOT_FOUND, "no such console file\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        header::HeaderName::from_static("content-security-policy"),
        header::HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'",
        ),
    );
    response
}
