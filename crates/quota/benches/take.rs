//! The host's part of `quota.take` and `quota.hold`, called directly: what
//! a plugin call pays on top of the call itself.
//!
//! `cargo bench -p wsgate-quota --bench take`

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use wsgate_quota::{QuotaScope, Quotas};

fn take(c: &mut Criterion) {
    let quotas = Arc::new(Quotas::new());
    let scope = QuotaScope::new("rate-limit", 256, 100_000);
    let mut group = c.benchmark_group("quota");
    group.bench_function("take", |b| {
        b.iter(|| {
            quotas
                .take(&scope, "/e|messages|1", 1, u32::MAX, 1000)
                .unwrap()
        });
    });
    group.bench_function("hold-and-release", |b| {
        b.iter(|| quotas.hold(&scope, "/e|connections|1", u32::MAX).unwrap());
    });
    group.finish();
}

criterion_group!(benches, take);
criterion_main!(benches);
