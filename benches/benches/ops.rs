//! Criterion benches: every op at the issue-8 shapes on every available backend.
//!
//! `cargo bench -p moemla-benches` (all backends; `MOEMLA_BENCH_BACKEND=cpu` for one).
//! Ratios against measured ceilings come from `moemla bench`; criterion gives the
//! statistically careful times and regressions between runs.

use criterion::{criterion_group, criterion_main, Criterion};
use moemla_benches::inputs::generate;
use moemla_benches::run::Prepared;
use moemla_benches::{BenchCase, Suite};
use moemla_core::{DType, Op};

fn ops(c: &mut Criterion) {
    let only = std::env::var("MOEMLA_BENCH_BACKEND").ok();
    let suite = if std::env::var_os("MOEMLA_BENCH_QUICK").is_some() {
        Suite::Quick
    } else {
        Suite::Standard
    };
    for entry in moemla::discover() {
        let Ok(backend) = entry.backend else { continue };
        if only.as_deref().is_some_and(|o| o != entry.name) {
            continue;
        }
        let mut group = c.benchmark_group(entry.name);
        group.sample_size(10);
        for case in BenchCase::list(suite, &Op::ALL, &[DType::BF16, DType::F32]) {
            let inputs = generate(&case).expect("bench inputs");
            let mut prepared = Prepared::new(&*backend, &case, &inputs).expect("upload");
            group.bench_function(case.to_string(), |b| {
                b.iter(|| {
                    prepared.call().expect("op");
                    backend.synchronize().expect("synchronize");
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
