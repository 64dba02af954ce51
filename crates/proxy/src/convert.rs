//! Between tungstenite's messages and the plugin contract's messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsgate_monitor::Payload;
use wsgate_monitor::mask::Mask;
use wsgate_runtime::{CloseFrameParam, Message, MessageParam};

/// The contract's view of a wire message, borrowing its bytes (a plugin
/// call lowers them into the guest from there); `None` for raw frames,
/// which the reading side never yields.
pub fn to_param(message: &WsMessage) -> Option<MessageParam<'_>> {
    Some(match message {
        WsMessage::Text(text) => MessageParam::Text(text.as_str()),
        WsMessage::Binary(data) => MessageParam::Binary(data),
        WsMessage::Ping(data) => MessageParam::Ping(data),
        WsMessage::Pong(data) => MessageParam::Pong(data),
        WsMessage::Close(frame) => MessageParam::Close(frame.as_ref().map(|f| CloseFrameParam {
            code: u16::from(f.code),
            reason: f.reason.as_str(),
        })),
        WsMessage::Frame(_) => return None,
    })
}

/// A plugin's message, ready for the wire. Control frames are truncated to
/// the 125 bytes RFC 6455 allows, and close codes made sendable.
pub fn from_plugin(message: Message) -> WsMessage {
    match message {
        Message::Text(text) => WsMessage::text(text),
        Message::Binary(data) => WsMessage::binary(data),
        Message::Ping(mut data) => {
            data.truncate(125);
            WsMessage::Ping(data.into())
        }
        Message::Pong(mut data) => {
            data.truncate(125);
            WsMessage::Pong(data.into())
        }
        Message::Close(frame) => WsMessage::Close(frame.map(|f| close_frame(f.code, &f.reason))),
    }
}

/// A wire message as replay keeps it (text masked by `mask`); `None` for
/// pings, pongs and raw frames, which are answered hop by hop.
pub fn to_payload(message: &WsMessage, mask: &Mask) -> Option<Payload> {
    Some(match message {
        WsMessage::Text(text) => Payload::Text {
            data: mask.apply(text.as_str()),
        },
        WsMessage::Binary(data) => Payload::Binary {
            base64: STANDARD.encode(data),
        },
        WsMessage::Close(frame) => Payload::Close {
            code: frame.as_ref().map(|f| u16::from(f.code)),
            reason: frame
                .as_ref()
                .map(|f| f.reason.as_str().to_owned())
                .unwrap_or_default(),
        },
        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return None,
    })
}

/// Wire messages as replay keeps them, those it keeps (see [`to_payload`]).
pub fn payloads(messages: &[WsMessage], mask: &Mask) -> Vec<Payload> {
    messages
        .iter()
        .filter_map(|m| to_payload(m, mask))
        .collect()
}

/// A recorded message back on the wire; `None` for binary data that is
/// not base64.
pub fn from_payload(payload: &Payload) -> Option<WsMessage> {
    Some(match payload {
        Payload::Text { data } => WsMessage::text(data.as_str()),
        Payload::Binary { base64 } => WsMessage::binary(STANDARD.decode(base64).ok()?),
        Payload::Close { code, reason } => {
            WsMessage::Close(code.map(|code| close_frame(code, reason)))
        }
    })
}

/// A close frame with a code that may be sent on the wire (RFC 6455 7.4
/// and IANA's registry: 1012 Service Restart, 1013 Try Again Later, 1014
/// Bad Gateway): reserved or unassigned codes become 1011, and the reason
/// is cut to fit.
pub fn close_frame(code: u16, reason: &str) -> WsCloseFrame {
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    let code = if sendable { code } else { 1011 };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsCloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].to_owned().into(),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    #[test]
    fn unsendable_close_codes_become_1011() {
        assert_eq!(u16::from(close_frame(1005, "").code), 1011);
        assert_eq!(u16::from(close_frame(4000, "").code), 4000);
        assert_eq!(u16::from(close_frame(1008, "").code), 1008);
        assert_eq!(u16::from(close_frame(1012, "").code), 1012);
        assert_eq!(u16::from(close_frame(1015, "").code), 1011);
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1000, &reason);
        assert!(frame.reason.len() <= 123);
        assert!(frame.reason.as_str().chars().all(|c| c == 'é'));
    }

    #[test]
    fn wire_messages_are_borrowed_as_they_are() {
        let text = WsMessage::text("hi");
        assert!(matches!(to_param(&text), Some(MessageParam::Text("hi"))));
        let binary = WsMessage::binary(vec![1, 2]);
        assert!(matches!(
            to_param(&binary),
            Some(MessageParam::Binary([1, 2]))
        ));
        let close = WsMessage::Close(Some(close_frame(4000, "bye")));
        assert!(matches!(
            to_param(&close),
            Some(MessageParam::Close(Some(CloseFrameParam {
                code: 4000,
                reason: "bye"
            })))
        ));
    }

    #[test]
    fn a_plugins_text_goes_out_as_text() {
        assert_eq!(
            from_plugin(Message::Text("hi".into())),
            WsMessage::text("hi")
        );
    }
}
