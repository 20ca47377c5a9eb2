//! `RmsProp::record_catch_up` (`SparseMode::LazyExact`): given rows brought up to date inside the
//! caller's encoder, with indices on the GPU, before a forward pass that gathers them. Checked against
//! the twin (`ReferenceState::catch_up_rows`) on the raw GPU buffers (no read that would catch every
//! row up): listed rows caught up, the others left as they were, for the variable and every slot;
//! then against dense steps after more steps. Also: host rows, repeats, out-of-range GPU indices,
//! the step protocol (a catch-up is resolved like a step and does not count as one) and refusals.

mod common;

use common::trio::{keras, map, raw, Trio};
use common::{ctx, Rng};
use wgpu_rmsprop::reference::ReferenceState;
use wgpu_rmsprop::{
    Error, GpuIndices, Gradient, Indices, RmsProp, RmsPropConfig, Rows, Slot, SparseMode, VarId,
    WeightDecay,
};

/// Every tensor of `state` (the variable and the slots it keeps) against the GPU's raw buffers, within
/// `rtol` of each tensor's largest magnitude.
fn raw_close(opt: &mut RmsProp, id: VarId, state: &ReferenceState, rtol: f32, label: &str) {
    let mut pairs = vec![
        ("x", raw(opt, id, None), state.x.clone()),
        ("v", raw(opt, id, Some(Slot::Velocity)), state.v.clone()),
    ];
    if let Some(m) = &state.m {
        pairs.push(("m", raw(opt, id, Some(Slot::Momentum)), m.clone()));
    }
    if let Some(a) = &state.a {
        pairs.push(("a", raw(opt, id, Some(Slot::AverageGradient)), a.clone()));
    }
    for (name, got, want) in pairs {
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= rtol * scale,
                "{label} {name}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }
}

/// A forward pass's gather: `out[k * ROW_LEN + c] = table[ids[k] * ROW_LEN + c]`, binding the
/// variable's slice as a caller's shader does.
fn gather(
    enc: &mut wgpu::CommandEncoder,
    opt: &mut RmsProp,
    id: VarId,
    ids: &wgpu::Buffer,
    n: usize,
    row_len: usize,
) -> wgpu::Buffer {
    let device = ctx().device();
    let source = format!(
        "@group(0) @binding(0) var<storage, read> table: array<f32>;
         @group(0) @binding(1) var<storage, read> ids: array<i32>;
         @group(0) @binding(2) var<storage, read_write> out: array<f32>;
         @compute @workgroup_size(64)
         fn main(@builtin(global_invocation_id) g: vec3<u32>) {{
             let t = g.x;
             if t >= {total}u {{ return; }}
             out[t] = table[u32(ids[t / {row_len}u]) * {row_len}u + t % {row_len}u];
         }}",
        total = n * row_len
    );
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("gather"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("gather"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let slices = opt.variable_slices(id).unwrap();
    assert_eq!(slices.len(), 1, "a small table lives in one pool buffer");
    let table = &slices[0];
    let bytes = (n * row_len * 4) as u64;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("gathered"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &table.buffer,
                    offset: table.offset,
                    size: std::num::NonZeroU64::new(table.bound_bytes()),
                }),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: ids.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: out.as_entire_binding(),
            },
        ],
    });
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(((n * row_len) as u32).div_ceil(64), 1, 1);
    }
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    enc.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
    staging
}

fn index_buffer(ids: &[i32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    ctx()
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("ids"),
            contents: bytemuck::cast_slice(ids),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// Lazy steps over rows 0..40 of a 100 x 5 table (rows 40.. never listed).
fn trained(b: wgpu_rmsprop::RmsPropConfigBuilder, rng: &mut Rng) -> Trio {
    let mut t = Trio::new(b, &[[100, 5]], 21);
    for s in 0..12 {
        let rows = vec![s % 40, (s * 7 + 3) % 40, (s * 13 + 1) % 40];
        t.step(&[Some(rows)], rng, 1.0);
    }
    t
}

#[test]
fn a_forward_pass_gathers_rows_caught_up_from_gpu_indices() {
    let cases = [
        ("keras momentum", keras(0.01).momentum(0.9)),
        (
            "keras centered momentum decoupled decay",
            keras(0.01)
                .momentum(0.8)
                .centered(true)
                .weight_decay_mode(WeightDecay::Decoupled(0.1)),
        ),
        (
            "torch momentum",
            RmsPropConfig::preset(wgpu_rmsprop::Preset::Torch).momentum(0.9),
        ),
        (
            "keras decay under a schedule, history 4 (reset every 4 lazy steps)",
            keras(0.0)
                .learning_rate(wgpu_rmsprop::Schedule::ExponentialDecay {
                    initial_learning_rate: 0.05,
                    decay_steps: 3.0,
                    decay_rate: 0.5,
                    staircase: false,
                })
                .momentum(0.5)
                .weight_decay_mode(WeightDecay::Decoupled(0.1))
                .lazy_exact_history(4),
        ),
    ];
    for (label, b) in cases {
        let mut rng = Rng::new(5);
        let mut t = trained(b, &mut rng);
        let id = t.ids[0];
        // The ids of the next batch: repeats, a row never listed, a row listed in the last step, one
        // out of range (skipped and counted).
        let ids = [17, 3, 17, 99, 0, 42, 3, 100];
        let valid: Vec<usize> = ids
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| i < 100)
            .collect();
        let before = t.exact.vars[0].clone();
        let mut after = before.clone();
        after.catch_up_rows(&t.exact.config, &valid);
        assert!(
            valid.iter().any(|&r| after.x[r * 5] != before.x[r * 5]),
            "{label}: the listed rows were behind"
        );
        let invalid_before = t.opt.invalid_gpu_indices().unwrap();
        let buffer = index_buffer(&ids);
        let device = ctx().device();
        let mut enc = device.create_command_encoder(&Default::default());
        let rows = Rows::Gpu(GpuIndices {
            buffer: &buffer,
            offset: 0,
            len: ids.len() - 1,
        });
        let token = t.opt.record_catch_up(&mut enc, &[(id, rows)]).unwrap();
        assert_eq!(token.step(), 12, "a catch-up runs at the current count");
        let staging = gather(&mut enc, &mut t.opt, id, &buffer, ids.len() - 1, 5);
        assert_eq!(t.opt.submit(enc, token).unwrap(), 12, "{label}: not a step");
        let got = map(&staging);
        for (k, &r) in ids[..ids.len() - 1].iter().enumerate() {
            let r = r as usize;
            for c in 0..5 {
                let (g, w) = (got[k * 5 + c], after.x[r * 5 + c]);
                assert!(
                    (g - w).abs() <= 2e-6 * w.abs().max(1.0),
                    "{label}: gathered row {r}[{c}]: {g} vs {w}"
                );
            }
        }
        // The listed rows caught up, the others as they were: variable and every slot.
        raw_close(&mut t.opt, id, &after, 2e-6, label);
        // The out-of-range index, in a catch-up of its own.
        let mut enc = device.create_command_encoder(&Default::default());
        let rows = Rows::Gpu(GpuIndices {
            buffer: &buffer,
            offset: 4 * (ids.len() as u64 - 1),
            len: 1,
        });
        let token = t.opt.record_catch_up(&mut enc, &[(id, rows)]).unwrap();
        t.opt.submit(enc, token).unwrap();
        assert_eq!(t.opt.invalid_gpu_indices().unwrap(), invalid_before + 1);
        raw_close(&mut t.opt, id, &after, 2e-6, label);
        // Training goes on: the twin follows the row catch-up; the reads catch every row up.
        t.exact.vars[0] = after;
        for s in 0..6 {
            t.step(&[Some(vec![s, 17, 60])], &mut rng, 1.0);
        }
        t.check(2e-5, label);
    }
}

#[test]
fn a_catch_up_and_a_step_in_one_encoder_resolve_together() {
    let mut rng = Rng::new(8);
    let mut t = trained(keras(0.01).momentum(0.9), &mut rng);
    let id = t.ids[0];
    // Host rows (repeats), then a lazy step recorded into the same encoder: the step's submit
    // resolves both; the count moves by one.
    let rows = [5usize, 33, 5, 77];
    t.exact.vars[0].catch_up_rows(&t.exact.config, &rows);
    let host: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let device = ctx().device();
    let mut enc = device.create_command_encoder(&Default::default());
    let c = t
        .opt
        .record_catch_up(&mut enc, &[(id, Rows::Host(Indices::I64(&host)))])
        .unwrap();
    let values = rng.vec(10, 1.0, 0);
    let g = [(
        id,
        Gradient::Sparse {
            indices: Indices::I64(&[33, 90]),
            values: &values,
        },
    )];
    let step = t.opt.record(&mut enc, &g).unwrap();
    assert_eq!((c.step(), step.step()), (12, 13));
    assert_eq!(t.opt.unresolved_steps(), 2);
    assert_eq!(t.opt.submit(enc, step).unwrap(), 13);
    assert_eq!(t.opt.unresolved_steps(), 0);
    let rg = [Some(wgpu_rmsprop::reference::RefGradient::Sparse {
        indices: &[33, 90],
        values: &values,
    })];
    t.exact.step(&rg).unwrap();
    t.dense.step(&rg).unwrap();
    raw_close(&mut t.opt, id, &t.exact.vars[0].clone(), 2e-6, "raw");
    t.check(2e-5, "after");
    // An abandoned catch-up (encoder dropped) changes nothing.
    let before = raw(&mut t.opt, id, None);
    let mut enc = device.create_command_encoder(&Default::default());
    let c = t
        .opt
        .record_catch_up(&mut enc, &[(id, Rows::Host(Indices::I64(&host)))])
        .unwrap();
    drop(enc);
    assert_eq!(t.opt.abandon(c).unwrap(), 1);
    assert_eq!((t.opt.iterations(), t.opt.unresolved_steps()), (13, 0));
    assert_eq!(raw(&mut t.opt, id, None), before);
}

#[test]
fn bad_rows_are_refused_before_anything_is_recorded() {
    let mut rng = Rng::new(2);
    let mut t = trained(keras(0.01).momentum(0.9), &mut rng);
    let id = t.ids[0];
    let x = raw(&mut t.opt, id, None);
    let v = raw(&mut t.opt, id, Some(Slot::Velocity));
    let device = ctx().device();
    let small = index_buffer(&[1, 2]);
    let mut other = RmsProp::new(
        ctx(),
        keras(0.01)
            .sparse_mode(SparseMode::LazyExact)
            .build()
            .unwrap(),
    )
    .unwrap();
    let foreign = other.add_variable("f", &[4, 5], &[0.0; 20]).unwrap();
    let scalar = t.opt.add_variable("s", &[], &[1.0]).unwrap();
    let host = |i: &'static [i64]| Rows::Host(Indices::I64(i));
    let cases: Vec<(&str, Vec<(VarId, Rows)>)> = vec![
        ("out of range", vec![(id, host(&[3, 100]))]),
        ("negative", vec![(id, host(&[-1]))]),
        ("twice", vec![(id, host(&[1])), (id, host(&[2]))]),
        ("foreign", vec![(foreign, host(&[1]))]),
        ("scalar", vec![(scalar, host(&[0]))]),
        (
            "past the buffer",
            vec![(
                id,
                Rows::Gpu(GpuIndices {
                    buffer: &small,
                    offset: 4,
                    len: 2,
                }),
            )],
        ),
    ];
    for (label, rows) in cases {
        let mut enc = device.create_command_encoder(&Default::default());
        let e = t.opt.record_catch_up(&mut enc, &rows).unwrap_err();
        let fits = match label {
            "out of range" | "negative" => matches!(e, Error::IndexOutOfRange { .. }),
            "twice" => matches!(e, Error::DuplicateGradient { .. }),
            "foreign" => matches!(e, Error::UnknownVariable(_)),
            "scalar" => matches!(e, Error::SparseScalar { .. }),
            _ => matches!(e, Error::GradientBuffer { .. }),
        };
        assert!(fits, "{label}: {e}");
        ctx().queue().submit([enc.finish()]);
        assert_eq!(t.opt.unresolved_steps(), 0, "{label}");
    }
    assert_eq!(raw(&mut t.opt, id, None), x);
    assert_eq!(raw(&mut t.opt, id, Some(Slot::Velocity)), v);
    // Nothing sticks: a catch-up and a read afterwards.
    t.opt
        .catch_up_rows(&[(id, Rows::Host(Indices::I64(&[1, 2])))])
        .unwrap();
    t.check(2e-5, "after refusals");
    // Other sparse modes: nothing to catch up, a token all the same.
    let mut lazy = RmsProp::new(
        ctx(),
        keras(0.01).sparse_mode(SparseMode::Lazy).build().unwrap(),
    )
    .unwrap();
    let l = lazy.add_variable("l", &[4, 2], &[1.0; 8]).unwrap();
    lazy.catch_up_rows(&[(l, Rows::Host(Indices::I64(&[0, 3])))])
        .unwrap();
    assert_eq!(lazy.read_variable(l).unwrap(), vec![1.0; 8]);
}
