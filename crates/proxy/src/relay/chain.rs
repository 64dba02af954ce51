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
    /// Moved on into the step's new list (see [`run_chain`]).
    Taken,
}

/// The item at `at`, moved out of `items` (its place left [`Item::Taken`]).
fn take(items: &mut [Item], at: usize) -> Option<Item> {
    items
        .get_mut(at)
        .map(|item| std::mem::replace(item, Item::Taken))
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
    let mut items: Messages<Item> = smallvec::smallvec![Item::Wire(message)];
    let timed = observer.times_calls();
    for step in chain {
        let Some(context) = contexts.get_mut(step.slot) else {
            continue;
        };
        let plugin = step.pool.plugin().id();
        // A message the plugin forwards (almost every one) stays where it
        // is. Only once one is replaced, dropped or answered does the step
        // make a new list: what it kept so far moves into it, and what
        // follows goes into it in order (each output to the next step,
        // once; the work stays linear in the messages).
        let mut made: Option<Messages<Item>> = None;
        let mut at = 0;
        while let Some(item) = items.get(at) {
            let message = match item {
                Item::Plugin(message) => Some(MessageParam::from(message)),
                Item::Wire(wire) => to_param(wire),
                Item::Taken => None,
            };
            let Some(message) = message else {
                // A frame plugins do not see goes on as it is.
                if let (Some(made), Some(item)) = (&mut made, take(&mut items, at)) {
                    made.push(item);
                }
                at += 1;
                continue;
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
            // What goes on in the message's place; `None`: the message.
            let outputs: Option<Messages<Item>> = match verdict {
                MessageVerdict::Close(frame) if is_close => {
                    Some(smallvec::smallvec![Item::Plugin(Message::Close(Some(
                        frame
                    )))])
                }
                _ if is_close => None,
                MessageVerdict::Forward => None,
                MessageVerdict::Replace(messages) => {
                    Some(messages.into_iter().map(Item::Plugin).collect())
                }
                MessageVerdict::Drop => {
                    tracing::debug!(plugin, "message dropped by plugin");
                    Some(Messages::new())
                }
                MessageVerdict::Close(frame) => {
                    result.close = Some((frame.code, frame.reason));
                    return result;
                }
                MessageVerdict::Reply(messages) => {
                    result.replies.extend(messages.into_iter().map(from_plugin));
                    Some(Messages::new())
                }
            };
            match (outputs, &mut made) {
                (None, None) => {}
                (None, Some(made)) => made.extend(take(&mut items, at)),
                (Some(outputs), made) => made
                    .get_or_insert_with(|| (0..at).filter_map(|i| take(&mut items, i)).collect())
                    .extend(outputs),
            }
            at += 1;
        }
        if let Some(made) = made {
            items = made;
        }
    }
    for item in items {
        result.forward.push(match item {
            Item::Wire(wire) => wire,
            Item::Plugin(message) => from_plugin(message),
            Item::Taken => continue,
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
