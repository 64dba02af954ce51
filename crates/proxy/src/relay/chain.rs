//! One message through its direction's message chain.

use smallvec::SmallVec;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_config::FailPolicy;
use wsgate_runtime::{
    CallContext, Direction, FaultKind, Message, MessageParam, MessageVerdict, PluginFault,
};

use crate::convert::{from_plugin, to_param};
use crate::generation::ChainStep;
use crate::observe::Observer;

/// Messages on their way through a chain: almost always one, kept inline
/// so a message costs no allocation for the list that carries it.
pub type Messages<T> = SmallVec<[T; 1]>;

/// What the chain decided for one message.
#[derive(Default, Clone)]
pub struct ChainResult {
    /// Messages for the other side.
    pub forward: Messages<WsMessage>,
    /// Messages back to the sender.
    pub replies: Vec<WsMessage>,
    /// Close both sides with this code and reason.
    pub close: Option<(u16, String)>,
}

/// A message on its way through a chain: still in wire form (plugins
/// borrow its bytes, and a message they forward stays as it is), or a
/// plugin's output.
enum Item {
    Wire(WsMessage),
    Plugin(Message),
}

/// Run `message` through `chain`, each verdict reported to `observer`.
/// Close frames always go through: plugins see them and may only change
/// their code and reason. A plugin whose calls are slow runs off the I/O
/// workers and is awaited; the connection's next message waits for this
/// one, so a connection's messages pass the chain in order.
pub async fn run_chain(
    chain: &[ChainStep],
    contexts: &mut [CallContext],
    direction: Direction,
    message: WsMessage,
    observer: &mut Observer,
) -> ChainResult {
    let mut result = ChainResult::default();
    // Each step works on the list in place: a message a plugin forwards
    // (almost every one) is neither moved nor copied into a new list.
    let mut items: Messages<Item> = smallvec::smallvec![Item::Wire(message)];
    let timed = observer.times_calls();
    for step in chain {
        let Some(context) = contexts.get_mut(step.slot) else {
            continue;
        };
        let plugin = step.pool.plugin().id();
        let mut at = 0;
        while let Some(item) = items.get(at) {
            let message = match item {
                Item::Plugin(message) => MessageParam::from(message),
                Item::Wire(wire) => match to_param(wire) {
                    Some(message) => message,
                    None => {
                        at += 1;
                        continue;
                    }
                },
            };
            let is_close = matches!(message, MessageParam::Close(_));
            let started = timed.then(std::time::Instant::now);
            let called = step
                .pool
                .on_message_placed(context, direction, message)
                .await;
            observer.message_verdict(plugin, step.fail, &called, started);
            let verdict = match called {
                Ok(verdict) => verdict,
                Err(fault) => {
                    log_fault(&fault, step.fail, "message plugin failed");
                    match step.fail {
                        FailPolicy::Open => MessageVerdict::Forward,
                        FailPolicy::Closed => {
                            result.close = Some((1011, format!("filter {} failed", fault.plugin)));
                            return result;
                        }
                    }
                }
            };
            match verdict {
                MessageVerdict::Close(frame) if is_close => {
                    if let Some(item) = items.get_mut(at) {
                        *item = Item::Plugin(Message::Close(Some(frame)));
                    }
                    at += 1;
                }
                _ if is_close => at += 1,
                MessageVerdict::Forward => at += 1,
                MessageVerdict::Replace(messages) => {
                    items.remove(at);
                    let replaced = messages.len();
                    items.insert_many(at, messages.into_iter().map(Item::Plugin));
                    at += replaced;
                }
                MessageVerdict::Drop => {
                    items.remove(at);
                    tracing::debug!(plugin, "message dropped by plugin");
                }
                MessageVerdict::Close(frame) => {
                    result.close = Some((frame.code, frame.reason));
                    return result;
                }
                MessageVerdict::Reply(messages) => {
                    items.remove(at);
                    result.replies.extend(messages.into_iter().map(from_plugin));
                }
            }
        }
    }
    for item in items {
        result.forward.push(match item {
            Item::Wire(wire) => wire,
            Item::Plugin(message) => from_plugin(message),
        });
    }
    result
}

/// Log a failed call: an error, except a shed call, which is an overload
/// signal counted in `wsgate_plugin_faults_total{kind="shed"}` and logged at
/// debug (under overload, a line per shed message would add to the load).
pub fn log_fault(fault: &PluginFault, fail: FailPolicy, what: &str) {
    let kind = fault.kind.as_str();
    if fault.kind == FaultKind::Shed {
        tracing::debug!(plugin = %fault.plugin, kind, error = %fault.message, fail = ?fail, "{what}");
    } else {
        tracing::error!(plugin = %fault.plugin, kind, error = %fault.message, fail = ?fail, "{what}");
    }
}
