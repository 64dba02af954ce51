//! The compiled-component caches: in memory by content digest, and on disk
//! as precompiled artifacts (the crate's only `unsafe`).

use wasmtime::component::Component;

use crate::Runtime;

impl Runtime {
    /// Compile `bytes`, or reuse the component compiled for `digest`.
    pub(crate) fn compile(&self, digest: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let cached = self
            .compiled
            .lock()
            .ok()
            .and_then(|compiled| compiled.get(digest).cloned());
        if let Some(component) = cached {
            return Ok(component);
        }
        let component = match &self.cache_dir {
            Some(dir) => self.compile_cached(dir, digest, bytes)?,
            None => Component::new(&self.engine, bytes)?,
        };
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.insert(digest.to_string(), component.clone());
        }
        Ok(component)
    }

    /// Load the precompiled artifact for `digest` from `dir`, or compile
    /// `bytes`, store the artifact (atomically) and load it.
    #[allow(unsafe_code)]
    fn compile_cached(
        &self,
        dir: &std::path::Path,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let name = format!(
            "{}-{:016x}.cwasm",
            digest.trim_start_matches("sha256:"),
            hasher.finish()
        );
        let path = dir.join(name);
        // Read into memory rather than mapping the file: an artifact replaced
        // or truncated on disk later cannot then fault the process.
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: artifacts in the cache directory are written only by
            // this function, from `Engine::precompile_component`, under a name
            // derived from the source's digest and this engine's
            // compatibility hash; wasmtime also checks the artifact's header
            // against the engine. The directory must be writable only by the
            // gateway (documented with `plugin-cache-dir`).
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "stale plugin cache entry; recompiling");
                }
            }
        }
        let artifact = self.engine.precompile_component(bytes)?;
        std::fs::create_dir_all(dir)?;
        // Unique per writer: two loads of one plugin may race (two deploys,
        // two runtimes in one process); each renames its own complete file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = path.with_extension(format!("tmp{}-{write}", std::process::id()));
        std::fs::write(&temporary, &artifact)?;
        std::fs::rename(&temporary, &path)?;
        // SAFETY: `artifact` was just produced by this engine's
        // `precompile_component`.
        unsafe { Component::deserialize(&self.engine, &artifact) }
    }
}
