//! Embedding tables trained with sparse (IndexedSlices) RMSprop updates: matrix factorization of a
//! synthetic rank-4 ratings matrix. Each step a WGSL kernel computes the loss and the gradient rows of
//! the sampled users and items into GPU buffers; the optimizer applies them lazily (only the touched rows
//! of the tables and their slots change) with `Gradient::SparseGpu`. The loss falls; at the end the time
//! of a lazy sparse step is compared with a dense step over the same tables.
//!
//! `cargo run --release --example embeddings -- [--steps N] [--users N] [--items N] [--dtype f32|f16|bf16]
//! [--state f32|f16|bf16|q8] [--rowwise]`
//!
//! `--dtype` sets the optimizer's storage types as in `train` (`bf16`: tables and state in bfloat16;
//! `f16`: state in float16, f32 tables; the gradient rows stay f32). `--state` then sets the state's
//! type alone (`q8`: 8-bit block-wise quantized; a lazy step rewrites the blocks that hold the sampled
//! rows). `--rowwise` keeps one velocity per table row (`VarOptions::rowwise_velocity`, FBGEMM's
//! row-wise optimizers; no framework preset) instead of one per element: the velocity is `DIM` (16)
//! times smaller. Unknown options and malformed values exit with status 2.
//!
//! Last line: `final: steps=<n> first_loss=<x> last_loss=<y> sparse_ms_per_step=<a> dense_ms_per_step=<b>
//! dtype=<v> state=<s> velocity=<element|rowwise> state_bytes=<b>`

use std::error::Error;
use std::time::Instant;

use wgpu_rmsprop::{
    GpuContext, GpuGradient, Gradient, Indices, RmsProp, RmsPropConfig, StorageTypes, VarOptions,
};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/storage.rs"]
mod storage;

const SHADER: &str = include_str!("embeddings.wgsl");
const DIM: usize = 16;
const RANK: usize = 4;
const BATCH: usize = 256;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn uniform(&mut self, a: f32) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * a
    }
}

fn buffer(ctx: &GpuContext, label: &str, size: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (size as u64).max(16).next_multiple_of(16),
        usage,
        mapped_at_creation: false,
    })
}

/// Errors are printed with their message (Display), not as a Debug dump.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    env_logger::init();
    let mut cli = cli::Cli::new(
        "usage: embeddings [--steps N] [--users N] [--items N] [--dtype f32|f16|bf16] \
         [--state f32|f16|bf16|q8] [--rowwise]",
    );
    let mut rowwise = false;
    let (mut steps, mut users, mut items) = (3000, 5_000, 1_000);
    let mut storage_types = StorageTypes::default();
    while let Some(option) = cli.next_option() {
        match option.as_str() {
            "--steps" => steps = cli.count(&option),
            "--users" => users = cli.count(&option),
            "--items" => items = cli.count(&option),
            "--dtype" => storage_types = cli.dtype(&option),
            // The optimizer state's type alone (q8: 8-bit block-wise quantized, its lazy steps
            // rewriting the blocks around the listed rows).
            "--state" => storage_types.state = cli.state(&option),
            // One velocity per row of each table.
            "--rowwise" => rowwise = true,
            _ => cli.unknown(&option),
        }
    }
    let ctx = GpuContext::new()?;
    eprintln!("adapter: {}", ctx.adapter_description());
    let mut rng = Rng(7);
    // The ground truth: rank-4 factors; ratings are their dot products.
    let true_u: Vec<f32> = (0..users * RANK).map(|_| rng.uniform(1.0)).collect();
    let true_v: Vec<f32> = (0..items * RANK).map(|_| rng.uniform(1.0)).collect();
    let rating = |u: usize, i: usize| {
        (0..RANK)
            .map(|k| true_u[u * RANK + k] * true_v[i * RANK + k])
            .sum::<f32>()
    };

    let config = cli::with_storage(
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .name("embeddings"),
        storage_types,
    )
    .build()?;
    let mut opt = RmsProp::new(&ctx, config)?;
    let init_u: Vec<f32> = (0..users * DIM).map(|_| rng.uniform(0.3)).collect();
    let init_v: Vec<f32> = (0..items * DIM).map(|_| rng.uniform(0.3)).collect();
    let options = VarOptions {
        rowwise_velocity: rowwise,
        ..VarOptions::default()
    };
    let u = opt.add_variable_with("users", &[users, DIM], &init_u, &options)?;
    let v = opt.add_variable_with("items", &[items, DIM], &init_v, &options)?;
    // The loss kernel reads the 16-bit copy of the tables where the optimizer keeps one.
    let (us, vs) = match storage_types.copy {
        Some(_) => (opt.copy_slices(u)?, opt.copy_slices(v)?),
        None => (opt.variable_slices(u)?, opt.variable_slices(v)?),
    };
    if us.len() != 1 || vs.len() != 1 {
        return Err("each table is expected in one pool buffer (use smaller tables)".into());
    }

    let device = ctx.device();
    let rw =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let params = buffer(
        &ctx,
        "params",
        16,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    );
    let batch_buf = buffer(&ctx, "batch", BATCH * 16, rw);
    let du = buffer(&ctx, "user gradient rows", BATCH * DIM * 4, rw);
    let dv = buffer(&ctx, "item gradient rows", BATCH * DIM * 4, rw);
    let losses = buffer(&ctx, "losses", BATCH * 4, rw);
    let staging = buffer(
        &ctx,
        "read-out",
        BATCH * 4,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    // The type the variable pool holds (the slices say it); the element offsets of the tables in it.
    let var_dtype = us[0].dtype;
    let p: [u32; 4] = [
        BATCH as u32,
        DIM as u32,
        storage::element_offset(us[0].offset, var_dtype),
        storage::element_offset(vs[0].offset, var_dtype),
    ];
    ctx.queue()
        .write_buffer(&params, 0, bytemuck::cast_slice(&p));
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("embeddings.wgsl"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("embeddings"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[("VAR_DTYPE", storage::shader_code(var_dtype))],
            ..Default::default()
        },
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("embeddings"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: us[0].buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: vs[0].buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 3,
                resource: batch_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 4,
                resource: du.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 5,
                resource: dv.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 6,
                resource: losses.as_entire_binding(),
            },
        ],
    });
    let read_loss = || -> Result<f32, Box<dyn Error>> {
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&losses, 0, &staging, 0, (BATCH * 4) as u64);
        ctx.queue().submit([encoder.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait_idle()?;
        rx.recv()??;
        let mean = bytemuck::cast_slice::<u8, f32>(&slice.get_mapped_range()?)
            .iter()
            .sum::<f32>()
            / BATCH as f32;
        staging.unmap();
        Ok(mean)
    };

    let (mut user_rows, mut item_rows) = (vec![0i64; BATCH], vec![0i64; BATCH]);
    let mut samples = vec![[0u32; 4]; BATCH];
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    let start = Instant::now();
    for step in 1..=steps {
        // Sample the batch on the host (the data set), upload it, compute the gradient rows on the GPU.
        for b in 0..BATCH {
            let (uu, ii) = (rng.next() as usize % users, rng.next() as usize % items);
            user_rows[b] = uu as i64;
            item_rows[b] = ii as i64;
            samples[b] = [uu as u32, ii as u32, rating(uu, ii).to_bits(), 0];
        }
        ctx.queue()
            .write_buffer(&batch_buf, 0, bytemuck::cast_slice(&samples));
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(BATCH.div_ceil(64) as u32, 1, 1);
        }
        let recorded = opt.record(
            &mut encoder,
            &[
                (
                    u,
                    Gradient::SparseGpu {
                        indices: Indices::I64(&user_rows),
                        values: GpuGradient {
                            buffer: &du,
                            offset: 0,
                        },
                    },
                ),
                (
                    v,
                    Gradient::SparseGpu {
                        indices: Indices::I64(&item_rows),
                        values: GpuGradient {
                            buffer: &dv,
                            offset: 0,
                        },
                    },
                ),
            ],
        )?;
        opt.submit(encoder, recorded)?;
        if step == 1 || step % (steps / 10).max(1) == 0 || step == steps {
            // The loss of this step's batch (computed before the update).
            let loss = read_loss()?;
            if step == 1 {
                first = loss;
            }
            last = loss;
            println!("step {step:6}  batch_loss {loss:.5}");
        }
    }
    ctx.wait_idle()?;
    let sparse_ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;

    // The same tables updated densely (every row and slot), timed the same way.
    let dense_steps = 20;
    let start = Instant::now();
    for _ in 0..dense_steps {
        opt.apply(&[(u, Gradient::Resident), (v, Gradient::Resident)])?;
        ctx.wait_idle()?;
    }
    let dense_ms = start.elapsed().as_secs_f64() * 1e3 / dense_steps as f64;
    println!(
        "lazy sparse step ({BATCH} rows per table): {sparse_ms:.3} ms (with the loss kernel and submit); dense step over {} rows: {dense_ms:.3} ms",
        users + items
    );
    println!(
        "final: steps={steps} first_loss={first:.5} last_loss={last:.5} sparse_ms_per_step={sparse_ms:.3} dense_ms_per_step={dense_ms:.3} dtype={} state={} velocity={} state_bytes={}",
        storage_types.variable,
        storage_types.state,
        if rowwise { "rowwise" } else { "element" },
        opt.pool_stats().state_bytes
    );
    Ok(())
}
