//! Pools of fungible plugin instances, and fault containment per call.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Store, StoreLimitsBuilder, Trap};

use crate::bindings::{Hooks, MessageParam, types};
use crate::host::{CallContext, HostState, LogLimiter};
use crate::limiter::Limiter;
use crate::striped::Striped;
use crate::{EPOCH_TICK, Plugin, RuntimeError};

/// About how many idle instances a pool keeps, split over its shards: each
/// keeps up to `MAX_IDLE / shards`, rounded up (so at least one); more are
/// created under load and dropped after.
const MAX_IDLE: usize = 8;

/// Why one plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The call overran its deadline (an endless loop, or just too slow).
    Deadline,
    /// The instance tried to grow its memory past the cap.
    Memory,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    Trap,
    /// A fresh instance could not be created.
    Instantiate,
    /// The verdict was larger than the plugin's `max-output`, or carried
    /// more messages than its `max-messages`.
    Output,
    /// The call asked the host to hold more than the plugin's host budget
    /// allows (state, attributes).
    Budget,
    /// The plugin's calls were offloaded and its offload queue was full:
    /// the call was refused without running.
    Shed,
}

impl FaultKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [Self; 7] = [
        Self::Deadline,
        Self::Memory,
        Self::Trap,
        Self::Instantiate,
        Self::Output,
        Self::Budget,
        Self::Shed,
    ];

    /// A short lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Trap => "trap",
            Self::Instantiate => "instantiate",
            Self::Output => "output",
            Self::Budget => "budget",
            Self::Shed => "shed",
        }
    }
}

/// A failed plugin call. The instance that failed has been discarded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin} failed ({}): {message}", kind.as_str())]
pub struct PluginFault {
    /// The plugin as `name@version`.
    pub plugin: Arc<str>,
    /// What went wrong.
    pub kind: FaultKind,
    /// Details from the runtime.
    pub message: String,
}

/// The latency histogram holds one plugin call in this many, drawn at
/// random. Those calls are timed, and so is every call on a connection
/// whose chain time is recorded and every call while the plugin's recent
/// calls come near its `offload-above`; the others are not: two clock
/// readings cost about 70 ns of a small call's 1 µs here.
pub const TIME_ONE_CALL_IN: u64 = 16;

thread_local! {
    /// This thread's draws of the calls the histogram samples (xorshift64;
    /// never zero).
    static SAMPLE_DRAWS: Cell<u64> = Cell::new(sample_seed());
}

/// A random, non-zero seed for a thread's draws (a fixed one if the
/// system's generator fails: any non-zero seed will do).
fn sample_seed() -> u64 {
    let mut seed = [0u8; 8];
    let seed = match getrandom::getrandom(&mut seed) {
        Ok(()) => u64::from_ne_bytes(seed),
        Err(_) => 0x9e37_79b9_7f4a_7c15,
    };
    seed | 1
}

/// Whether this call (or message) is one of the one in
/// [`TIME_ONE_CALL_IN`] sampled, drawn on this thread. Drawn at random, so
/// a regular pattern of calls (a plugin on both directions of one
/// connection, called in turn) cannot line up with the sample.
pub fn drawn_for_sample() -> bool {
    SAMPLE_DRAWS.with(|draws| {
        let mut x = draws.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        draws.set(x);
        x.is_multiple_of(TIME_ONE_CALL_IN)
    })
}

/// Upper bounds of the call-latency histogram's buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000, 25_000, 100_000];

/// Calls, and how long they took, as one worker thread counted them.
#[derive(Debug, Default)]
struct CallCounts {
    /// Calls made.
    calls: AtomicU64,
    /// Calls per bucket of [`LATENCY_BUCKETS_US`], plus one for slower calls.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of all durations, in nanoseconds.
    sum_ns: AtomicU64,
}

/// A histogram of call durations (Prometheus style: cumulative on export),
/// with the number of calls; each worker thread counts in its own stripe.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: Striped<CallCounts>,
}

impl LatencyHistogram {
    fn count_call(&self) {
        self.counts.own().calls.fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        let own = self.counts.own();
        if let Some(counter) = own.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        own.sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Calls per bucket of [`LATENCY_BUCKETS_US`], plus one for slower calls.
    pub fn buckets(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        let mut total = [0; LATENCY_BUCKETS_US.len() + 1];
        for counts in self.counts.iter() {
            for (sum, bucket) in total.iter_mut().zip(&counts.buckets) {
                *sum += bucket.load(Ordering::Relaxed);
            }
        }
        total
    }

    /// Sum of all durations, in nanoseconds.
    pub fn sum_ns(&self) -> u64 {
        self.counts
            .iter()
            .map(|counts| counts.sum_ns.load(Ordering::Relaxed))
            .sum()
    }
}

/// Call and fault counts of one pool.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made, and how long they took (including taking an instance
    /// from the pool).
    pub latency: LatencyHistogram,
    /// Calls that overran their deadline.
    pub deadline_faults: AtomicU64,
    /// Calls that hit the memory cap.
    pub memory_faults: AtomicU64,
    /// Calls that trapped.
    pub trap_faults: AtomicU64,
    /// Instances that could not be created.
    pub instantiate_faults: AtomicU64,
    /// Verdicts over the output budget.
    pub output_faults: AtomicU64,
    /// Calls that asked the host for more than the host budget.
    pub budget_faults: AtomicU64,
    /// Calls refused because the plugin's offload queue was full.
    pub shed_faults: AtomicU64,
    /// Calls run on the plugin's offload threads (off the I/O workers).
    pub offloaded_calls: AtomicU64,
    /// Log lines dropped for exceeding the log rate.
    pub log_lines_dropped: Arc<AtomicU64>,
    /// Instances created (the first at load, then to replace faulted ones
    /// or to serve concurrent calls).
    pub instances_created: AtomicU64,
}

impl PluginStats {
    fn count(&self, kind: FaultKind) {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
    }

    /// Calls made.
    pub fn calls(&self) -> u64 {
        self.latency
            .counts
            .iter()
            .map(|counts| counts.calls.load(Ordering::Relaxed))
            .sum()
    }

    /// Faults of `kind` so far.
    pub fn fault_count(&self, kind: FaultKind) -> u64 {
        self.counter(kind).load(Ordering::Relaxed)
    }

    fn counter(&self, kind: FaultKind) -> &AtomicU64 {
        match kind {
            FaultKind::Deadline => &self.deadline_faults,
            FaultKind::Memory => &self.memory_faults,
            FaultKind::Trap => &self.trap_faults,
            FaultKind::Instantiate => &self.instantiate_faults,
            FaultKind::Output => &self.output_faults,
            FaultKind::Budget => &self.budget_faults,
            FaultKind::Shed => &self.shed_faults,
        }
    }

    /// Faults of every kind.
    pub fn faults(&self) -> u64 {
        FaultKind::ALL
            .into_iter()
            .map(|kind| self.fault_count(kind))
            .sum()
    }
}

struct PluginInstance {
    store: Store<HostState>,
    hooks: Hooks,
}

/// Instances of one plugin configured with one configuration.
pub struct PluginPool {
    plugin: Arc<Plugin>,
    config_json: Arc<str>,
    deadline_ticks: u64,
    /// Idle instances, in one shard per worker thread: a thread takes
    /// from and gives back to its own shard, so threads do not contend
    /// for one lock.
    idle: Striped<Mutex<Vec<PluginInstance>>>,
    /// Most idle instances one shard keeps.
    shard_cap: usize,
    stats: PluginStats,
    log_limiter: Arc<LogLimiter>,
}

impl std::fmt::Debug for PluginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPool")
            .field("plugin", &self.plugin.id())
            .field("config", &self.config_json)
            .finish_non_exhaustive()
    }
}

impl PluginPool {
    /// Create a pool and one configured instance; the plugin's `configure`
    /// runs here, so a bad configuration is reported before traffic flows.
    pub fn new(plugin: Arc<Plugin>, config_json: &str) -> Result<Self, RuntimeError> {
        let tick = EPOCH_TICK.as_nanos().max(1);
        let ticks = plugin.budget().deadline.as_nanos().div_ceil(tick);
        // One extra tick: the current tick may be about to end.
        let deadline_ticks = u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1);
        let plugin_log_rate = plugin.budget().log_rate;
        let log_bytes_rate = plugin.budget().host.log_bytes_rate;
        let stats = PluginStats::default();
        let idle = Striped::<Mutex<Vec<PluginInstance>>>::default();
        let shards = idle.len();
        let pool = Self {
            plugin,
            config_json: config_json.into(),
            deadline_ticks,
            idle,
            shard_cap: MAX_IDLE.div_ceil(shards),
            log_limiter: Arc::new(LogLimiter::new(
                plugin_log_rate,
                log_bytes_rate,
                stats.log_lines_dropped.clone(),
            )),
            stats,
        };
        let first = pool.instantiate()?;
        pool.put_back(first);
        Ok(pool)
    }

    /// The plugin this pool runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Its configuration, as JSON text.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// Call and fault counts.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Idle instances held right now.
    pub fn idle_instances(&self) -> usize {
        self.idle
            .iter()
            .map(|shard| shard.lock().map_or(0, |idle| idle.len()))
            .sum()
    }

    /// Run the plugin's upgrade hook on the upgrade request of `context`'s
    /// connection (lowered into the guest from there, not copied first).
    pub fn on_upgrade(
        &self,
        context: &mut CallContext,
    ) -> Result<types::UpgradeVerdict, PluginFault> {
        let connection = Arc::clone(&context.connection);
        let verdict = self.call(context, |instance| match &instance.hooks.upgrade {
            Some(hook) => hook.call_on_upgrade(&mut instance.store, &connection.request),
            None => Err(wasmtime::Error::msg("the plugin has no upgrade hook")),
        })?;
        self.check_output(upgrade_output(&verdict), 0)?;
        Ok(verdict)
    }

    /// Run the plugin's message hook; `message` is lowered into the guest
    /// from where it is, without an owned copy first.
    pub fn on_message(
        &self,
        context: &mut CallContext,
        direction: types::Direction,
        message: MessageParam<'_>,
    ) -> Result<types::MessageVerdict, PluginFault> {
        let verdict = self.call(context, |instance| match &instance.hooks.message {
            Some(hook) => hook.call_on_message(&mut instance.store, direction, message),
            None => Err(wasmtime::Error::msg("the plugin has no message hook")),
        })?;
        self.check_output(message_output(&verdict), message_count(&verdict))?;
        Ok(verdict)
    }

    /// Run the plugin's upgrade hook where its calls belong now: inline
    /// while they are fast, on its offload threads (awaited) while they are
    /// slow; see [`Self::on_message_placed`].
    pub async fn on_upgrade_placed(
        self: &Arc<Self>,
        context: &mut CallContext,
    ) -> Result<types::UpgradeVerdict, PluginFault> {
        if !self.plugin.offload.is_slow() {
            return self.on_upgrade(context);
        }
        self.offloaded(context, |pool, context| pool.on_upgrade(context))
            .await
    }

    /// Run the plugin's message hook where its calls belong now: inline on
    /// the caller's thread while the plugin's recent calls are faster than
    /// its `offload-above` (the common case: no copy, no hop), else on its
    /// offload threads, the caller awaiting the verdict. A call that finds
    /// the offload queue full faults with [`FaultKind::Shed`] without
    /// running.
    pub async fn on_message_placed(
        self: &Arc<Self>,
        context: &mut CallContext,
        direction: types::Direction,
        message: MessageParam<'_>,
    ) -> Result<types::MessageVerdict, PluginFault> {
        if !self.plugin.offload.is_slow() {
            return self.on_message(context, direction, message);
        }
        let message = types::Message::from(&message);
        // Boxed: the offloaded call's future (the owned message, the hop's
        // channel) would otherwise be part of every chain's future, moved
        // and carried for each message run inline.
        Box::pin(self.offloaded(context, move |pool, context| {
            pool.on_message(context, direction, MessageParam::from(&message))
        }))
        .await
    }

    /// Run `call` on an offload thread with `context` (moved there and
    /// back), or shed it.
    async fn offloaded<R: Send + 'static>(
        self: &Arc<Self>,
        context: &mut CallContext,
        call: impl FnOnce(&PluginPool, &mut CallContext) -> Result<R, PluginFault> + Send + 'static,
    ) -> Result<R, PluginFault> {
        let ticket = match self.plugin.offload.reserve() {
            Ok(ticket) => ticket,
            Err(refusal) => {
                self.stats.count(FaultKind::Shed);
                return Err(self.fault(FaultKind::Shed, refusal.to_string()));
            }
        };
        self.stats.offloaded_calls.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        // The call's time here is the round trip: its wait for an offload
        // thread and the hops count, as they do on the connection.
        let started = Instant::now();
        let mut moved = CallContext {
            connection: context.connection.clone(),
            state: std::mem::take(&mut context.state),
            spent: Duration::ZERO,
            timed: context.timed,
        };
        let done = self
            .plugin
            .offload
            .run(ticket, move || {
                let result = call(&pool, &mut moved);
                (moved, result)
            })
            .await;
        context.spent += started.elapsed();
        match done {
            Some((moved, result)) => {
                context.state = moved.state;
                result
            }
            None => {
                // The state went with the call: it starts afresh.
                self.stats.count(FaultKind::Trap);
                Err(self.fault(FaultKind::Trap, "the offloaded call was lost".into()))
            }
        }
    }

    fn fault(&self, kind: FaultKind, message: String) -> PluginFault {
        PluginFault {
            plugin: self.plugin.id.clone(),
            kind,
            message,
        }
    }

    /// Refuse a verdict over the output budget (`bytes` in all, `messages`
    /// messages). The guest's memory cap bounds the transient copy; this
    /// bounds what travels on.
    fn check_output(&self, bytes: usize, messages: usize) -> Result<(), PluginFault> {
        let budget = self.plugin.budget();
        let message = if bytes > budget.max_output {
            format!(
                "returned {bytes} bytes, over its max-output of {}",
                budget.max_output
            )
        } else if messages > budget.host.messages {
            format!(
                "returned {messages} messages, over its max-messages of {}",
                budget.host.messages
            )
        } else {
            return Ok(());
        };
        self.stats.count(FaultKind::Output);
        Err(PluginFault {
            plugin: self.plugin.id.clone(),
            kind: FaultKind::Output,
            message,
        })
    }

    /// Take an instance, run `f` with `context` installed, and give the
    /// instance back, or discard it if the call failed. The call is timed
    /// when `context` asks for it, when the histogram samples it, or while
    /// the plugin's recent calls come near its `offload-above` (see
    /// [`TIME_ONE_CALL_IN`]); only the sampled calls go into the
    /// histogram, with every call of a timed context.
    fn call<R>(
        &self,
        context: &mut CallContext,
        f: impl FnOnce(&mut PluginInstance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        self.stats.latency.count_call();
        let sampled = drawn_for_sample();
        if !(context.timed || sampled || self.plugin.offload.wants_every_call_timed()) {
            let tick = crate::engine::ticks();
            let result = self.call_in_instance(context, f);
            if crate::engine::ticks() != tick {
                // It ran across an epoch tick, so it may have been slow:
                // the plugin's next call is timed.
                self.plugin.offload.suspect();
            }
            return result;
        }
        let started = Instant::now();
        let result = self.call_in_instance(context, f);
        let elapsed = started.elapsed();
        context.spent += elapsed;
        // Replay reads its call times from the histogram, and every call
        // of a timed context is in it (so recorded connections weigh more
        // in the live histogram than the others).
        if sampled || context.timed {
            self.stats.latency.observe(elapsed);
        }
        self.plugin.offload.record(elapsed);
        result
    }

    fn call_in_instance<R>(
        &self,
        context: &mut CallContext,
        f: impl FnOnce(&mut PluginInstance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        let mut instance = match self.take() {
            Ok(instance) => instance,
            Err(error) => {
                self.stats.count(FaultKind::Instantiate);
                return Err(PluginFault {
                    plugin: self.plugin.id.clone(),
                    kind: FaultKind::Instantiate,
                    message: error.to_string(),
                });
            }
        };
        let data = instance.store.data_mut();
        data.call = Some(CallContext {
            connection: context.connection.clone(),
            state: std::mem::take(&mut context.state),
            spent: Duration::ZERO,
            timed: false,
        });
        data.limits.memory_refused = false;
        data.budget_exceeded = false;
        self.arm_deadline(&mut instance.store);
        let result = f(&mut instance);
        if let Some(call) = instance.store.data_mut().call.take() {
            context.state = call.state;
        }
        match result {
            Ok(value) => {
                self.put_back(instance);
                Ok(value)
            }
            Err(error) => {
                let data = instance.store.data();
                let kind = classify(&error, data.limits.memory_refused, data.budget_exceeded);
                self.stats.count(kind);
                // The instance is dropped here: its state may be corrupt.
                Err(PluginFault {
                    plugin: self.plugin.id.clone(),
                    kind,
                    message: format!("{error:#}"),
                })
            }
        }
    }

    /// Take an idle instance (creating one if none is idle) and give it
    /// back unused: what every call pays before the plugin runs. For the
    /// pool benchmark (feature `bench`).
    #[cfg(feature = "bench")]
    pub fn take_and_put_back(&self) -> Result<(), RuntimeError> {
        let instance = self.take()?;
        self.put_back(instance);
        Ok(())
    }

    /// An idle instance from this thread's shard, else from another's,
    /// else a new one.
    fn take(&self) -> Result<PluginInstance, RuntimeError> {
        let own = self.idle.own_index();
        let shards = self.idle.len();
        for shard in (0..shards).map(|i| (own + i) % shards) {
            let idle = self
                .idle
                .get(shard)
                .and_then(|shard| shard.lock().ok())
                .and_then(|mut idle| idle.pop());
            if let Some(instance) = idle {
                return Ok(instance);
            }
        }
        self.instantiate()
    }

    /// Keep `instance` in this thread's shard, unless the shard is full.
    fn put_back(&self, instance: PluginInstance) {
        if let Ok(mut idle) = self.idle.own().lock()
            && idle.len() < self.shard_cap
        {
            idle.push(instance);
        }
    }

    /// Before guest code runs in `store`: set its deadline and tell the
    /// epoch ticker a call starts (waking it if it rests). Every entry
    /// into guest code goes through here.
    fn arm_deadline(&self, store: &mut Store<HostState>) {
        store.set_epoch_deadline(self.deadline_ticks);
        self.plugin.ticker.call_starts(self.deadline_ticks);
    }

    /// Create and configure a fresh instance.
    fn instantiate(&self) -> Result<PluginInstance, RuntimeError> {
        let plugin = &self.plugin;
        let failed = |error: wasmtime::Error| RuntimeError::Instantiate {
            plugin: plugin.id().to_string(),
            message: format!("{error:#}"),
        };
        let limits = Limiter::new(
            StoreLimitsBuilder::new()
                .memory_size(plugin.budget().memory_limit)
                .trap_on_grow_failure(true)
                .build(),
        );
        let state = HostState::new(
            plugin.id.clone(),
            self.config_json.clone(),
            limits,
            self.log_limiter.clone(),
            plugin.budget().host,
            plugin.state_held.clone(),
            (plugin.quotas.clone(), plugin.quota_scope.clone()),
        );
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        self.arm_deadline(&mut store);
        let instance = plugin.pre.instantiate(&mut store).map_err(failed)?;
        let hooks = plugin.exports.load(&mut store, &instance).map_err(failed)?;
        self.arm_deadline(&mut store);
        hooks
            .lifecycle
            .call_configure(&mut store, &self.config_json)
            .map_err(failed)?
            .map_err(|error| RuntimeError::Config {
                plugin: plugin.id().to_string(),
                field: error.field,
                message: error.message,
            })?;
        self.stats.instances_created.fetch_add(1, Ordering::Relaxed);
        Ok(PluginInstance { store, hooks })
    }
}

/// Messages a verdict carries on (0 for forward, drop and close).
fn message_count(verdict: &types::MessageVerdict) -> usize {
    match verdict {
        types::MessageVerdict::Replace(messages) | types::MessageVerdict::Reply(messages) => {
            messages.len()
        }
        _ => 0,
    }
}

fn message_bytes(message: &types::Message) -> usize {
    match message {
        types::Message::Text(text) => text.len(),
        types::Message::Binary(data) | types::Message::Ping(data) | types::Message::Pong(data) => {
            data.len()
        }
        types::Message::Close(frame) => frame.as_ref().map_or(0, |f| f.reason.len() + 2),
    }
}

fn headers_bytes(headers: &[types::Header]) -> usize {
    headers.iter().map(|h| h.name.len() + h.value.len()).sum()
}

/// Bytes a message verdict carries onward.
fn message_output(verdict: &types::MessageVerdict) -> usize {
    match verdict {
        types::MessageVerdict::Replace(messages) | types::MessageVerdict::Reply(messages) => {
            messages.iter().map(message_bytes).sum()
        }
        types::MessageVerdict::Close(frame) => frame.reason.len() + 2,
        types::MessageVerdict::Forward | types::MessageVerdict::Drop => 0,
    }
}

/// Bytes an upgrade verdict carries onward.
fn upgrade_output(verdict: &types::UpgradeVerdict) -> usize {
    match verdict {
        types::UpgradeVerdict::Continue => 0,
        types::UpgradeVerdict::Modify(ops) => ops
            .iter()
            .map(|op| match op {
                types::HeaderOp::Set(h) | types::HeaderOp::Append(h) => {
                    h.name.len() + h.value.len()
                }
                types::HeaderOp::Remove(name) => name.len(),
            })
            .sum(),
        types::UpgradeVerdict::Reject(r) => headers_bytes(&r.headers) + r.body.len(),
        types::UpgradeVerdict::Route(r) => {
            r.url.len()
                + headers_bytes(&r.headers)
                + r.subprotocols.iter().map(String::len).sum::<usize>()
        }
    }
}

/// What kind of fault `error` is: a deadline from wasmtime's typed trap, a
/// memory fault when the instance's limiter refused to grow its memory
/// during the call (`memory_refused`), else a trap.
fn classify(error: &wasmtime::Error, memory_refused: bool, budget_exceeded: bool) -> FaultKind {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FaultKind::Deadline,
        _ if budget_exceeded => FaultKind::Budget,
        _ if memory_refused => FaultKind::Memory,
        _ => FaultKind::Trap,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;

    /// A pool of `test-faults` (built into plugins/target) with `extra`
    /// lines in its `[[plugin]]` table.
    pub(crate) fn faults_pool(extra: &str) -> PluginPool {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../plugins/target/wasm32-wasip2/release/test_faults.wasm"
        );
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[plugin]]\nname = \"faults\"\nversion = \"1.0.0\"\npath = \"{path}\"\ngrants = [\"state\", \"log\", \"clocks\"]\n{extra}\n"
        );
        let config = wsgate_config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let plugin = crate::Runtime::new()
            .unwrap()
            .load(&config.plugins[0])
            .unwrap();
        PluginPool::new(plugin, "{}").unwrap()
    }

    /// `test-faults` faults on command; each fault is told by its cause,
    /// not by its message.
    #[test]
    fn faults_are_classified_by_cause() {
        let pool = faults_pool("");
        let mut context = CallContext::default();
        let mut send = |text: &str| {
            pool.on_message(
                &mut context,
                types::Direction::ClientToServer,
                MessageParam::Text(text),
            )
        };
        for (command, kind) in [
            ("alloc", FaultKind::Memory),
            ("trap", FaultKind::Trap),
            ("loop", FaultKind::Deadline),
            ("alloc", FaultKind::Memory),
            ("probe-file", FaultKind::Trap),
        ] {
            let fault = send(command).err().unwrap();
            assert_eq!(fault.kind, kind, "{command}: {fault}");
        }
        assert!(matches!(send("hello"), Ok(types::MessageVerdict::Forward)));
        assert_eq!(pool.stats().memory_faults.load(Ordering::Relaxed), 2);
        assert_eq!(pool.stats().trap_faults.load(Ordering::Relaxed), 2);
    }

    /// The epoch ticker rests once no call can still be inside its
    /// deadline, and the next call wakes it: a call that never returns is
    /// interrupted at its deadline after an idle spell as at any other
    /// time, and the plugin serves the next call.
    #[test]
    fn a_call_after_the_ticker_rested_is_still_interrupted_at_its_deadline() {
        let pool = Arc::new(faults_pool("deadline = \"20ms\""));
        // The ticker's own state, looked at once a tick: it rests about
        // 40 ms after the pool's `configure` call (the deadline's 5 ticks,
        // and 3).
        let waited = Instant::now();
        while !pool.plugin.ticker.is_resting() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the ticker never rested"
            );
            std::thread::sleep(EPOCH_TICK);
        }
        // On a thread of its own: were the ticker not woken, the call
        // would never return, and the test fails instead of hanging.
        let (done, outcome) = std::sync::mpsc::channel();
        let looping = pool.clone();
        std::thread::spawn(move || {
            let mut context = CallContext::default();
            let fault = looping
                .on_message(
                    &mut context,
                    types::Direction::ClientToServer,
                    MessageParam::Text("loop"),
                )
                .err()
                .map(|fault| fault.kind);
            let _ = done.send(fault);
        });
        let fault = outcome
            .recv_timeout(Duration::from_secs(10))
            .expect("the looping call was interrupted");
        assert_eq!(fault, Some(FaultKind::Deadline));
        let mut context = CallContext::default();
        assert!(matches!(
            pool.on_message(
                &mut context,
                types::Direction::ClientToServer,
                MessageParam::Text("hello"),
            ),
            Ok(types::MessageVerdict::Forward)
        ));
    }

    /// The histogram holds about one call in [`TIME_ONE_CALL_IN`], drawn at
    /// random, of the calls whose context does not ask for each to be
    /// timed, and every call whose context asks; every call is counted,
    /// and one in a timed context adds its time to the context.
    #[test]
    fn the_histogram_samples_calls_and_a_timed_context_times_each() {
        let pool = faults_pool("offload-above = \"1s\"");
        let call = |context: &mut CallContext| {
            pool.on_message(
                context,
                types::Direction::ClientToServer,
                MessageParam::Text("hello"),
            )
            .unwrap();
        };
        // 1,600 calls, half in each context.
        let calls = 100 * TIME_ONE_CALL_IN;
        let mut sampled = CallContext::default();
        let mut every = CallContext {
            timed: true,
            ..CallContext::default()
        };
        let mut spent = Vec::new();
        for _ in 0..calls / 2 {
            call(&mut sampled);
            call(&mut every);
            spent.push(every.spent);
        }
        assert_eq!(pool.stats().calls(), calls);
        let in_histogram = pool.stats().latency.buckets().iter().sum::<u64>();
        // Every timed call, and about 50 of the 800 others (outside
        // 15..=110 with a probability under 1e-6).
        let sampled = in_histogram.saturating_sub(calls / 2);
        assert!(
            (15..=110).contains(&sampled),
            "{in_histogram} of {calls} calls"
        );
        assert!(
            spent.windows(2).all(|w| w[0] < w[1]),
            "a timed call added nothing"
        );
    }

    /// Each call adds what it took to its context, a call that faults too:
    /// the chain's time in plugins is their sum.
    #[test]
    fn each_call_adds_its_time_to_its_context() {
        let pool = faults_pool("");
        let mut context = CallContext {
            timed: true,
            ..CallContext::default()
        };
        let mut spent = Vec::new();
        for command in ["hello", "trap", "hello"] {
            let _ = pool.on_message(
                &mut context,
                types::Direction::ClientToServer,
                MessageParam::Text(command),
            );
            spent.push(context.spent);
        }
        assert!(spent[0] > Duration::ZERO, "{spent:?}");
        assert!(spent[0] < spent[1] && spent[1] < spent[2], "{spent:?}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod offload_tests {
    use super::tests::faults_pool;
    use super::*;

    async fn send(
        pool: &Arc<PluginPool>,
        context: &mut CallContext,
        text: &str,
    ) -> Result<types::MessageVerdict, PluginFault> {
        pool.on_message_placed(
            context,
            types::Direction::ClientToServer,
            MessageParam::Text(text),
        )
        .await
    }

    /// Send `slow` (20 ms, forwarded) in `context` until the plugin is
    /// offloaded: how many calls ran inline.
    async fn slow_calls_until_offloaded(pool: &Arc<PluginPool>, context: &mut CallContext) -> u64 {
        let mut inline = 0;
        while !pool.plugin().is_offloaded() {
            assert!(matches!(
                send(pool, context, "slow").await,
                Ok(types::MessageVerdict::Forward)
            ));
            inline += 1;
        }
        inline
    }

    /// On a connection whose calls are not all timed, a plugin slow from
    /// its first call (20 ms) is still seen: the first call is sampled or
    /// runs across an epoch tick, the next is timed, and from then on
    /// every call is, so at most one more inline call than timed ones.
    #[tokio::test]
    async fn a_plugin_slow_from_its_first_call_is_seen_untimed() {
        let pool = Arc::new(faults_pool("deadline = \"1s\""));
        let inline = slow_calls_until_offloaded(&pool, &mut CallContext::default()).await;
        // 3 or 4; more only if the epoch ticker went unscheduled for a
        // whole call on a busy machine.
        assert!((3..=8).contains(&inline), "{inline} calls inline");
    }

    /// Slow calls (20 ms, inline, timed), three in a row, make the plugin
    /// slow; its next calls run on its one offload thread, and with no
    /// queue a call that finds the thread busy (a `loop` running to its
    /// deadline) is shed without running.
    #[tokio::test]
    async fn slow_calls_are_offloaded_and_shed_when_the_queue_is_full() {
        let pool = Arc::new(faults_pool(
            "offload-threads = 1\noffload-queue = 0\ndeadline = \"1s\"",
        ));
        let stats = pool.stats();
        let mut first = CallContext {
            timed: true,
            ..CallContext::default()
        };
        let mut second = CallContext::default();
        let inline = slow_calls_until_offloaded(&pool, &mut first).await;
        // Each counts at most SAMPLE_CAP times offload-above (1 ms).
        assert_eq!(inline, 3);
        assert_eq!(stats.offloaded_calls.load(Ordering::Relaxed), 0);
        let inline_spent = first.spent;

        // Polled in order: the loop takes the thread, the slow call finds
        // it busy and nothing queued allowed.
        let (looped, shed) = tokio::join!(
            send(&pool, &mut first, "loop"),
            send(&pool, &mut second, "slow")
        );
        assert_eq!(looped.err().unwrap().kind, FaultKind::Deadline);
        assert_eq!(shed.err().unwrap().kind, FaultKind::Shed);
        assert_eq!(stats.offloaded_calls.load(Ordering::Relaxed), 1);
        assert_eq!(stats.fault_count(FaultKind::Shed), 1);
        // A shed call is not a call: the inline slow ones and the loop.
        assert_eq!(stats.calls(), inline + 1);
        // An offloaded call's round trip counts on its connection; a shed
        // one took nothing.
        assert!(first.spent > inline_spent, "{first:?}");
        assert_eq!(second.spent, Duration::ZERO);

        // The thread is free again: an offloaded call completes.
        assert!(matches!(
            send(&pool, &mut second, "hello").await,
            Ok(types::MessageVerdict::Forward)
        ));
        assert_eq!(stats.offloaded_calls.load(Ordering::Relaxed), 2);
        assert!(second.spent > Duration::ZERO);
    }
}
