//! Criterion benchmarks of the `bench` example's cases at a smaller scale: `cargo bench` on the default
//! adapter. GPU cases are timed to completion with timestamp queries where the device has them (else
//! submit + wait), through `iter_custom`; `host` cases time only the calling thread's work per step.
//! The `bench` example prints the same cases as JSON with GB/s and the minimal-kernel baseline.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wgpu_rmsprop::{GpuContext, Gradient, Indices, RmsProp, RmsPropConfig, VarId};

mod support;
use support::{bytes_per_element, dense_optimizer, resident, sparse_indices, Minimal, Timer};

/// Total GPU time of `iters` runs of `record`.
fn gpu_time(
    timer: &Timer,
    ctx: &GpuContext,
    iters: u64,
    mut record: impl FnMut(&mut wgpu::CommandEncoder),
) -> Duration {
    let ms: f64 = (0..iters).map(|_| timer.once(ctx, &mut record)).sum();
    Duration::from_secs_f64(ms / 1e3)
}

/// Total GPU time of `iters` optimizer steps, each recorded, submitted alone and resolved.
fn step_time(
    timer: &Timer,
    ctx: &GpuContext,
    iters: u64,
    opt: &mut RmsProp,
    grads: &[(VarId, Gradient<'_>)],
) -> Duration {
    let ms: f64 = (0..iters)
        .map(|_| {
            let mut recorded = None;
            let (ms, index) =
                timer.once_submitted(ctx, |e| recorded = Some(opt.record(e, grads).unwrap()));
            opt.submitted(recorded.unwrap(), index).unwrap();
            ms
        })
        .sum();
    Duration::from_secs_f64(ms / 1e3)
}

fn steps(c: &mut Criterion) {
    let ctx = support::context();
    let timer = Timer::new(&ctx);
    let mut group = c.benchmark_group(format!(
        "rmsprop on {} ({})",
        ctx.adapter_description(),
        timer.method()
    ));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));

    // dense and minimal_kernel, 1M elements, every variant.
    let n = 1usize << 20;
    for variant in ["plain", "momentum", "centered", "centered_momentum"] {
        group.throughput(Throughput::Bytes(
            (bytes_per_element(variant) * n as f64) as u64,
        ));
        let (mut opt, ids) = dense_optimizer(&ctx, variant, &[n]);
        let grads = resident(&ids);
        group.bench_function(format!("dense {variant} 1M"), |b| {
            b.iter_custom(|iters| step_time(&timer, &ctx, iters, &mut opt, &grads))
        });
        drop(opt);
        let minimal = Minimal::new(&ctx, variant, n);
        group.bench_function(format!("minimal_kernel {variant} 1M"), |b| {
            b.iter_custom(|iters| gpu_time(&timer, &ctx, iters, |e| minimal.record(e)))
        });
    }

    // dense_many: 256 tensors of 4k against the dense 1M above.
    let (mut opt, ids) = dense_optimizer(&ctx, "plain", &[4096; 256]);
    let grads = resident(&ids);
    group.throughput(Throughput::Bytes((20 * n) as u64));
    group.bench_function("dense_many plain 256 x 4k", |b| {
        b.iter_custom(|iters| step_time(&timer, &ctx, iters, &mut opt, &grads))
    });

    // sparse: 16,384 indices (about 20% repeats) into a 100k x 64 table.
    let (rows, cols, k) = (100_000usize, 64usize, 16_384usize);
    let mut opt = RmsProp::new(&ctx, RmsPropConfig::default()).unwrap();
    let table = opt
        .add_variable("table", &[rows, cols], &vec![0.5; rows * cols])
        .unwrap();
    let indices = sparse_indices(rows, k);
    let values = vec![0.01f32; k * cols];
    let grads = [(
        table,
        Gradient::Sparse {
            indices: Indices::I64(&indices),
            values: &values,
        },
    )];
    group.throughput(Throughput::Elements((k * cols) as u64));
    group.bench_function("sparse plain 100k x 64, 16k indices", |b| {
        b.iter_custom(|iters| step_time(&timer, &ctx, iters, &mut opt, &grads))
    });

    // host: the calling thread's time per step (validate, encode, submit), GPU drained untimed.
    group.throughput(Throughput::Elements(1));
    for tensors in [1usize, 1000] {
        let (mut opt, ids) = dense_optimizer(&ctx, "plain", &vec![4; tensors]);
        let grads = resident(&ids);
        group.bench_function(format!("host {tensors} tiny variables"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    opt.apply(&grads).unwrap();
                    total += start.elapsed();
                    ctx.wait_idle().unwrap();
                }
                total
            })
        });
    }
    group.bench_function("host empty submit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let encoder = ctx.device().create_command_encoder(&Default::default());
                ctx.queue().submit([encoder.finish()]);
                total += start.elapsed();
                ctx.wait_idle().unwrap();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
