//! Trains a 64-64-10 MLP on the 8x8 handwritten digits (1,797 images, 10 classes) entirely on the GPU:
//! forward and backward passes in WGSL (`train_mlp.wgsl`), the update from this crate. The backward pass
//! writes the gradients straight into the optimizer's gradient buffer and each step is recorded into the
//! same encoder (`Gradient::Resident`, `record`): no host round trip per step, only the per-epoch loss
//! read-out. Prints a line per epoch, writes a PNG plot of the train and test loss, and ends with
//!
//! ```text
//! final: epochs=<n> train_loss=<x> test_loss=<y> test_accuracy=<z> seconds=<s> plot=<path> dtype=<v> state=<s> state_bytes=<b> [copy=<c>]
//! ```
//!
//! `cargo run --release --example train -- [--epochs N] [--plot PATH] [--ema MOMENTUM] [--dtype f32|f16|bf16]`
//!
//! `mpirun -n N train --distributed` (built with `--features distributed`): data-parallel training with
//! the optimizer state sharded across the ranks (`wgpu_rmsprop::distributed::ShardedRmsProp`). Each rank
//! computes the gradient of its block of every batch of 64 (the same global batch; the per-sample
//! gradients are divided by 64 and summed across ranks), the sharded step updates every rank's copy
//! of the weights; rank 0 prints the epoch lines (losses with 7 digits) and the `final:` line, which
//! adds `ranks=N` (`state_bytes` is rank 0's), and writes the plot. f32 only (no `--dtype`, `--state`, `--ema`).
//!
//! `--dtype` sets the optimizer's storage types: `bf16` keeps the weights and the optimizer state in
//! bfloat16, `f16` the state in float16 with f32 weights; the gradients stay f32. `dtype` and `state` on
//! the `final:` line are the weights' and the state's types, `state_bytes` the optimizer state's bytes
//! (`PoolStats::state_bytes`). The shaders read the weights in the type the pool holds. Unknown options
//! and malformed values exit with status 2.
//!
//! With `--ema MOMENTUM` the optimizer keeps Keras's moving average of the weights (`use_ema`), and the
//! test set is also evaluated with the averages (swapped in on the GPU, then back): the `final:` line
//! then has `ema_test_accuracy=<a>` after `test_accuracy`.

use std::error::Error;
use std::time::Instant;

use wgpu_rmsprop::{GpuContext, Gradient, RmsProp, RmsPropConfig, StorageTypes, VarId};

#[cfg(feature = "distributed")]
#[path = "support/train_sharded.rs"]
mod sharded;
#[cfg(not(feature = "distributed"))]
mod sharded {
    /// Without the feature there is no sharded optimizer: `--distributed` is refused.
    pub struct Sharded;
    impl Sharded {
        pub fn new(
            _: &wgpu_rmsprop::GpuContext,
            _: wgpu_rmsprop::RmsPropConfig,
            _: &[(&str, Vec<usize>, Vec<f32>)],
        ) -> Result<Sharded, Box<dyn std::error::Error>> {
            Err("--distributed needs the example built with `--features distributed`".into())
        }
        pub fn rank_block(&self, _: usize) -> std::ops::Range<usize> {
            0..0
        }
        pub fn ranks(&self) -> usize {
            1
        }
        pub fn rank(&self) -> usize {
            0
        }
        pub fn buffers(&self) -> (&wgpu::Buffer, &wgpu::Buffer, [u32; 4]) {
            unreachable!()
        }
        pub fn step(&mut self) -> Result<u64, Box<dyn std::error::Error>> {
            unreachable!()
        }
        pub fn sum(&mut self, _: f64) -> f64 {
            unreachable!()
        }
        pub fn state_bytes(&self) -> u64 {
            0
        }
        pub fn iterations(&self) -> u64 {
            0
        }
    }
}

#[path = "support/cli.rs"]
mod cli;
#[path = "support/storage.rs"]
mod storage;

const SHADER: &str = include_str!("train_mlp.wgsl");
const IN: usize = 64;
const HID: usize = 64;
const OUT: usize = 10;
const BATCH: usize = 64;
/// Steps recorded per submit (each step's parameters and data land in encoder order, so any number works).
const STEPS_PER_SUBMIT: usize = 4;

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
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.next() as usize % (i + 1));
        }
    }
}

fn load_digits() -> Result<(Vec<f32>, Vec<u32>), Box<dyn Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits.csv");
    let text = std::fs::read_to_string(&path)?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != IN + 1 {
            return Err(format!(
                "{}:{}: {} fields, expected {}",
                path.display(),
                n + 1,
                fields.len(),
                IN + 1
            )
            .into());
        }
        for f in &fields[..IN] {
            x.push(f.trim().parse::<f32>()? / 16.0);
        }
        y.push(fields[IN].trim().parse::<u32>()?);
    }
    Ok((x, y))
}

struct Split {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    order: wgpu::Buffer,
    losses: wgpu::Buffer,
    correct: wgpu::Buffer,
    n: usize,
}

fn storage(ctx: &GpuContext, label: &str, data: &[u8]) -> wgpu::Buffer {
    let b = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (data.len() as u64).max(16).next_multiple_of(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(&b, 0, data);
    b
}

fn split(ctx: &GpuContext, x: &[f32], y: &[u32], rows: &[usize], name: &str) -> Split {
    let xs: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r * IN..(r + 1) * IN].iter().copied())
        .collect();
    let ys: Vec<u32> = rows.iter().map(|&r| y[r]).collect();
    let order: Vec<u32> = (0..rows.len() as u32).collect();
    let zeros = vec![0u8; rows.len() * 4];
    Split {
        x: storage(ctx, &format!("{name} x"), bytemuck::cast_slice(&xs)),
        y: storage(ctx, &format!("{name} y"), bytemuck::cast_slice(&ys)),
        order: storage(ctx, &format!("{name} order"), bytemuck::cast_slice(&order)),
        losses: storage(ctx, &format!("{name} losses"), &zeros),
        correct: storage(ctx, &format!("{name} correct"), &zeros),
        n: rows.len(),
    }
}

/// Reads `len` floats of `src` through a reused staging buffer.
fn read(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    src: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<f32>, Box<dyn Error>> {
    read_at(ctx, staging, src, 0, len)
}

/// Reads `len` 32-bit values of `src` from byte `offset` on, as f32.
fn read_at(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    src: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<f32>, Box<dyn Error>> {
    let bytes = len as u64 * 4;
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(src, offset, staging, 0, bytes);
    ctx.queue().submit([encoder.finish()]);
    let slice = staging.slice(0..bytes);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait_idle()?;
    rx.recv()??;
    let out = bytemuck::cast_slice::<u8, f32>(&slice.get_mapped_range()?).to_vec();
    staging.unmap();
    Ok(out)
}

fn plot(path: &str, train: &[f32], test: &[f32]) -> Result<(), Box<dyn Error>> {
    use plotters::prelude::*;
    // Text needs a font: take DejaVu Sans where the system has it, else draw without labels.
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok());
    let labels = match font {
        Some(bytes) => plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .is_ok(),
        None => false,
    };
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = train.iter().chain(test).fold(0.0f32, |a, &b| a.max(b)) * 1.05;
    let epochs = train.len() as u32;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60);
    if labels {
        builder.caption(
            "MLP on 8x8 digits, RMSprop on the GPU: cross-entropy loss",
            ("sans-serif", 22),
        );
    }
    let mut chart = builder.build_cartesian_2d(1u32..epochs.max(2), 0f32..top)?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("loss")
            .draw()?;
    } else {
        chart.configure_mesh().x_labels(0).y_labels(0).draw()?;
    }
    let series = |v: &[f32]| {
        v.iter()
            .enumerate()
            .map(|(i, &l)| (i as u32 + 1, l))
            .collect::<Vec<_>>()
    };
    let train_line = chart.draw_series(LineSeries::new(series(train), BLUE.stroke_width(2)))?;
    if labels {
        train_line
            .label("train")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    }
    let test_line = chart.draw_series(LineSeries::new(series(test), RED.stroke_width(2)))?;
    if labels {
        test_line
            .label("test")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
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
        "usage: train [--epochs N] [--plot PATH] [--ema MOMENTUM] [--dtype f32|f16|bf16] \
         [--state f32|f16|bf16|q8] [--distributed]",
    );
    let (mut epochs, mut plot_path) = (40, "train_loss.png".to_string());
    let mut ema: Option<f64> = None;
    let mut storage_types = StorageTypes::default();
    let mut distributed = false;
    while let Some(option) = cli.next_option() {
        match option.as_str() {
            "--epochs" => epochs = cli.count(&option),
            "--plot" => plot_path = cli.raw(&option, "a PATH"),
            "--ema" => ema = Some(cli.value(&option, "a MOMENTUM")),
            "--dtype" => storage_types = cli.dtype(&option),
            // The optimizer state's type alone (q8: 8-bit block-wise quantized; every variable
            // here, down to the 10 biases, so that the parameters share one pool buffer).
            "--state" => storage_types.state = cli.state(&option),
            "--distributed" => distributed = true,
            _ => cli.unknown(&option),
        }
    }
    let start = Instant::now();

    let (x, y) = load_digits()?;
    let n = y.len();
    let mut rng = Rng(42);
    let mut rows: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut rows);
    let n_train = n * 4 / 5;
    if distributed && (ema.is_some() || storage_types != StorageTypes::default()) {
        cli.fail("--distributed trains f32 weights and state only (no --ema, --dtype, --state)");
    }
    let ctx = GpuContext::new()?;
    eprintln!("adapter: {}", ctx.adapter_description());
    let train = split(&ctx, &x, &y, &rows[..n_train], "train");
    let test = split(&ctx, &x, &y, &rows[n_train..], "test");

    // The parameters live in the optimizer's pools.
    let mut config = cli::with_storage(
        RmsPropConfig::builder()
            .learning_rate(0.002)
            .name("mlp")
            .q8_min_size(1),
        storage_types,
    );
    if let Some(m) = ema {
        config = config.use_ema(true).ema_momentum(m);
    }
    let config = config.build()?;
    let glorot = |rng: &mut Rng, fan_in: usize, fan_out: usize| {
        let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
        (0..fan_in * fan_out)
            .map(|_| rng.uniform(a))
            .collect::<Vec<f32>>()
    };
    let init = [
        ("w1", vec![IN, HID], glorot(&mut rng, IN, HID)),
        ("b1", vec![HID], vec![0.0; HID]),
        ("w2", vec![HID, OUT], glorot(&mut rng, HID, OUT)),
        ("b2", vec![OUT], vec![0.0; OUT]),
    ];
    // One process: the parameters live in the optimizer's pools. Distributed: in the sharded
    // optimizer's full-variable buffers (every rank a copy), its state sharded.
    let mut shard = if distributed {
        Some(sharded::Sharded::new(&ctx, config.clone(), &init)?)
    } else {
        None
    };
    let mut opt = RmsProp::new(&ctx, config)?;
    let mut ids = Vec::new();
    // The buffers the shaders bind, the element offsets of the four parameters and of their
    // gradients, and the type the variable buffer holds.
    let (param_buffer, grad_buffer, offsets, grad_offsets, var_dtype) = match &shard {
        Some(sh) => {
            let (p, g, at) = sh.buffers();
            (p.clone(), g.clone(), at, at, wgpu_rmsprop::Dtype::F32)
        }
        None => {
            for (name, shape, values) in &init {
                ids.push(opt.add_variable(name, shape, values)?);
            }
            // The forward pass reads the 16-bit copy of the weights where the optimizer keeps one.
            let mut params = Vec::new();
            let mut grads = Vec::new();
            for &id in &ids {
                params.push(match storage_types.copy {
                    Some(_) => opt.copy_slices(id)?.remove(0),
                    None => opt.variable_slices(id)?.remove(0),
                });
                grads.push(opt.gradient_slices(id)?.remove(0));
            }
            if params.iter().any(|p| p.buffer != params[0].buffer)
                || grads.iter().any(|g| g.buffer != grads[0].buffer)
            {
                return Err("the parameters are expected in one pool buffer".into());
            }
            // The type the variable pool holds (the slices say it).
            let var_dtype = params[0].dtype;
            let offset = |i: usize| storage::element_offset(params[i].offset, var_dtype);
            let grad_offset = |i: usize| storage::element_offset(grads[i].offset, grads[i].dtype);
            (
                params[0].buffer.clone(),
                grads[0].buffer.clone(),
                [offset(0), offset(1), offset(2), offset(3)],
                [
                    grad_offset(0),
                    grad_offset(1),
                    grad_offset(2),
                    grad_offset(3),
                ],
                var_dtype,
            )
        }
    };
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("read-out"),
        size: (train.n.max(test.n) * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    // Scratch activations and the pipeline (one layout for the four entry points).
    let max_n = BATCH.max(test.n);
    let device = ctx.device();
    let h = storage(&ctx, "h", &vec![0u8; max_n * HID * 4]);
    let dlogits = storage(&ctx, "dlogits", &vec![0u8; max_n * OUT * 4]);
    let dh = storage(&ctx, "dh", &vec![0u8; max_n * HID * 4]);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("train_mlp.wgsl"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let entry =
        |binding: u32, ty: wgpu::BufferBindingType, dynamic: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: dynamic,
                min_binding_size: None,
            },
            count: None,
        };
    let ro = wgpu::BufferBindingType::Storage { read_only: true };
    let rw = wgpu::BufferBindingType::Storage { read_only: false };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("mlp"),
        entries: &[
            entry(0, wgpu::BufferBindingType::Uniform, true),
            entry(1, ro, false),
            entry(2, rw, false),
            entry(3, ro, false),
            entry(4, ro, false),
            entry(5, ro, false),
            entry(6, rw, false),
            entry(7, rw, false),
            entry(8, rw, false),
            entry(9, rw, false),
            entry(10, rw, false),
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("mlp"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = |name: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(name),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("VAR_DTYPE", storage::shader_code(var_dtype))],
                ..Default::default()
            },
            cache: None,
        })
    };
    let (hidden, output, grad_out, grad_hidden) = (
        pipeline("hidden"),
        pipeline("output"),
        pipeline("grad_out"),
        pipeline("grad_hidden"),
    );

    // One uniform slot per batch of an epoch, and one for the test set.
    let batches = train.n / BATCH;
    const SLOT: usize = 48;
    let stride = (SLOT as u64).next_multiple_of(u64::from(
        device.limits().min_uniform_buffer_offset_alignment,
    ));
    let mut slots = vec![0u8; (batches + 1) * stride as usize];
    for s in 0..=batches {
        // Distributed: this rank's block of the batch, every sample's gradient divided by the whole
        // batch's size (the ranks' parts are summed).
        let (base, count, inv) = if s < batches {
            match &shard {
                Some(sh) => {
                    let r = sh.rank_block(BATCH);
                    (s * BATCH + r.start, r.len(), 1.0 / BATCH as f32)
                }
                None => (s * BATCH, BATCH, 1.0 / BATCH as f32),
            }
        } else {
            (0, test.n, 1.0 / test.n as f32)
        };
        let p: [u32; SLOT / 4] = [
            base as u32,
            count as u32,
            offsets[0],
            offsets[1],
            offsets[2],
            offsets[3],
            inv.to_bits(),
            0,
            grad_offsets[0],
            grad_offsets[1],
            grad_offsets[2],
            grad_offsets[3],
        ];
        let at = s * stride as usize;
        slots[at..at + SLOT].copy_from_slice(bytemuck::cast_slice(&p));
    }
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("mlp batches"),
        size: slots.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(&uniform, 0, &slots);
    let bind = |s: &Split| {
        let buffers = [
            &param_buffer,
            &grad_buffer,
            &s.x,
            &s.y,
            &s.order,
            &h,
            &dlogits,
            &dh,
            &s.losses,
            &s.correct,
        ];
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &uniform,
                offset: 0,
                size: wgpu::BufferSize::new(SLOT as u64),
            }),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mlp"),
            layout: &layout,
            entries: &entries,
        })
    };
    let (train_bg, test_bg) = (bind(&train), bind(&test));
    let groups = |items: usize| items.div_ceil(64) as u32;
    let resident: Vec<(VarId, Gradient)> = ids.iter().map(|&id| (id, Gradient::Resident)).collect();

    let (mut train_curve, mut test_curve) = (Vec::new(), Vec::new());
    let mut order: Vec<u32> = (0..train.n as u32).collect();
    let mut accuracy = 0.0;
    for epoch in 1..=epochs {
        rng.shuffle(&mut order);
        ctx.queue()
            .write_buffer(&train.order, 0, bytemuck::cast_slice(&order));
        let mut encoder = device.create_command_encoder(&Default::default());
        // Steps recorded into `encoder`, resolved with the index of the submit that carries them.
        let mut recorded = Vec::with_capacity(STEPS_PER_SUBMIT);
        for b in 0..batches {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_bind_group(0, &train_bg, &[(b as u64 * stride) as u32]);
                for (pipe, items) in [
                    (&hidden, BATCH * HID),
                    (&output, BATCH),
                    (&grad_out, (HID * OUT + OUT).max(BATCH * HID)),
                    (&grad_hidden, IN * HID + HID),
                ] {
                    pass.set_pipeline(pipe);
                    pass.dispatch_workgroups(groups(items), 1, 1);
                }
            }
            // Distributed: the batch's passes, then the sharded step (it reads the gradient buffer
            // after them and writes the updated weights before the next batch's passes).
            if let Some(sh) = shard.as_mut() {
                ctx.queue().submit([std::mem::replace(
                    &mut encoder,
                    device.create_command_encoder(&Default::default()),
                )
                .finish()]);
                sh.step()?;
                continue;
            }
            recorded.push(opt.record(&mut encoder, &resident)?);
            if (b + 1) % STEPS_PER_SUBMIT == 0 {
                let index = ctx.queue().submit([std::mem::replace(
                    &mut encoder,
                    device.create_command_encoder(&Default::default()),
                )
                .finish()]);
                for step in recorded.drain(..) {
                    opt.submitted(step, index.clone())?;
                }
            }
        }
        // Test set: the forward pass only.
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &test_bg, &[(batches as u64 * stride) as u32]);
            pass.set_pipeline(&hidden);
            pass.dispatch_workgroups(groups(test.n * HID), 1, 1);
            pass.set_pipeline(&output);
            pass.dispatch_workgroups(groups(test.n), 1, 1);
        }
        let index = ctx.queue().submit([encoder.finish()]);
        for step in recorded.drain(..) {
            opt.submitted(step, index.clone())?;
        }
        let seen = batches * BATCH;
        let mut train_loss = read(&ctx, &staging, &train.losses, seen)?
            .iter()
            .sum::<f32>();
        // Distributed: each rank has the losses of its blocks; the sum over the ranks.
        if let Some(sh) = shard.as_mut() {
            train_loss = sh.sum(f64::from(train_loss)) as f32;
        }
        let train_loss = train_loss / seen as f32;
        let test_loss = read(&ctx, &staging, &test.losses, test.n)?
            .iter()
            .sum::<f32>()
            / test.n as f32;
        accuracy = read(&ctx, &staging, &test.correct, test.n)?
            .iter()
            .sum::<f32>()
            / test.n as f32;
        train_curve.push(train_loss);
        test_curve.push(test_loss);
        if let Some(sh) = &shard {
            // Rank 0 prints for all (every rank has the same losses).
            if sh.rank() != 0 {
                continue;
            }
            println!(
                "epoch {epoch:3}/{epochs}  train_loss {train_loss:.7}  test_loss {test_loss:.7}  test_accuracy {:.2}%  step {}",
                accuracy * 100.0,
                sh.iterations()
            );
            continue;
        }
        println!(
            "epoch {epoch:3}/{epochs}  train_loss {train_loss:.4}  test_loss {test_loss:.4}  test_accuracy {:.2}%  step {}",
            accuracy * 100.0,
            opt.iterations()
        );
    }
    // The test set with the moving averages of the weights (Keras's finalize_variable_values), then
    // the trained weights back.
    let mut ema_accuracy = String::new();
    if ema.is_some() {
        opt.swap_ema_weights()?;
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &test_bg, &[(batches as u64 * stride) as u32]);
            pass.set_pipeline(&hidden);
            pass.dispatch_workgroups(groups(test.n * HID), 1, 1);
            pass.set_pipeline(&output);
            pass.dispatch_workgroups(groups(test.n), 1, 1);
        }
        ctx.queue().submit([encoder.finish()]);
        let a = read(&ctx, &staging, &test.correct, test.n)?
            .iter()
            .sum::<f32>()
            / test.n as f32;
        opt.swap_ema_weights()?;
        ema_accuracy = format!(" ema_test_accuracy={a:.4}");
    }
    if shard.as_ref().is_some_and(|sh| sh.rank() != 0) {
        return Ok(());
    }
    plot(&plot_path, &train_curve, &test_curve)?;
    // The 16-bit copy of the weights the forward pass read (master weights), if any.
    let mut copy = storage_types
        .copy
        .map_or(String::new(), |c| format!(" copy={c}"));
    let mut state_bytes = opt.pool_stats().state_bytes;
    if let Some(sh) = &shard {
        copy = format!(" ranks={}", sh.ranks());
        state_bytes = sh.state_bytes();
    }
    println!(
        "final: epochs={epochs} train_loss={:.4} test_loss={:.4} test_accuracy={:.4}{ema_accuracy} seconds={:.1} plot={plot_path} dtype={} state={} state_bytes={}{copy}",
        train_curve.last().copied().unwrap_or(f32::NAN),
        test_curve.last().copied().unwrap_or(f32::NAN),
        accuracy,
        start.elapsed().as_secs_f64(),
        storage_types.variable,
        storage_types.state,
        state_bytes,
    );
    Ok(())
}
