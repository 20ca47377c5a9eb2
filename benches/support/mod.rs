//! Shared by the `bench` example and the criterion benches: the GPU timer (timestamp queries where the
//! device has them, else submit + wait), the minimal baseline kernel, and the bench cases' setup.
#![allow(dead_code)]

use std::time::Instant;

use wgpu_rmsprop::{
    ContextOptions, Dtype, GpuContext, Gradient, RmsProp, RmsPropConfig, StorageTypes, VarId,
};

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
    variant_config_in(variant, StorageTypes::default())
}

/// The variant's configuration with `storage` as its storage types.
pub fn variant_config_in(variant: &str, storage: StorageTypes) -> RmsPropConfig {
    variant_builder(variant, storage).build().unwrap()
}

/// The builder of [`variant_config_in`] (for further settings, e.g. the sparse mode).
pub fn variant_builder(variant: &str, storage: StorageTypes) -> wgpu_rmsprop::RmsPropConfigBuilder {
    let b = RmsPropConfig::builder()
        .learning_rate(1e-4)
        .storage(storage);
    match variant {
        "plain" => b,
        "momentum" => b.momentum(0.9),
        "centered" => b.centered(true),
        _ => b.momentum(0.9).centered(true),
    }
}

/// Bytes RMSprop must move per element, all f32: variable, gradient and velocity read, variable and
/// velocity written, plus 8 for momentum and 8 for the centered average (20/28/28/36).
pub fn bytes_per_element(variant: &str) -> f64 {
    bytes_per_element_in(variant, StorageTypes::default())
}

/// The optimizer state's slots of a variant: velocity, plus momentum, plus the centered average.
pub fn state_slots(variant: &str) -> u64 {
    1 + u64::from(variant.contains("momentum")) + u64::from(variant.contains("centered"))
}

/// Bytes RMSprop must move per element with `storage`: the variable read and written, the gradient
/// read, each state slot read and written, each in its role's type.
pub fn bytes_per_element_in(variant: &str, storage: StorageTypes) -> f64 {
    (2 * storage.variable.bytes()
        + storage.gradient.bytes()
        + 2 * state_slots(variant) * storage.state.bytes()) as f64
}

/// An optimizer with variables of `sizes` and their gradients already in the gradient pool.
pub fn dense_optimizer(ctx: &GpuContext, variant: &str, sizes: &[usize]) -> (RmsProp, Vec<VarId>) {
    dense_optimizer_in(ctx, variant, sizes, StorageTypes::default())
}

/// As [`dense_optimizer`], with `storage` as the storage types.
pub fn dense_optimizer_in(
    ctx: &GpuContext,
    variant: &str,
    sizes: &[usize],
    storage: StorageTypes,
) -> (RmsProp, Vec<VarId>) {
    let mut opt = RmsProp::new(ctx, variant_config_in(variant, storage)).unwrap();
    let ids: Vec<VarId> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let init: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.01).collect();
            opt.add_variable(&format!("w{k}"), &[n], &init).unwrap()
        })
        .collect();
    fill_gradients(ctx, &mut opt, &ids, |i| ((i % 13) as f32 - 6.0) * 0.1);
    (opt, ids)
}

/// Puts `grad(i)` as the gradient of element `i` of each variable into the gradient pool, and steps
/// with it. f32 gradients go through `apply_gradients` (one step per variable); 16-bit ones, which no
/// f32 host slice can carry, are written into the gradient pool in their type (two per u32 word,
/// element `2k` in the low half) and stepped once with `Gradient::Resident`.
pub fn fill_gradients(
    ctx: &GpuContext,
    opt: &mut RmsProp,
    ids: &[VarId],
    grad: impl Fn(usize) -> f32,
) {
    let dtype = opt.config().storage().gradient;
    for &id in ids {
        let n = opt.variable_info(id).unwrap().1.iter().product::<usize>();
        if dtype == Dtype::F32 {
            let g: Vec<f32> = (0..n).map(&grad).collect();
            opt.apply_gradients(&[(id, &g)]).unwrap();
            continue;
        }
        for s in opt.gradient_slices(id).unwrap() {
            let words: Vec<u32> = (s.first_element..s.first_element + s.len)
                .step_by(2)
                .map(|i| {
                    let hi = if i + 1 < s.first_element + s.len {
                        dtype.to_bits16(grad(i + 1))
                    } else {
                        0
                    };
                    u32::from(dtype.to_bits16(grad(i))) | (u32::from(hi) << 16)
                })
                .collect();
            ctx.queue()
                .write_buffer(&s.buffer, s.offset, bytemuck::cast_slice(&words));
        }
    }
    if dtype != Dtype::F32 {
        opt.apply(&resident(ids)).unwrap();
    }
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
/// folding and buffer split at the binding limit) and trivial arithmetic. It moves f32 vec4s; with
/// 16-bit storage types each buffer holds the bytes of its role instead (`n` times the role's element
/// bytes, in f32 vec4s: a 16-bit role's buffer has half the vec4s, touched by the first half of the
/// invocations), so that it moves the bytes the step moves, role by role.
pub struct Minimal {
    pipeline: wgpu::ComputePipeline,
    chunks: Vec<MinimalChunk>,
}

impl Minimal {
    pub fn new(ctx: &GpuContext, variant: &str, n: usize) -> Self {
        Self::with_storage(ctx, variant, n, StorageTypes::default())
    }

    /// The baseline of a step with `storage` as its storage types.
    pub fn with_storage(ctx: &GpuContext, variant: &str, n: usize, storage: StorageTypes) -> Self {
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
        let split = !storage.is_f32();
        let constants = [
            ("CENTERED", flag(variant.contains("centered"))),
            ("HAS_MOMENTUM", flag(variant.contains("momentum"))),
            ("SPLIT", flag(split)),
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
        // Elements per chunk: as many as f32 vec4s fit in a binding.
        let mut left = n as u64;
        while left > 0 {
            let elements = left.min(chunk_vec4s * 4);
            left -= elements;
            // vec4s of the variable, gradient and state buffers, and of the grid (the largest).
            let role = |d: Dtype| (elements * d.bytes()).div_ceil(16);
            let ends = [
                role(storage.variable),
                role(storage.gradient),
                role(storage.state),
            ];
            let vec4s = ends.into_iter().max().unwrap();
            let groups = vec4s.div_ceil(256);
            let (gx, gy) = wgpu_rmsprop::kernels::fold_grid(groups, max_groups);
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("minimal params"),
                size: 32,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let [x_end, g_end, s_end] = ends.map(|e| e as u32);
            ctx.queue().write_buffer(
                &uniform,
                0,
                bytemuck::cast_slice(&[vec4s as u32, gx as u32, x_end, g_end, s_end, 0, 0, 0]),
            );
            let buffers: Vec<wgpu::Buffer> = (0..5)
                .map(|k| {
                    let used = k < 3
                        || (k == 3 && variant.contains("momentum"))
                        || (k == 4 && variant.contains("centered"));
                    let vec4s = if split { ends[k.min(2)] } else { vec4s };
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("minimal state"),
                        size: if used { vec4s.max(1) * 16 } else { 16 },
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
