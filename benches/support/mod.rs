//! Shared by the `bench` example and the criterion benches: the GPU timer (timestamp queries where the
//! device has them, else submit + wait), the minimal baseline kernel, and the bench cases' setup.
#![allow(dead_code)]

use std::time::Instant;

use wgpu_rmsprop::{ContextOptions, GpuContext, Gradient, RmsProp, RmsPropConfig, VarId};

const MINIMAL_WGSL: &str = include_str!("../../examples/bench_minimal.wgsl");

/// Features the timer uses where the adapter has them.
pub const TIMER_FEATURES: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// A context on the default adapter, with timestamp queries where it has them.
pub fn context() -> GpuContext {
    GpuContext::with_options(&ContextOptions {
        optional_features: TIMER_FEATURES,
        ..Default::default()
    })
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    })
}

/// Median, minimum and maximum of a sample.
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(mut t: Vec<f64>) -> Stats {
    t.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: t[t.len() / 2],
        min: t[0],
        max: t[t.len() - 1],
    }
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

/// Times GPU work to completion: with timestamp queries written before and after the work in the same
/// encoder where the device has them, else from encoding to the end of a wait for the queue.
pub struct Timer {
    ts: Option<Timestamps>,
}

impl Timer {
    pub fn new(ctx: &GpuContext) -> Self {
        let device = ctx.device();
        let ts = device.features().contains(TIMER_FEATURES).then(|| {
            let buffer = |usage, label| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            Timestamps {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolve: buffer(
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    "bench resolve",
                ),
                readback: buffer(
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    "bench readback",
                ),
                period_ns: f64::from(ctx.queue().get_timestamp_period()),
            }
        });
        Timer { ts }
    }

    /// `timestamp_query` or `submit_wait`.
    pub fn method(&self) -> &'static str {
        if self.ts.is_some() {
            "timestamp_query"
        } else {
            "submit_wait"
        }
    }

    /// Milliseconds of the GPU work that `record` encodes (submitted alone, waited for).
    pub fn once(&self, ctx: &GpuContext, record: impl FnOnce(&mut wgpu::CommandEncoder)) -> f64 {
        self.once_submitted(ctx, record).0
    }

    /// As [`Timer::once`], with the index of the submit (to resolve a recorded optimizer step).
    pub fn once_submitted(
        &self,
        ctx: &GpuContext,
        record: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> (f64, wgpu::SubmissionIndex) {
        let start = Instant::now();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        if let Some(ts) = &self.ts {
            encoder.write_timestamp(&ts.set, 0);
        }
        record(&mut encoder);
        if let Some(ts) = &self.ts {
            encoder.write_timestamp(&ts.set, 1);
            encoder.resolve_query_set(&ts.set, 0..2, &ts.resolve, 0);
            encoder.copy_buffer_to_buffer(&ts.resolve, 0, &ts.readback, 0, 16);
        }
        let index = ctx.queue().submit([encoder.finish()]);
        ctx.wait_idle().unwrap();
        let Some(ts) = &self.ts else {
            return (start.elapsed().as_secs_f64() * 1e3, index);
        };
        let slice = ts.readback.slice(..);
        slice.map_async(wgpu::MapMode::Read, |r| r.unwrap());
        ctx.wait_idle().unwrap();
        let ticks: [u64; 2] = {
            let view = slice.get_mapped_range().unwrap();
            bytemuck::pod_read_unaligned(&view[..16])
        };
        ts.readback.unmap();
        let ms = ticks[1].wrapping_sub(ticks[0]) as f64 * ts.period_ns / 1e6;
        (ms, index)
    }
}

pub fn variant_config(variant: &str) -> RmsPropConfig {
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

/// Bytes RMSprop must move per element: variable, gradient and velocity read, variable and velocity
/// written, plus 8 for momentum and 8 for the centered average.
pub fn bytes_per_element(variant: &str) -> f64 {
    match variant {
        "plain" => 20.0,
        "momentum" | "centered" => 28.0,
        _ => 36.0,
    }
}

/// An optimizer with variables of `sizes` and their gradients already in the gradient pool.
pub fn dense_optimizer(ctx: &GpuContext, variant: &str, sizes: &[usize]) -> (RmsProp, Vec<VarId>) {
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

pub fn resident(ids: &[VarId]) -> Vec<(VarId, Gradient<'static>)> {
    ids.iter().map(|&id| (id, Gradient::Resident)).collect()
}

/// `k` row indices into `rows` rows, about 20% of them repeats of earlier ones.
pub fn sparse_indices(rows: usize, k: usize) -> Vec<i64> {
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
    indices
}

struct MinimalChunk {
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The baseline: a WGSL kernel with the dense step's vec4 loads and stores (same workgroup size, grid
/// folding and buffer split at the binding limit) and trivial arithmetic.
pub struct Minimal {
    pipeline: wgpu::ComputePipeline,
    chunks: Vec<MinimalChunk>,
}

impl Minimal {
    pub fn new(ctx: &GpuContext, variant: &str, n: usize) -> Self {
        let device = ctx.device();
        let limits = device.limits();
        let max_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let chunk_vec4s = (max_bytes / 16) / 256 * 256;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bench_minimal.wgsl"),
            source: wgpu::ShaderSource::Wgsl(MINIMAL_WGSL.into()),
        });
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        let constants = [
            ("CENTERED", flag(variant.contains("centered"))),
            ("HAS_MOMENTUM", flag(variant.contains("momentum"))),
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
        let max_groups = u64::from(limits.max_compute_workgroups_per_dimension);
        let mut chunks = Vec::new();
        let mut left = n.div_ceil(4) as u64;
        while left > 0 {
            let vec4s = left.min(chunk_vec4s);
            left -= vec4s;
            let groups = vec4s.div_ceil(256);
            let (gx, gy) = wgpu_rmsprop::kernels::fold_grid(groups, max_groups);
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
            chunks.push(MinimalChunk {
                bind_group,
                groups: (gx as u32, gy as u32),
            });
        }
        Minimal { pipeline, chunks }
    }

    /// Dispatches per run (one per buffer chunk).
    pub fn dispatches(&self) -> usize {
        self.chunks.len()
    }

    /// Records one run into `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipeline);
        for c in &self.chunks {
            pass.set_bind_group(0, &c.bind_group, &[]);
            pass.dispatch_workgroups(c.groups.0, c.groups.1, 1);
        }
    }
}
