//! Benchmarks of the GPU step, one JSON object per line.
//!
//! ```text
//! cargo run --release --example bench -- [--quick]
//! ```
//!
//! Each case times the GPU work to completion (submit, then wait for the queue to drain) after warm-up
//! and reports the median, min and max over the repetitions. `gb_s` counts the bytes RMSprop must move:
//! 20/28/28/36 bytes per element (plain/momentum/centered/centered_momentum); for sparse steps, the
//! touched rows' state plus the listed values. `minimal_kernel` is a WGSL kernel with the same loads and
//! stores and trivial arithmetic, timed the same way in the same run. `host` cases report the time the
//! calling thread spends per step (validate, encode, submit; not waiting) above an empty submit.

use std::time::Instant;

use serde_json::json;
use wgpu_rmsprop::{
    GpuContext, Gradient, Indices, OptimizerOptions, RmsProp, RmsPropConfig, VarId,
};

const MINIMAL_WGSL: &str = include_str!("bench_minimal.wgsl");

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut t: Vec<f64>) -> Stats {
    t.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: t[t.len() / 2],
        min: t[0],
        max: t[t.len() - 1],
    }
}

/// Milliseconds per call of `f` followed by a wait for the GPU, after `warmup` untimed calls.
fn time_gpu(ctx: &GpuContext, warmup: usize, reps: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..warmup {
        f();
        ctx.wait_idle().unwrap();
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f();
        ctx.wait_idle().unwrap();
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    stats(t)
}

/// Microseconds the calling thread spends in `f` (the GPU is drained outside the timing).
fn time_host(ctx: &GpuContext, reps: usize, mut f: impl FnMut()) -> Stats {
    let mut t = Vec::with_capacity(reps);
    for i in 0..reps + 20 {
        let start = Instant::now();
        f();
        let us = start.elapsed().as_secs_f64() * 1e6;
        ctx.wait_idle().unwrap();
        if i >= 20 {
            t.push(us);
        }
    }
    stats(t)
}

fn variant_config(variant: &str) -> RmsPropConfig {
    let b = RmsPropConfig::builder().learning_rate(1e-4);
    match variant {
        "plain" => b,
        "momentum" => b.momentum(0.9),
        "centered" => b.centered(true),
        _ => b.momentum(0.9).centered(true),
    }
    .build()
    .unwrap()
}

fn bytes_per_element(variant: &str) -> f64 {
    match variant {
        "plain" => 20.0,
        "momentum" | "centered" => 28.0,
        _ => 36.0,
    }
}

/// An optimizer with variables of `sizes` and their gradients already in the gradient pool.
fn dense_optimizer(ctx: &GpuContext, variant: &str, sizes: &[usize]) -> (RmsProp, Vec<VarId>) {
    let mut opt = RmsProp::new(ctx, variant_config(variant)).unwrap();
    let ids: Vec<VarId> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let init: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.01).collect();
            opt.add_variable(&format!("w{k}"), &[n], &init).unwrap()
        })
        .collect();
    for &id in &ids {
        let n = opt.variable_info(id).unwrap().1[0];
        let g: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        opt.apply_gradients(&[(id, &g)]).unwrap();
    }
    (opt, ids)
}

fn resident(ids: &[VarId]) -> Vec<(VarId, Gradient<'static>)> {
    ids.iter().map(|&id| (id, Gradient::Resident)).collect()
}

struct Minimal {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The baseline kernel over single buffers of `n` elements, or `None` when one buffer of that size is past
/// the device's binding limit (the optimizer splits such variables; the baseline does not).
fn minimal_kernel(ctx: &GpuContext, variant: &str, n: usize) -> Option<Minimal> {
    let device = ctx.device();
    let vec4s = n.div_ceil(4) as u64;
    let limits = device.limits();
    if vec4s * 16
        > limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
    {
        return None;
    }
    let max = u64::from(device.limits().max_compute_workgroups_per_dimension);
    let groups = vec4s.div_ceil(256);
    let gx = groups.min(max);
    let gy = groups.div_ceil(gx);
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("minimal params"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(
        &uniform,
        0,
        bytemuck::cast_slice(&[vec4s as u32, gx as u32, 0, 0]),
    );
    let buffers: Vec<wgpu::Buffer> = (0..5)
        .map(|k| {
            let used = k < 3
                || (k == 3 && variant.contains("momentum"))
                || (k == 4 && variant.contains("centered"));
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("minimal state"),
                size: if used { vec4s * 16 } else { 16 },
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .collect();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bench_minimal.wgsl"),
        source: wgpu::ShaderSource::Wgsl(MINIMAL_WGSL.into()),
    });
    let constants = [
        (
            "CENTERED",
            if variant.contains("centered") {
                1.0
            } else {
                0.0
            },
        ),
        (
            "HAS_MOMENTUM",
            if variant.contains("momentum") {
                1.0
            } else {
                0.0
            },
        ),
    ];
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("minimal"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let layout = pipeline.get_bind_group_layout(0);
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: uniform.as_entire_binding(),
    }];
    for (k, b) in buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: k as u32 + 1,
            resource: b.as_entire_binding(),
        });
    }
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("minimal"),
        layout: &layout,
        entries: &entries,
    });
    Some(Minimal {
        pipeline,
        bind_group,
        groups: (gx as u32, gy as u32),
    })
}

fn run_minimal(ctx: &GpuContext, m: &Minimal) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&m.pipeline);
        pass.set_bind_group(0, &m.bind_group, &[]);
        pass.dispatch_workgroups(m.groups.0, m.groups.1, 1);
    }
    ctx.queue().submit([encoder.finish()]);
}

fn main() {
    env_logger::init();
    let quick = std::env::args().any(|a| a == "--quick");
    let sweep = std::env::args().any(|a| a == "--sweep");
    let ctx = GpuContext::new().expect("a GPU adapter");
    let adapter = ctx.adapter_description();
    let reps = if quick { 5 } else { 15 };
    let emit = |v: serde_json::Value| println!("{v}");
    let variants = ["plain", "momentum", "centered", "centered_momentum"];
    let sizes: &[usize] = if quick {
        &[1 << 20]
    } else {
        &[1 << 20, 16 << 20, 64 << 20]
    };

    if sweep {
        // What the adapter rewards: invocations per workgroup (each on one vec4).
        for n in [16usize << 20, 64 << 20] {
            for variant in ["plain", "centered_momentum"] {
                for wg in [64u32, 128, 256, 512, 1024] {
                    let options = OptimizerOptions {
                        workgroup_size: wg,
                        ..Default::default()
                    };
                    let Ok(mut opt) = RmsProp::with_options(&ctx, variant_config(variant), options)
                    else {
                        continue;
                    };
                    let init = vec![0.5f32; n];
                    let id = opt.add_variable("w", &[n], &init).unwrap();
                    opt.apply_gradients(&[(id, &init)]).unwrap();
                    let grads = resident(&[id]);
                    let s = time_gpu(&ctx, 2, reps, || {
                        opt.apply(&grads).unwrap();
                    });
                    let bytes = bytes_per_element(variant) * n as f64;
                    emit(
                        json!({"case": "dense_workgroup_size", "variant": variant, "n": n, "workgroup_size": wg,
                        "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
                        "adapter": adapter}),
                    );
                }
            }
        }
        return;
    }

    for &n in sizes {
        for variant in variants {
            let (mut opt, ids) = dense_optimizer(&ctx, variant, &[n]);
            let grads = resident(&ids);
            let s = time_gpu(&ctx, 2, reps, || {
                opt.apply(&grads).unwrap();
            });
            let bytes = bytes_per_element(variant) * n as f64;
            emit(
                json!({"case": "dense", "variant": variant, "n": n, "tensors": 1, "rows": null, "nnz": null,
                "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
                "host_us_per_step": null, "dispatches_per_step": opt.last_step_dispatches(), "adapter": adapter}),
            );
            drop(opt);
            let Some(m) = minimal_kernel(&ctx, variant, n) else {
                eprintln!("minimal_kernel {variant} n={n}: one buffer would exceed the binding limit, skipped");
                continue;
            };
            let s = time_gpu(&ctx, 2, reps, || run_minimal(&ctx, &m));
            emit(
                json!({"case": "minimal_kernel", "variant": variant, "n": n, "tensors": 1, "rows": null, "nnz": null,
                "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
                "host_us_per_step": null, "dispatches_per_step": 1, "adapter": adapter}),
            );
        }
    }

    // 1,000 tensors of 16k against one of the same total size.
    let (tensors, each) = if quick {
        (1000, 1 << 12)
    } else {
        (1000, 1 << 14)
    };
    for variant in ["plain", "centered_momentum"] {
        let (mut opt, ids) = dense_optimizer(&ctx, variant, &vec![each; tensors]);
        let grads = resident(&ids);
        let s = time_gpu(&ctx, 2, reps, || {
            opt.apply(&grads).unwrap();
        });
        let n = tensors * each;
        let bytes = bytes_per_element(variant) * n as f64;
        emit(
            json!({"case": "dense_many", "variant": variant, "n": n, "tensors": tensors, "rows": null, "nnz": null,
            "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
            "host_us_per_step": null, "dispatches_per_step": opt.last_step_dispatches(), "adapter": adapter}),
        );
        drop(opt);
        let (mut opt, ids) = dense_optimizer(&ctx, variant, &[n]);
        let grads = resident(&ids);
        let s = time_gpu(&ctx, 2, reps, || {
            opt.apply(&grads).unwrap();
        });
        emit(
            json!({"case": "dense", "variant": variant, "n": n, "tensors": 1, "rows": null, "nnz": null,
            "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
            "host_us_per_step": null, "dispatches_per_step": opt.last_step_dispatches(), "adapter": adapter}),
        );
    }

    // Sparse: k = 16,384 indices (about 20% repeats) on 64-column tables of 100k and 1M rows.
    let (k, cols) = (16_384usize, 64usize);
    let row_counts: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &rows in row_counts {
        for variant in ["plain", "centered_momentum"] {
            let mut opt = RmsProp::new(&ctx, variant_config(variant)).unwrap();
            let table = opt
                .add_variable("table", &[rows, cols], &vec![0.5; rows * cols])
                .unwrap();
            let mut state = 12345u64;
            let mut indices: Vec<i64> = Vec::with_capacity(k);
            for j in 0..k {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = ((state >> 33) % rows as u64) as i64;
                let idx = if j % 5 == 4 {
                    indices[(r as usize) % indices.len()]
                } else {
                    r
                };
                indices.push(idx);
            }
            let mut distinct = indices.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let values: Vec<f32> = (0..k * cols)
                .map(|i| ((i % 11) as f32 - 5.0) * 0.01)
                .collect();
            let grads = [(
                table,
                Gradient::Sparse {
                    indices: Indices::I64(&indices),
                    values: &values,
                },
            )];
            let s = time_gpu(&ctx, 2, reps, || {
                opt.apply(&grads).unwrap();
            });
            // State of the touched rows (read + write) plus the listed values and indices.
            let state_bytes = (bytes_per_element(variant) - 4.0) * (distinct.len() * cols) as f64;
            let bytes = state_bytes + (k * cols * 4 + k * 8) as f64;
            emit(
                json!({"case": "sparse", "variant": variant, "n": rows * cols, "tensors": 1, "rows": rows, "nnz": k,
                "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
                "host_us_per_step": null, "dispatches_per_step": opt.last_step_dispatches(), "adapter": adapter}),
            );
        }
    }

    // Host overhead: tiny steps whose GPU work is negligible, above an empty submit.
    let empty = time_host(&ctx, 200, || {
        let encoder = ctx.device().create_command_encoder(&Default::default());
        ctx.queue().submit([encoder.finish()]);
    });
    for tensors in [1usize, 1000] {
        let (mut opt, ids) = dense_optimizer(&ctx, "plain", &vec![4; tensors]);
        let grads = resident(&ids);
        let s = time_host(&ctx, 200, || {
            opt.apply(&grads).unwrap();
        });
        emit(
            json!({"case": "host", "variant": "plain", "n": 4 * tensors, "tensors": tensors, "rows": null, "nnz": null,
            "ms_median": s.median / 1e3, "ms_min": s.min / 1e3, "ms_max": s.max / 1e3, "gb_s": null,
            "host_us_per_step": s.median - empty.median, "empty_submit_us": empty.median,
            "dispatches_per_step": opt.last_step_dispatches(), "adapter": adapter}),
        );
    }
}
