//! Criterion benchmarks of one optimizer step, timed to completion (submit, then wait for the GPU).
//! `cargo bench` on the default adapter; the `bench` example prints the same cases as JSON with GB/s
//! and the minimal-kernel baseline.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wgpu_rmsprop::{GpuContext, Gradient, Indices, RmsProp, RmsPropConfig};

fn steps(c: &mut Criterion) {
    let ctx = GpuContext::new().expect("a GPU adapter");
    let mut group = c.benchmark_group(format!("rmsprop step on {}", ctx.adapter_description()));
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(3));

    for (name, cfg) in [
        ("dense plain 1M", RmsPropConfig::default()),
        (
            "dense centered_momentum 1M",
            RmsPropConfig::builder()
                .momentum(0.9)
                .centered(true)
                .build()
                .unwrap(),
        ),
    ] {
        let n = 1 << 20;
        let mut opt = RmsProp::new(&ctx, cfg).unwrap();
        let w = opt.add_variable("w", &[n], &vec![0.5; n]).unwrap();
        opt.apply_gradients(&[(w, &vec![0.1; n])]).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                opt.apply(&[(w, Gradient::Resident)]).unwrap();
                ctx.wait_idle().unwrap();
            })
        });
    }

    let (rows, cols, k) = (100_000usize, 64usize, 16_384usize);
    let mut opt = RmsProp::new(&ctx, RmsPropConfig::default()).unwrap();
    let table = opt
        .add_variable("table", &[rows, cols], &vec![0.5; rows * cols])
        .unwrap();
    let indices: Vec<i64> = (0..k)
        .map(|j| ((j * 7919) % rows) as i64 / if j % 5 == 4 { 2 } else { 1 })
        .collect();
    let values = vec![0.01f32; k * cols];
    group.throughput(Throughput::Elements((k * cols) as u64));
    group.bench_function("sparse lazy 100k x 64, 16k indices", |b| {
        b.iter(|| {
            opt.apply(&[(
                table,
                Gradient::Sparse {
                    indices: Indices::I64(&indices),
                    values: &values,
                },
            )])
            .unwrap();
            ctx.wait_idle().unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
