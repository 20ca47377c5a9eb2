//! The submit protocol, layouts a caller can bind, and batched read-back, through the public API only:
//! recorded steps count only once resolved; an abandoned step leaves every count, table and slot as it
//! was; unresolved steps make state calls fail with a typed error; slices sit on the device's binding
//! alignment and go stale (a typed error) when the pools move.

mod common;

use common::{assert_matches, ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Error, GpuGradient, Gradient, Indices, OptimizerOptions, RmsProp, RmsPropConfig, Slot, Tensor,
};

fn clipped() -> RmsPropConfig {
    RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .centered(true)
        .global_clipnorm(0.5)
        .build()
        .unwrap()
}

fn encoder() -> wgpu::CommandEncoder {
    ctx().device().create_command_encoder(&Default::default())
}

/// An optimizer with the clipped configuration and two variables `a` ([n_a]) and `b` ([rows, 10]),
/// the twin with the same, and the generator for the gradients.
fn two_variables(
    options: OptimizerOptions,
    seed: u64,
    n_a: usize,
    rows: usize,
) -> (RmsProp, [wgpu_rmsprop::VarId; 2], Reference, Rng) {
    let cfg = clipped();
    let mut rng = Rng::new(seed);
    let (a0, b0) = (rng.vec(n_a, 1.0, 0), rng.vec(rows * 10, 1.0, 0));
    let mut opt = RmsProp::with_options(ctx(), cfg.clone(), options).unwrap();
    let a = opt.add_variable("a", &[n_a], &a0).unwrap();
    let b = opt.add_variable("b", &[rows, 10], &b0).unwrap();
    let mut r = Reference::new(cfg);
    r.add_variable(&[n_a], &a0);
    r.add_variable(&[rows, 10], &b0);
    (opt, [a, b], r, rng)
}

#[test]
fn an_abandoned_step_leaves_counts_tables_and_state_as_they_were() {
    let (mut opt, [a, b], mut r, mut rng) = two_variables(OptimizerOptions::default(), 7, 5, 30);
    // Step 1: only `a` (its norm-job table is staged and, once submitted, kept on the GPU).
    let ga = rng.vec(5, 2.0, 0);
    opt.apply(&[(a, Gradient::Dense(&ga))]).unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), None]).unwrap();
    let before = snapshot(&mut opt, &[a, b]);
    // A step listing both variables (a new job table), recorded, then its encoder dropped.
    let gb = rng.vec(300, 2.0, 0);
    let mut e = encoder();
    let step = opt
        .record(
            &mut e,
            &[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))],
        )
        .unwrap();
    assert_eq!(step.step(), 2);
    assert_eq!(opt.iterations(), 1);
    drop(e);
    assert_eq!(opt.abandon(step).unwrap(), 1);
    assert_eq!(snapshot(&mut opt, &[a, b]), before);
    assert_eq!(opt.last_learning_rate(), Some(0.01));
    // The abandoned step's table never reached the GPU: had it been believed there, this step (with
    // the same table) would have skipped writing it and read step 1's jobs (clipping with the wrong
    // norm).
    opt.apply(&[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))])
        .unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    opt.apply(&[(a, Gradient::Dense(&ga))]).unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), None]).unwrap();
    assert_eq!(opt.iterations(), 3);
    assert_matches(&mut opt, a, &r.vars[0], "a");
    assert_matches(&mut opt, b, &r.vars[1], "b");
}

#[test]
fn unresolved_steps_refuse_every_state_call_until_resolved() {
    let mut opt = RmsProp::new(ctx(), clipped()).unwrap();
    let w = opt.add_variable("w", &[8], &[1.0; 8]).unwrap();
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-protocol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("c.safetensors");
    opt.save_checkpoint(&ckpt, true).unwrap();
    let mut e = encoder();
    let step = opt
        .record(&mut e, &[(w, Gradient::Dense(&[0.5; 8]))])
        .unwrap();
    let unresolved = |r: Result<(), Error>, what: &str| match r {
        Err(Error::UnresolvedSteps { count: 1, .. }) => {}
        other => panic!("{what}: {other:?}"),
    };
    unresolved(opt.add_variable("v", &[2], &[0.0; 2]).map(|_| ()), "add");
    unresolved(opt.read_variable(w).map(|_| ()), "read_variable");
    unresolved(opt.read_slot(w, Slot::Velocity).map(|_| ()), "read_slot");
    unresolved(
        opt.read_many(&[(w, Tensor::Variable)]).map(|_| ()),
        "read_many",
    );
    unresolved(opt.save_checkpoint(&ckpt, true), "save");
    unresolved(opt.load_checkpoint(&ckpt), "load");
    unresolved(opt.apply_gradients(&[(w, &[0.5; 8])]).map(|_| ()), "apply");
    unresolved(opt.skipped_steps().map(|_| ()), "skipped_steps");
    let message = opt.read_variable(w).unwrap_err().to_string();
    assert!(message.contains("RmsProp::submitted"), "{message}");
    assert_eq!(opt.num_variables(), 1);
    assert_eq!(opt.submit(e, step).unwrap(), 1);
    // Everything works again, and the step ran once.
    let mut r = Reference::new(clipped());
    r.add_variable(&[8], &[1.0; 8]);
    r.step(&[Some(RefGradient::Dense(&[0.5; 8]))]).unwrap();
    assert_matches(&mut opt, w, &r.vars[0], "after resolving");
    opt.add_variable("v", &[2], &[0.0; 2]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resolving_a_step_resolves_those_before_it_and_abandoning_one_abandons_those_after_it() {
    let mut opt = RmsProp::new(ctx(), RmsPropConfig::default()).unwrap();
    let w = opt.add_variable("w", &[4], &[1.0; 4]).unwrap();
    let before = snapshot(&mut opt, &[w]);
    // Abandoning the first abandons the second, which was recorded on top of it.
    let mut e = encoder();
    let first = opt
        .record(&mut e, &[(w, Gradient::Dense(&[1.0; 4]))])
        .unwrap();
    let second = opt
        .record(&mut e, &[(w, Gradient::Dense(&[2.0; 4]))])
        .unwrap();
    assert_eq!((first.step(), second.step()), (1, 2));
    assert_eq!(opt.unresolved_steps(), 2);
    assert_eq!(opt.learning_rate().unwrap(), 0.001);
    drop(e);
    assert_eq!(opt.abandon(first).unwrap(), 2);
    assert_eq!(opt.unresolved_steps(), 0);
    assert_eq!(snapshot(&mut opt, &[w]), before);
    // Its token is refused afterwards.
    let e2 = opt.submitted(second, ctx().queue().submit([])).unwrap_err();
    assert!(
        matches!(e2, Error::StepResolution { step: 2, .. }),
        "{e2:?}"
    );
    // Resolving the second of two submitted steps resolves both.
    let mut e = encoder();
    let first = opt
        .record(&mut e, &[(w, Gradient::Dense(&[1.0; 4]))])
        .unwrap();
    let second = opt
        .record(&mut e, &[(w, Gradient::Dense(&[2.0; 4]))])
        .unwrap();
    let index = ctx().queue().submit([e.finish()]);
    assert_eq!(opt.submitted(second, index).unwrap(), 2);
    let e3 = opt.submitted(first, ctx().queue().submit([])).unwrap_err();
    assert!(
        matches!(e3, Error::StepResolution { step: 1, .. }),
        "{e3:?}"
    );
    let mut r = Reference::new(RmsPropConfig::default());
    r.add_variable(&[4], &[1.0; 4]);
    r.step(&[Some(RefGradient::Dense(&[1.0; 4]))]).unwrap();
    r.step(&[Some(RefGradient::Dense(&[2.0; 4]))]).unwrap();
    assert_matches(&mut opt, w, &r.vars[0], "two steps, one submit");
    // A step of another optimizer is refused (and `submit` submits nothing then); a lost token is
    // recovered with abandon_all.
    let mut other = RmsProp::new(ctx(), RmsPropConfig::default()).unwrap();
    let o = other.add_variable("o", &[1], &[0.0]).unwrap();
    let mut e = encoder();
    let foreign = other
        .record(&mut e, &[(o, Gradient::Dense(&[1.0]))])
        .unwrap();
    let e4 = opt.submit(e, foreign).unwrap_err();
    assert!(matches!(e4, Error::StepResolution { .. }), "{e4:?}");
    assert_eq!(other.unresolved_steps(), 1);
    assert_eq!(other.abandon_all(), 1);
    assert_eq!(other.read_variable(o).unwrap(), vec![0.0]);
}

/// While a step is unresolved, a later step re-stages its tables even when they equal what the GPU
/// held before (the earlier step's different table lands in between).
#[test]
fn tables_are_staged_again_while_earlier_steps_are_unresolved() {
    let (mut opt, [a, b], mut r, mut rng) = two_variables(OptimizerOptions::default(), 9, 6, 7);
    let (ga, gb) = (rng.vec(6, 2.0, 0), rng.vec(70, 2.0, 0));
    // Both (the job table grows to its size), then `b` alone: its norm job is then the table's first,
    // where a table of `a` and `b` has `a`'s.
    opt.apply(&[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))])
        .unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    opt.apply(&[(b, Gradient::Dense(&gb))]).unwrap();
    r.step(&[None, Some(RefGradient::Dense(&gb))]).unwrap();
    let mut e = encoder();
    let both = opt
        .record(
            &mut e,
            &[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))],
        )
        .unwrap();
    let only_b = opt.record(&mut e, &[(b, Gradient::Dense(&gb))]).unwrap();
    drop(both);
    opt.submit(e, only_b).unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    r.step(&[None, Some(RefGradient::Dense(&gb))]).unwrap();
    assert_matches(&mut opt, a, &r.vars[0], "a");
    assert_matches(&mut opt, b, &r.vars[1], "b");
}

/// Past `max_staging_bytes`, a step's host data goes through a one-off buffer copied in encoder order
/// (it used to go through `queue.write_buffer`, landing at the next submit even when the step was
/// abandoned): an abandoned oversized step leaves the tables and gradients of later steps right.
#[test]
fn an_abandoned_step_with_oversized_host_data_lands_nowhere() {
    let options = OptimizerOptions {
        max_staging_bytes: 0,
        ..Default::default()
    };
    let (mut opt, [a, b], mut r, mut rng) = two_variables(options, 5, 6, 7);
    let (ga, gb) = (rng.vec(6, 2.0, 0), rng.vec(70, 2.0, 0));
    opt.apply(&[(a, Gradient::Dense(&ga))]).unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), None]).unwrap();
    let poison = vec![1e6f32; 70];
    let mut e = encoder();
    let step = opt
        .record(
            &mut e,
            &[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&poison))],
        )
        .unwrap();
    drop(e);
    opt.abandon(step).unwrap();
    opt.apply(&[(a, Gradient::Dense(&ga))]).unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), None]).unwrap();
    opt.apply(&[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))])
        .unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    assert_matches(&mut opt, a, &r.vars[0], "a");
    assert_matches(&mut opt, b, &r.vars[1], "b");
}

#[test]
fn forgotten_resolutions_stop_at_the_cap_instead_of_growing() {
    let options = OptimizerOptions {
        max_unresolved_steps: 8,
        ..Default::default()
    };
    let mut opt = RmsProp::with_options(ctx(), RmsPropConfig::default(), options).unwrap();
    let w = opt.add_variable("w", &[1000], &[0.0; 1000]).unwrap();
    let g = vec![0.1f32; 1000];
    let mut e = encoder();
    let mut steps = Vec::new();
    for _ in 0..8 {
        steps.push(opt.record(&mut e, &[(w, Gradient::Dense(&g))]).unwrap());
    }
    let objects = opt.gpu_objects_created();
    let err = opt.record(&mut e, &[(w, Gradient::Dense(&g))]).unwrap_err();
    assert!(
        matches!(err, Error::UnresolvedSteps { count: 8, .. }),
        "{err:?}"
    );
    assert_eq!(opt.gpu_objects_created(), objects);
    let index = ctx().queue().submit([e.finish()]);
    for s in steps {
        opt.submitted(s, index.clone()).unwrap();
    }
    assert_eq!(opt.iterations(), 8);
}

#[test]
fn resident_steps_after_the_pools_moved_are_refused_until_slices_are_taken_again() {
    let mut opt = RmsProp::new(ctx(), RmsPropConfig::default()).unwrap();
    let w = opt.add_variable("w", &[4], &[1.0; 4]).unwrap();
    let old = opt.gradient_slices(w).unwrap();
    let version = opt.layout_version();
    assert_eq!(old[0].layout, version);
    // Adding a variable within the chunk's capacity moves nothing.
    opt.add_variable("small", &[16], &[0.0; 16]).unwrap();
    assert_eq!(opt.layout_version(), version);
    opt.apply(&[(w, Gradient::Resident)]).unwrap();
    // A variable past the capacity grows the chunk: every buffer in it moves.
    opt.add_variable("big", &[100_000], &vec![0.0; 100_000])
        .unwrap();
    assert!(opt.layout_version() > version);
    let before = snapshot(&mut opt, &[w]);
    let e = opt.apply(&[(w, Gradient::Resident)]).unwrap_err();
    assert!(matches!(e, Error::StaleLayout { .. }), "{e:?}");
    assert_eq!(snapshot(&mut opt, &[w]), before);
    // Taking another variable's slices (or `w`'s variable slices) does not make `w`'s gradient fresh.
    let big = opt.variable("big").unwrap();
    opt.gradient_slices(big).unwrap();
    opt.variable_slices(w).unwrap();
    let e = opt.apply(&[(w, Gradient::Resident)]).unwrap_err();
    assert!(matches!(e, Error::StaleLayout { .. }), "{e:?}");
    let new = opt.gradient_slices(w).unwrap();
    assert_ne!(new[0].buffer, old[0].buffer);
    assert_eq!(new[0].layout, opt.layout_version());
    opt.apply(&[(w, Gradient::Resident)]).unwrap();
    // Frozen: no more variables, the slices stay valid.
    opt.freeze_layout();
    let e = opt.add_variable("late", &[1], &[0.0]).unwrap_err();
    assert!(matches!(e, Error::LayoutFrozen { .. }), "{e:?}");
}

/// Binds a gradient slice at its own offset in a caller's shader (the whole point of the alignment),
/// with 256-byte slices on lavapipe (as real GPUs and WebGPU ask), and steps with `Resident`: every
/// variable matches the twin, in one dispatch per pool buffer despite the padding between variables.
#[test]
fn aligned_slices_bind_at_their_offset_and_keep_one_dispatch_per_pool_buffer() {
    const WRITE: &str = r#"
@group(0) @binding(0) var<storage, read_write> g: array<f32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < arrayLength(&src) { g[id.x] = src[id.x]; }
}
"#;
    let device = ctx().device();
    let options = OptimizerOptions {
        slice_alignment: Some(256),
        ..Default::default()
    };
    let cfg = RmsPropConfig::builder()
        .momentum(0.5)
        .learning_rate(0.05)
        .build()
        .unwrap();
    let mut opt = RmsProp::with_options(ctx(), cfg.clone(), options).unwrap();
    let mut rng = Rng::new(3);
    // Odd sizes around the workgroup size, and a 100k-row embedding table.
    let sizes = [1usize, 3, 63, 64, 65, 257, 100_000 * 8];
    let mut r = Reference::new(cfg);
    let mut ids = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let init = rng.vec(n, 1.0, 0);
        let shape = if n == 800_000 {
            vec![100_000, 8]
        } else {
            vec![n]
        };
        ids.push(opt.add_variable(&format!("v{k}"), &shape, &init).unwrap());
        r.add_variable(&shape, &init);
    }
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("write gradient"),
        source: wgpu::ShaderSource::Wgsl(WRITE.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let mut groups = Vec::new();
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 1.0, 0)).collect();
    let mut sources = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        let s = opt.gradient_slices(id).unwrap().remove(0);
        assert_eq!(s.offset % 256, 0, "v{k} at {}", s.offset);
        assert_eq!(s.offset % align, 0);
        let src = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (grads[k].len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx()
            .queue()
            .write_buffer(&src, 0, bytemuck::cast_slice(&grads[k]));
        groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &s.buffer,
                        offset: s.offset,
                        size: wgpu::BufferSize::new(s.bound_bytes()),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: src.as_entire_binding(),
                },
            ],
        }));
        sources.push(src);
    }
    let resident: Vec<_> = ids.iter().map(|&id| (id, Gradient::Resident)).collect();
    for _ in 0..3 {
        let mut e = encoder();
        {
            let mut pass = e.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            for (k, bg) in groups.iter().enumerate() {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups((sizes[k] as u32).div_ceil(64), 1, 1);
            }
        }
        let step = opt.record(&mut e, &resident).unwrap();
        assert_eq!(opt.last_step_dispatches(), opt.pool_stats().chunks);
        opt.submit(e, step).unwrap();
        let refs: Vec<_> = grads.iter().map(|g| Some(RefGradient::Dense(g))).collect();
        r.step(&refs).unwrap();
    }
    for (k, &id) in ids.iter().enumerate() {
        assert_matches(&mut opt, id, &r.vars[k], &format!("v{k}"));
    }
}

#[test]
fn a_variable_added_from_a_gpu_buffer_and_batched_reads() {
    let device = ctx().device();
    let cfg = RmsPropConfig::builder().momentum(0.9).build().unwrap();
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut rng = Rng::new(11);
    let init = rng.vec(1030, 1.0, 0);
    let src = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 8 + 1030 * 4,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx()
        .queue()
        .write_buffer(&src, 8, bytemuck::cast_slice(&init));
    let small = opt.add_variable("small", &[3], &[1.0, 2.0, 3.0]).unwrap();
    let w = opt
        .add_variable_from_buffer(
            "w",
            &[103, 10],
            GpuGradient {
                buffer: &src,
                offset: 8,
            },
        )
        .unwrap();
    // Too short a buffer: a typed error, nothing added.
    let e = opt
        .add_variable_from_buffer(
            "x",
            &[2000],
            GpuGradient {
                buffer: &src,
                offset: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::GradientBuffer { .. }), "{e:?}");
    // A buffer of another device: what the host cannot check is wgpu's error (kept as the source),
    // before the pools move; nothing is added.
    let other = wgpu_rmsprop::GpuContext::new().unwrap();
    let foreign = other.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * 1030,
        usage: wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let e = opt
        .add_variable_from_buffer(
            "x",
            &[1030],
            GpuGradient {
                buffer: &foreign,
                offset: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Wgpu { .. }), "{e:?}");
    assert_eq!(opt.num_variables(), 2);
    assert_eq!(opt.read_variable(w).unwrap(), init);
    let mut r = Reference::new(cfg);
    r.add_variable(&[3], &[1.0, 2.0, 3.0]);
    r.add_variable(&[103, 10], &init);
    for _ in 0..3 {
        let (gs, gw) = (rng.vec(3, 1.0, 0), rng.vec(1030, 1.0, 0));
        opt.apply(&[(small, Gradient::Dense(&gs)), (w, Gradient::Dense(&gw))])
            .unwrap();
        r.step(&[Some(RefGradient::Dense(&gs)), Some(RefGradient::Dense(&gw))])
            .unwrap();
    }
    assert_matches(&mut opt, w, &r.vars[1], "w");
    // One batched read (a future, awaited) of everything equals the single reads.
    let items = [
        (w, Tensor::Variable),
        (w, Tensor::Slot(Slot::Velocity)),
        (small, Tensor::Slot(Slot::Momentum)),
        (small, Tensor::Variable),
    ];
    let batched = pollster::block_on(opt.read_async(&items).unwrap()).unwrap();
    assert_eq!(batched[0], r.vars[1].x);
    assert_eq!(batched[1], r.vars[1].v);
    assert_eq!(batched[2], *r.vars[0].m.as_ref().unwrap());
    assert_eq!(batched[3], r.vars[0].x);
    assert_eq!(opt.read_many(&items).unwrap(), batched);
    // Into the caller's buffer, in the caller's encoder.
    let dst = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 + 4 * 2066,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut e = encoder();
    let placed = opt.record_read(&mut e, &items, &dst, 4).unwrap();
    assert_eq!(placed, vec![(4, 1030), (4124, 1030), (8244, 3), (8256, 3)]);
    let bad = opt.record_read(&mut e, &items, &dst, 8).unwrap_err();
    assert!(matches!(bad, Error::GradientBuffer { .. }), "{bad:?}");
    ctx().queue().submit([e.finish()]);
    let back = opt
        .add_variable_from_buffer(
            "copy",
            &[1030],
            GpuGradient {
                buffer: &dst,
                offset: 4124,
            },
        )
        .unwrap();
    assert_eq!(opt.read_variable(back).unwrap(), r.vars[1].v);
    // Resident gradients persist until cleared.
    let g = opt.read_many(&[(w, Tensor::Gradient)]).unwrap();
    assert!(g[0].iter().any(|&x| x != 0.0));
    let mut e = encoder();
    opt.clear_gradients(&mut e, &[w]).unwrap();
    ctx().queue().submit([e.finish()]);
    let g = opt.read_many(&[(w, Tensor::Gradient)]).unwrap();
    assert!(g[0].iter().all(|&x| x == 0.0));
}

/// A sparse step whose values exceed one storage binding is refused before anything is encoded, and
/// never breaks later steps (the values buffer used to grow past the binding limit, and every later
/// step failed). Lavapipe allows 128 MiB per binding: 100 MiB of values fit, 130 MiB do not.
#[test]
fn a_step_past_the_binding_limit_is_a_typed_error_that_does_not_stick() {
    let limit = ctx().device().limits().max_storage_buffer_binding_size;
    let (rows, cols) = (70_000usize, 512usize);
    let mut opt = RmsProp::new(ctx(), RmsPropConfig::default()).unwrap();
    let t = opt
        .add_variable("table", &[rows, cols], &vec![0.5; rows * cols])
        .unwrap();
    let mut step = |k: usize| {
        let indices: Vec<i64> = (0..k as i64).map(|i| (i * 7) % rows as i64).collect();
        let values = vec![0.25f32; k * cols];
        opt.apply(&[(
            t,
            Gradient::Sparse {
                indices: Indices::I64(&indices),
                values: &values,
            },
        )])
    };
    let fits = |bytes: u64| bytes <= limit;
    let k65 = (65 << 20) / (cols * 4);
    let k100 = (100 << 20) / (cols * 4);
    let too_many = (limit as usize) / (cols * 4) + 1;
    assert!(fits((k100 * cols * 4) as u64));
    step(k65).unwrap();
    step(k100).unwrap();
    let e = step(too_many).unwrap_err();
    assert!(matches!(e, Error::StepTooLarge { .. }), "{e:?}");
    assert_eq!(step(10).unwrap(), 3);
    let x = opt.read_many(&[(t, Tensor::Variable)]).unwrap();
    // Row 0 was listed in all three applied steps, the last row in none.
    assert_ne!(x[0][0], 0.5);
    assert_eq!(x[0][rows * cols - 1], 0.5);
}
