//! Conveniences on the contract's types.

use crate::{CloseFrame, Header, Message, MessageVerdict, Rejection, Route, UpgradeRequest, UpgradeVerdict};

impl Header {
    /// A header with a lower-cased name.
    pub fn new(name: &str, value: impl Into<String>) -> Self {
        Self {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        }
    }
}

impl UpgradeRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The host the client asked for, without a port.
    pub fn host(&self) -> Option<&str> {
        let host = self.header("host")?;
        Some(match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') || port.is_empty() => {
                if port.chars().all(|c| c.is_ascii_digit()) { name } else { host }
            }
            _ => host,
        })
    }

    /// The `n`th non-empty segment of the path (0-based).
    pub fn path_segment(&self, n: usize) -> Option<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).nth(n)
    }
}

/// Decode `%XX` escapes and `+` (as space) in a query component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl UpgradeVerdict {
    /// Route the connection to `url` with no extra headers or subprotocols.
    pub fn route_to(url: &str) -> Self {
        Self::Route(Route {
            url: url.to_owned(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
        })
    }

    /// Refuse the upgrade with `status` and a plain-text `body`.
    pub fn reject(status: u16, body: &str) -> Self {
        Self::Reject(Rejection {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        })
    }
}

impl MessageVerdict {
    /// Replace the message with one message.
    pub fn modify(message: Message) -> Self {
        Self::Replace(vec![message])
    }

    /// Close both sides with `code` and `reason`.
    pub fn close(code: u16, reason: &str) -> Self {
        Self::Close(CloseFrame {
            code,
            reason: reason.to_owned(),
        })
    }
}
