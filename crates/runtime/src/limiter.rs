//! The store limiter of one instance: wasmtime's [`StoreLimits`], recording
//! whether it refused a memory growth so faults are classified by cause.

use wasmtime::{ResourceLimiter, StoreLimits};

/// [`StoreLimits`] that remember refusing to grow memory.
pub(crate) struct Limiter {
    limits: StoreLimits,
    /// Set when a memory growth was refused or failed; a call that then
    /// fails hit its memory cap.
    pub(crate) memory_refused: bool,
}

impl Limiter {
    /// Enforce `limits`, with nothing refused yet.
    pub(crate) fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.memory_refused = true;
        }
        allowed
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_refused = true;
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
