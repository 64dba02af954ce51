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
    /// The chain sent its message on as it read it, and nothing else: no
    /// plugin replaced, dropped or answered it, or closed the connection.
    pub as_read: bool,
}

/// A message on its way through a chain: still in wire form (plugins
/// borrow its bytes, and a message they forward stays as it is), or a
/// plugin's output.
enum Item {
    Wire(WsMessage),
    Plugin(Message),
    /// Moved on into a step's new list (see [`run_chain`]). Only ever in
    /// the list that step is leaving: no plugin sees it, nothing forwards
    /// it.
    Taken,
}

/// The item at `at`, moved out of `items` (its place left [`Item::Taken`]).
fn take(items: &mut [Item], at: usize) -> Option<Item> {
    items
        .get_mut(at)
        .map(|item| std::mem::replace(item, Item::Taken))
}

/// The step's new list, made on first need: the `at` messages before the
/// one being decided were all kept as they are, so they move into it
/// first.
fn made_list<'a>(
    made: &'a mut Option<Messages<Item>>,
    items: &mut [Item],
    at: usize,
) -> &'a mut Messages<Item> {
    made.get_or_insert_with(|| (0..at).filter_map(|i| take(items, i)).collect())
}

/// The message at `at` goes on as it is: where it is, or into the step's
/// new list once there is one.
fn keep(made: &mut Option<Messages<Item>>, items: &mut [Item], at: usize) {
    if let Some(made) = made {
        made.extend(take(items, at));
    }
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
        // is. Only once one is replaced, dropped, answered or has its close
        // changed does the step make a new list: what it kept so far moves
        // into it, and what follows goes into it in order (each output to
        // the next step, once; the work stays linear in the messages).
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
                keep(&mut made, &mut items, at);
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
            match verdict {
                MessageVerdict::Close(frame) if is_close => {
                    made_list(&mut made, &mut items, at)
                        .push(Item::Plugin(Message::Close(Some(frame))));
                }
                _ if is_close => keep(&mut made, &mut items, at),
                MessageVerdict::Forward => keep(&mut made, &mut items, at),
                MessageVerdict::Replace(messages) => {
                    made_list(&mut made, &mut items, at)
                        .extend(messages.into_iter().map(Item::Plugin));
                }
                MessageVerdict::Drop => {
                    tracing::debug!(plugin, "message dropped by plugin");
                    made_list(&mut made, &mut items, at);
                }
                MessageVerdict::Close(frame) => {
                    result.close = Some((frame.code, frame.reason));
                    return result;
                }
                MessageVerdict::Reply(messages) => {
                    result.replies.extend(messages.into_iter().map(from_plugin));
                    made_list(&mut made, &mut items, at);
                }
            }
            at += 1;
        }
        if let Some(made) = made {
            items = made;
        }
    }
    // A replacement is a plugin's output: only the message as read is
    // still in wire form.
    result.as_read = result.replies.is_empty() && matches!(items.as_slice(), [Item::Wire(_)]);
    for item in items {
        match item {
            Item::Wire(wire) => result.forward.push(wire),
            Item::Plugin(message) => result.forward.push(from_plugin(message)),
            // Never in a list a step has finished with.
            Item::Taken => {}
        }
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
