//! Conveniences on the contract's types.

use crate::{
    CloseFrame, Header, Message, MessageVerdict, Rejection, Route, UpgradeRequest, UpgradeVerdict,
};

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
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
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

/// Expand `${name}` placeholders in `template` with `lookup`.
///
/// `$$` writes a literal `$`. Returns the first name `lookup` has no value
/// for as the error.
pub fn render_template(
    template: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                return Err(format!("unclosed placeholder in `{template}`"));
            };
            let name = &tail[..end];
            out.push_str(&lookup(name).ok_or_else(|| name.to_string())?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholders in `template`, for validating configuration.
pub fn template_names(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        let tail = &rest[at + 2..];
        match tail.find('}') {
            Some(end) => {
                names.push(&tail[..end]);
                rest = &tail[end + 1..];
            }
            None => break,
        }
    }
    names
}

/// The placeholders every message plugin may use in templates: values of the
/// current connection (`${connection-id}`, `${endpoint}`, `${content-type}`,
/// `${route}`, `${direction}`, `${now-ms}`, `${header.NAME}` of the upgrade
/// request, `${attribute.NAME}` published by another plugin).
pub fn is_connection_placeholder(name: &str) -> bool {
    matches!(
        name,
        "connection-id" | "endpoint" | "content-type" | "route" | "direction" | "now-ms"
    ) || ["header.", "attribute."]
        .iter()
        .any(|prefix| name.strip_prefix(prefix).is_some_and(|n| !n.is_empty()))
}

/// The value of a connection placeholder (see [`is_connection_placeholder`])
/// for a message travelling in `direction`; `None` when it has none.
pub fn connection_value(name: &str, direction: crate::Direction) -> Option<String> {
    use crate::host::{context, state};
    match name {
        "connection-id" => Some(context::connection_id().to_string()),
        "endpoint" => Some(context::endpoint_path()),
        "content-type" => Some(context::content_type()),
        "route" => context::route_url(),
        "now-ms" => Some(context::now_ms().to_string()),
        "direction" => Some(
            match direction {
                crate::Direction::ClientToServer => "client-to-server",
                crate::Direction::ServerToClient => "server-to-client",
            }
            .to_string(),
        ),
        _ => match name.strip_prefix("attribute.") {
            Some(attribute) => state::attribute(attribute),
            None => context::request_header(name.strip_prefix("header.")?),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_and_report_missing_names() {
        let lookup = |name: &str| (name == "a").then(|| "1".to_string());
        assert_eq!(
            render_template("x${a}y$$z$", lookup),
            Ok("x1y$z$".to_string())
        );
        assert_eq!(render_template("${b}", lookup), Err("b".to_string()));
        assert_eq!(
            template_names("ws://${host}/${segment.1}"),
            ["host", "segment.1"]
        );
    }

    #[test]
    fn query_parameters_are_decoded() {
        let request = UpgradeRequest {
            connection_id: 1,
            method: "GET".into(),
            path: "/chat/eu/room-1".into(),
            query: "user=ann%20b&x=1+2&flag".into(),
            headers: vec![Header::new("Host", "Example.com:8080")],
            client_addr: "127.0.0.1:1".into(),
            tls: false,
        };
        assert_eq!(request.query_param("user").as_deref(), Some("ann b"));
        assert_eq!(request.query_param("x").as_deref(), Some("1 2"));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.host(), Some("Example.com"));
        assert_eq!(request.path_segment(1), Some("eu"));
        assert_eq!(request.header("HOST"), Some("Example.com:8080"));
    }
}
