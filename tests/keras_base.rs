//! Keras's optimizer base class: `loss_scale_factor`, `gradient_accumulation_steps` and the EMA. The GPU against
//! the CPU twin bit for bit (variables and every slot, several steps), the protocol (an abandoned step
//! does not advance accumulation), typed errors that write nothing, and checkpoints.

mod common;

use common::{ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Error, Gradient, Indices, NonFinite, RmsProp, RmsPropConfig, RmsPropConfigBuilder, Slot, VarId,
};

const SHAPES: [&[usize]; 3] = [&[7], &[4, 5], &[300]];

fn setup(b: RmsPropConfigBuilder) -> (RmsProp, Reference, Vec<VarId>, Rng) {
    let cfg = b.build().unwrap();
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut r = Reference::new(cfg);
    let mut rng = Rng::new(17);
    let mut ids = Vec::new();
    for (i, shape) in SHAPES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let init = rng.vec(n, 1.0, 0);
        ids.push(opt.add_variable(&format!("w{i}"), shape, &init).unwrap());
        r.add_variable(shape, &init);
    }
    (opt, r, ids, rng)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Variables and every slot, bit for bit (within the tests' tolerance with clipnorm or
/// global_clipnorm: the twin sums the norms' squares in f64, the GPU in a fixed f32 tree).
fn assert_bitwise(opt: &mut RmsProp, r: &Reference, ids: &[VarId], label: &str) {
    let c = &r.config;
    if c.clipnorm().is_some() || c.global_clipnorm().is_some() {
        for (i, &id) in ids.iter().enumerate() {
            common::assert_matches(opt, id, &r.vars[i], &format!("{label} var{i}"));
            if let Some(e) = &r.vars[i].ema {
                common::assert_close(label, &opt.read_slot(id, Slot::Ema).unwrap(), e);
            }
        }
        assert_eq!(opt.iterations(), r.iterations, "{label} iterations");
        return;
    }
    for (i, &id) in ids.iter().enumerate() {
        let v = &r.vars[i];
        assert_eq!(
            bits(&opt.read_variable(id).unwrap()),
            bits(&v.x),
            "{label} x{i}"
        );
        let slots: [(Slot, Option<&Vec<f32>>); 4] = [
            (Slot::Velocity, Some(&v.v)),
            (Slot::Momentum, v.m.as_ref()),
            (Slot::AverageGradient, v.a.as_ref()),
            (Slot::Ema, v.ema.as_ref()),
        ];
        for (slot, want) in slots {
            match want {
                Some(want) => assert_eq!(
                    bits(&opt.read_slot(id, slot).unwrap()),
                    bits(want),
                    "{label} {slot:?}{i}"
                ),
                None => assert!(opt.read_slot(id, slot).is_err()),
            }
        }
    }
    assert_eq!(opt.iterations(), r.iterations, "{label} iterations");
}

/// `steps` steps of random dense gradients (scaled by `scale`) on both, compared after each.
fn run(
    opt: &mut RmsProp,
    r: &mut Reference,
    ids: &[VarId],
    rng: &mut Rng,
    steps: usize,
    scale: f32,
) {
    for s in 0..steps {
        let grads: Vec<Vec<f32>> = SHAPES
            .iter()
            .map(|sh| {
                let n: usize = sh.iter().product();
                rng.vec(n, 1.0, 5).iter().map(|x| x * scale).collect()
            })
            .collect();
        let g: Vec<(VarId, &[f32])> = ids
            .iter()
            .copied()
            .zip(grads.iter().map(|v| &v[..]))
            .collect();
        opt.apply_gradients(&g).unwrap();
        let rg: Vec<Option<RefGradient>> =
            grads.iter().map(|v| Some(RefGradient::Dense(v))).collect();
        r.step(&rg).unwrap();
        assert_bitwise(opt, r, ids, &format!("step {}", s + 1));
    }
}

#[test]
fn loss_scale_matches_the_twin_bit_for_bit() {
    for b in [
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.9)
            .loss_scale_factor(1000.0),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .centered(true)
            .clipnorm(0.5)
            .loss_scale_factor(3.0),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .clipvalue(0.1)
            .loss_scale_factor(0.25),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .global_clipnorm(1.0)
            .weight_decay(0.1)
            .loss_scale_factor(7.0),
    ] {
        let (mut opt, mut r, ids, mut rng) = setup(b);
        run(&mut opt, &mut r, &ids, &mut rng, 4, 1000.0);
    }
}

#[test]
fn loss_scale_changes_the_clipping_input() {
    // clipvalue 0.1 on g = 10: without the scale it clips to 0.1; with scale 100 it is 0.1 / 1 ... the
    // update equals the unscaled gradient's (Keras divides first).
    let mk = |b: RmsPropConfigBuilder| {
        let mut opt = RmsProp::new(ctx(), b.learning_rate(0.1).build().unwrap()).unwrap();
        let w = opt.add_variable("w", &[1], &[1.0]).unwrap();
        (opt, w)
    };
    let (mut a, wa) = mk(RmsPropConfig::builder()
        .clipvalue(0.1)
        .loss_scale_factor(100.0));
    let (mut b, wb) = mk(RmsPropConfig::builder().clipvalue(0.1));
    a.apply_gradients(&[(wa, &[5.0])]).unwrap();
    b.apply_gradients(&[(wb, &[0.05])]).unwrap();
    assert_eq!(
        a.read_slot(wa, Slot::Velocity).unwrap(),
        b.read_slot(wb, Slot::Velocity).unwrap()
    );
}

#[test]
fn accumulation_matches_the_twin_bit_for_bit() {
    for b in [
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .gradient_accumulation_steps(3),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .centered(true)
            .clipnorm(0.5)
            .weight_decay(0.05)
            .gradient_accumulation_steps(2)
            .loss_scale_factor(128.0),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .global_clipnorm(1.0)
            .non_finite(NonFinite::SkipStep)
            .gradient_accumulation_steps(2)
            .loss_scale_factor(8.0),
    ] {
        let (mut opt, mut r, ids, mut rng) = setup(b);
        run(&mut opt, &mut r, &ids, &mut rng, 7, 10.0);
    }
}

#[test]
fn steps_that_only_accumulate_change_nothing_visible_and_one_dispatch_each() {
    let (mut opt, _, ids, _) = setup(
        RmsPropConfig::builder()
            .momentum(0.9)
            .gradient_accumulation_steps(3),
    );
    let before = snapshot(&mut opt, &ids);
    let g: Vec<Vec<f32>> = SHAPES
        .iter()
        .map(|s| vec![0.5; s.iter().product()])
        .collect();
    let grads: Vec<(VarId, &[f32])> = ids.iter().copied().zip(g.iter().map(|v| &v[..])).collect();
    opt.apply_gradients(&grads).unwrap();
    assert_eq!(
        opt.last_step_dispatches(),
        1,
        "one pool buffer: one accumulate dispatch"
    );
    let after = snapshot(&mut opt, &ids);
    assert_eq!(after.1, before.1, "variables and slots unchanged");
    assert_eq!(after.0, 1);
    opt.apply_gradients(&grads).unwrap();
    opt.apply_gradients(&grads).unwrap();
    assert_eq!(opt.last_step_dispatches(), 2, "prepare + update");
    assert_ne!(snapshot(&mut opt, &ids).1, before.1);
}

#[test]
fn an_abandoned_step_does_not_advance_accumulation() {
    let b = || {
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .gradient_accumulation_steps(2)
            .loss_scale_factor(4.0)
    };
    let (mut opt, mut r, ids, mut rng) = setup(b());
    run(&mut opt, &mut r, &ids, &mut rng, 1, 1.0);
    // Step 2 is recorded (it would update) and abandoned: the accumulator and the count stay.
    let g: Vec<Vec<f32>> = SHAPES
        .iter()
        .map(|s| vec![100.0; s.iter().product()])
        .collect();
    let grads: Vec<(VarId, Gradient)> = ids
        .iter()
        .copied()
        .zip(g.iter().map(|v| Gradient::Dense(v)))
        .collect();
    let mut encoder = ctx().device().create_command_encoder(&Default::default());
    let step = opt.record(&mut encoder, &grads).unwrap();
    drop(encoder);
    opt.abandon(step).unwrap();
    assert_eq!(opt.iterations(), 1);
    run(&mut opt, &mut r, &ids, &mut rng, 5, 1.0);
}

#[test]
fn bad_values_are_typed_errors_naming_the_value() {
    for (b, field, value) in [
        (
            RmsPropConfig::builder().loss_scale_factor(0.0),
            "loss_scale_factor",
            "0",
        ),
        (
            RmsPropConfig::builder().loss_scale_factor(-2.0),
            "loss_scale_factor",
            "-2",
        ),
        (
            RmsPropConfig::builder().loss_scale_factor(f64::NAN),
            "loss_scale_factor",
            "NaN",
        ),
        (
            RmsPropConfig::builder().loss_scale_factor(f64::INFINITY),
            "loss_scale_factor",
            "inf",
        ),
        (
            RmsPropConfig::builder().loss_scale_factor(1e-60),
            "loss_scale_factor",
            "0.000000000000000000000000000000000000000000000000000000000001",
        ),
        (
            RmsPropConfig::builder().gradient_accumulation_steps(0),
            "gradient_accumulation_steps",
            "0",
        ),
        (
            RmsPropConfig::builder().gradient_accumulation_steps(1),
            "gradient_accumulation_steps",
            "1",
        ),
    ] {
        match b.build() {
            Err(Error::InvalidConfig {
                field: f, value: v, ..
            }) => {
                assert_eq!((f, v.as_str()), (field, value));
            }
            other => panic!("{field}={value}: {other:?}"),
        }
    }
    let (mut opt, _, ids, _) = setup(RmsPropConfig::builder().loss_scale_factor(2.0));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            opt.set_loss_scale_factor(bad),
            Err(Error::InvalidConfig {
                field: "loss_scale_factor",
                ..
            })
        ));
    }
    assert_eq!(opt.config().loss_scale_factor(), Some(2.0));
    let _ = ids;
}

#[test]
fn gpu_sparse_gradients_with_accumulation_are_refused_and_nothing_is_written() {
    use wgpu::util::DeviceExt;
    let (mut opt, _, ids, _) = setup(RmsPropConfig::builder().gradient_accumulation_steps(2));
    let before = snapshot(&mut opt, &ids);
    let buffer = ctx()
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&[1.0f32; 5]),
            usage: wgpu::BufferUsages::COPY_SRC,
        });
    let err = opt
        .apply(&[(
            ids[1],
            Gradient::SparseGpu {
                indices: Indices::I64(&[2]),
                values: wgpu_rmsprop::GpuGradient {
                    buffer: &buffer,
                    offset: 0,
                },
            },
        )])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "gradient_accumulation_steps",
                ..
            }
        ),
        "{err}"
    );
    // A host sparse gradient with an index out of range: refused before anything is written.
    let err = opt
        .apply(&[(
            ids[1],
            Gradient::Sparse {
                indices: Indices::I64(&[4]),
                values: &[1.0; 5],
            },
        )])
        .unwrap_err();
    assert!(matches!(err, Error::IndexOutOfRange { .. }), "{err}");
    assert_eq!(snapshot(&mut opt, &ids), before);
}

#[test]
fn host_sparse_gradients_accumulate_as_keras_dense() {
    use wgpu_rmsprop::{DuplicateIndices, SparseMode};
    for b in [
        RmsPropConfig::builder().momentum(0.9),
        RmsPropConfig::builder()
            .centered(true)
            .sparse_mode(SparseMode::Dense)
            .duplicate_indices(DuplicateIndices::Keras3),
        RmsPropConfig::builder()
            .weight_decay(0.1)
            .loss_scale_factor(1.0),
    ] {
        let (mut opt, mut r, ids, mut rng) = setup(
            b.learning_rate(0.05)
                .loss_scale_factor(64.0)
                .gradient_accumulation_steps(2)
                .use_ema(true)
                .ema_momentum(0.5),
        );
        for step in 0..6 {
            let rows: [usize; 3] = [3, 0, 3];
            let values: Vec<f32> = rng.vec(15, 64.0, 0);
            let dense0 = rng.vec(7, 64.0, 0);
            let rows_i64: Vec<i64> = rows.iter().map(|&x| x as i64).collect();
            opt.apply(&[
                (ids[0], Gradient::Dense(&dense0)),
                (
                    ids[1],
                    Gradient::Sparse {
                        indices: Indices::I64(&rows_i64),
                        values: &values,
                    },
                ),
            ])
            .unwrap();
            r.step(&[
                Some(RefGradient::Dense(&dense0)),
                Some(RefGradient::Sparse {
                    indices: &rows,
                    values: &values,
                }),
                None,
            ])
            .unwrap();
            assert_bitwise(&mut opt, &r, &ids, &format!("step {step}"));
        }
    }
}

#[test]
fn loss_scale_divides_sparse_values_as_the_twin() {
    use wgpu::util::DeviceExt;
    use wgpu_rmsprop::{DuplicateIndices, GpuGradient, SparseMode};
    for (b, gpu_values) in [
        (RmsPropConfig::builder().momentum(0.9), false),
        (RmsPropConfig::builder().momentum(0.9), true),
        (
            RmsPropConfig::builder()
                .centered(true)
                .sparse_mode(SparseMode::Dense)
                .duplicate_indices(DuplicateIndices::Keras3),
            false,
        ),
        (
            RmsPropConfig::builder()
                .clipnorm(0.5)
                .sparse_mode(SparseMode::Dense)
                .duplicate_indices(DuplicateIndices::Keras3),
            true,
        ),
    ] {
        let (mut opt, mut r, ids, mut rng) = setup(b.learning_rate(0.05).loss_scale_factor(64.0));
        for step in 0..4 {
            // Variable 1 ([4, 5]) gets rows with a duplicate; the others dense gradients.
            let rows: [usize; 3] = [3, 0, 3];
            let values: Vec<f32> = rng.vec(15, 64.0, 0);
            let dense0 = rng.vec(7, 64.0, 0);
            let dense2 = rng.vec(300, 64.0, 0);
            let rows_i64: Vec<i64> = rows.iter().map(|&x| x as i64).collect();
            let buffer = ctx()
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(&values),
                    usage: wgpu::BufferUsages::COPY_SRC,
                });
            let sparse = if gpu_values {
                Gradient::SparseGpu {
                    indices: Indices::I64(&rows_i64),
                    values: GpuGradient {
                        buffer: &buffer,
                        offset: 0,
                    },
                }
            } else {
                Gradient::Sparse {
                    indices: Indices::I64(&rows_i64),
                    values: &values,
                }
            };
            opt.apply(&[
                (ids[0], Gradient::Dense(&dense0)),
                (ids[1], sparse),
                (ids[2], Gradient::Dense(&dense2)),
            ])
            .unwrap();
            r.step(&[
                Some(RefGradient::Dense(&dense0)),
                Some(RefGradient::Sparse {
                    indices: &rows,
                    values: &values,
                }),
                Some(RefGradient::Dense(&dense2)),
            ])
            .unwrap();
            assert_bitwise(
                &mut opt,
                &r,
                &ids,
                &format!("gpu_values={gpu_values} step {step}"),
            );
        }
    }
}

#[test]
fn checkpoints_refuse_the_middle_of_accumulation_and_resume_exactly() {
    let b = || {
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.9)
            .gradient_accumulation_steps(2)
    };
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-keras-base-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ckpt.safetensors");
    let (mut opt, mut r, ids, mut rng) = setup(b());
    run(&mut opt, &mut r, &ids, &mut rng, 3, 1.0);
    let err = opt.save_checkpoint(&file, true).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert!(
        err.to_string().contains("gradient_accumulation_steps=2"),
        "{err}"
    );
    assert!(!file.exists());
    run(&mut opt, &mut r, &ids, &mut rng, 1, 1.0);
    opt.save_checkpoint(&file, true).unwrap();
    // A fresh optimizer with a half-filled accumulator loads it: the accumulator is cleared.
    let (mut other, _, other_ids, _) = setup(b());
    let g: Vec<Vec<f32>> = SHAPES
        .iter()
        .map(|s| vec![9.0; s.iter().product()])
        .collect();
    let grads: Vec<(VarId, &[f32])> = other_ids
        .iter()
        .copied()
        .zip(g.iter().map(|v| &v[..]))
        .collect();
    other.apply_gradients(&grads).unwrap();
    other.load_checkpoint(&file).unwrap();
    assert_eq!(other.iterations(), 4);
    assert_bitwise(&mut other, &r, &other_ids, "loaded");
    run(&mut other, &mut r, &other_ids, &mut rng, 4, 1.0);
    // A config without accumulation does not load it.
    let mut plain = RmsProp::new(
        ctx(),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.9)
            .build()
            .unwrap(),
    )
    .unwrap();
    for (i, s) in SHAPES.iter().enumerate() {
        plain
            .add_variable(&format!("w{i}"), s, &vec![0.0; s.iter().product()])
            .unwrap();
    }
    assert!(plain.load_checkpoint(&file).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ema_matches_the_twin_bit_for_bit() {
    for b in [
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .use_ema(true)
            .ema_momentum(0.9),
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .momentum(0.9)
            .use_ema(true)
            .ema_momentum(0.7)
            .ema_overwrite_frequency(3),
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .centered(true)
            .use_ema(true)
            .ema_momentum(0.8)
            .ema_overwrite_frequency(2)
            .gradient_accumulation_steps(3)
            .loss_scale_factor(16.0),
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .use_ema(true)
            .ema_momentum(1.0)
            .non_finite(NonFinite::SkipStep),
    ] {
        let (mut opt, mut r, ids, mut rng) = setup(b);
        run(&mut opt, &mut r, &ids, &mut rng, 8, 1.0);
    }
}

#[test]
fn the_first_step_copies_and_overwrite_happens_at_keras_steps() {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.1)
        .use_ema(true)
        .ema_momentum(0.5)
        .ema_overwrite_frequency(2)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let w = opt.add_variable("w", &[3], &[1.0, -2.0, 0.5]).unwrap();
    opt.apply_gradients(&[(w, &[1.0, 1.0, 1.0])]).unwrap();
    let x1 = opt.read_variable(w).unwrap();
    assert_eq!(opt.read_slot(w, Slot::Ema).unwrap(), x1, "k = 0: ema = x");
    opt.apply_gradients(&[(w, &[1.0, 1.0, 1.0])]).unwrap();
    // k = 1: (k + 1) % 2 == 0, the variables take the averages.
    assert_eq!(
        opt.read_variable(w).unwrap(),
        opt.read_slot(w, Slot::Ema).unwrap()
    );
    opt.apply_gradients(&[(w, &[1.0, 1.0, 1.0])]).unwrap();
    assert_ne!(
        opt.read_variable(w).unwrap(),
        opt.read_slot(w, Slot::Ema).unwrap()
    );
}

#[test]
fn swapping_with_the_averages_and_back() {
    let (mut opt, mut r, ids, mut rng) = setup(
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .use_ema(true)
            .ema_momentum(0.9),
    );
    run(&mut opt, &mut r, &ids, &mut rng, 3, 1.0);
    opt.swap_ema_weights().unwrap();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            bits(&opt.read_variable(id).unwrap()),
            bits(r.vars[i].ema.as_ref().unwrap())
        );
        assert_eq!(
            bits(&opt.read_slot(id, Slot::Ema).unwrap()),
            bits(&r.vars[i].x)
        );
    }
    opt.swap_ema_weights().unwrap();
    run(&mut opt, &mut r, &ids, &mut rng, 2, 1.0);
    // The slot's slices: same place as the variable's, in the ema buffer.
    let xs = opt.variable_slices(ids[2]).unwrap();
    let es = opt.slot_slices(ids[2], Slot::Ema).unwrap();
    assert_eq!((xs[0].offset, xs[0].len), (es[0].offset, es[0].len));
    assert_ne!(xs[0].buffer, es[0].buffer);
    // Without use_ema: refused, and no such slot.
    let (mut plain, _, pids, _) = setup(RmsPropConfig::builder());
    assert!(matches!(
        plain.swap_ema_weights(),
        Err(Error::SlotNotPresent { .. })
    ));
    assert!(matches!(
        plain.read_slot(pids[0], Slot::Ema),
        Err(Error::SlotNotPresent { .. })
    ));
    assert!(!plain.slots().contains(&Slot::Ema));
    assert!(matches!(
        plain.slot_slices(pids[0], Slot::Ema),
        Err(Error::SlotNotPresent { .. })
    ));
}

#[test]
fn bad_ema_values_are_typed_errors() {
    for (b, field, value) in [
        (
            RmsPropConfig::builder().use_ema(true).ema_momentum(1.5),
            "ema_momentum",
            "1.5",
        ),
        (
            RmsPropConfig::builder().use_ema(true).ema_momentum(-0.1),
            "ema_momentum",
            "-0.1",
        ),
        (
            RmsPropConfig::builder()
                .use_ema(true)
                .ema_momentum(f64::NAN),
            "ema_momentum",
            "NaN",
        ),
        (
            RmsPropConfig::builder()
                .use_ema(true)
                .ema_overwrite_frequency(0),
            "ema_overwrite_frequency",
            "0",
        ),
    ] {
        match b.build() {
            Err(Error::InvalidConfig {
                field: f, value: v, ..
            }) => {
                assert_eq!((f, v.as_str()), (field, value));
            }
            other => panic!("{field}={value}: {other:?}"),
        }
    }
}

#[test]
fn checkpoints_keep_the_averages() {
    let b = || {
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .use_ema(true)
            .ema_momentum(0.9)
    };
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-keras-ema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ema.safetensors");
    let (mut opt, mut r, ids, mut rng) = setup(b());
    run(&mut opt, &mut r, &ids, &mut rng, 3, 1.0);
    opt.save_checkpoint(&file, true).unwrap();
    let (mut other, _, other_ids, _) = setup(b());
    other.load_checkpoint(&file).unwrap();
    assert_bitwise(&mut other, &r, &other_ids, "loaded");
    run(&mut other, &mut r, &other_ids, &mut rng, 2, 1.0);
    // Another ema_momentum does not load it.
    let (mut third, _, _, _) = setup(b().ema_momentum(0.5));
    assert!(third.load_checkpoint(&file).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_keep_the_current_loss_scale() {
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-keras-ls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ls.safetensors");
    let (mut opt, mut r, ids, mut rng) = setup(RmsPropConfig::builder().loss_scale_factor(2.0));
    run(&mut opt, &mut r, &ids, &mut rng, 2, 1.0);
    opt.set_loss_scale_factor(32.0).unwrap();
    opt.save_checkpoint(&file, true).unwrap();
    let (mut other, _, _, _) = setup(RmsPropConfig::builder().loss_scale_factor(2.0));
    other.load_checkpoint(&file).unwrap();
    assert_eq!(other.config().loss_scale_factor(), Some(32.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_feature_together_allocates_nothing_per_step_and_stays_exact() {
    let (mut opt, mut r, ids, mut rng) = setup(
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .loss_scale_factor(256.0)
            .gradient_accumulation_steps(3)
            .use_ema(true)
            .ema_momentum(0.95)
            .ema_overwrite_frequency(7),
    );
    let grads: Vec<Vec<Vec<f32>>> = (0..8)
        .map(|_| {
            SHAPES
                .iter()
                .map(|s| rng.vec(s.iter().product(), 256.0, 4))
                .collect()
        })
        .collect();
    let mut at_warm = None;
    for s in 0..300 {
        let g = &grads[s % 8];
        let list: Vec<(VarId, &[f32])> =
            ids.iter().copied().zip(g.iter().map(|v| &v[..])).collect();
        opt.apply_gradients(&list).unwrap();
        let rg: Vec<Option<RefGradient>> = g.iter().map(|v| Some(RefGradient::Dense(v))).collect();
        r.step(&rg).unwrap();
        if s == 30 {
            at_warm = Some((opt.pool_stats(), opt.gpu_objects_created()));
        }
    }
    let (pool, created) = at_warm.unwrap();
    assert_eq!(
        opt.pool_stats(),
        pool,
        "GPU memory must not grow after warm-up"
    );
    assert_eq!(
        opt.gpu_objects_created(),
        created,
        "no buffer or bind group per step"
    );
    assert_bitwise(&mut opt, &r, &ids, "after 300 steps");
}

/// Keras resets every accumulator on the N-th call, also those of variables absent from it (N = 2): a
/// variable listed on call 1, absent from calls 2 and 3 and listed on call 4 is updated on call 4 with
/// its call-4 gradient alone, averaged: (g + 0) / 2 (the call-1 gradient was reset on call 2).
#[test]
fn the_nth_call_resets_the_accumulators_of_absent_variables_too() {
    let base = || RmsPropConfig::builder().learning_rate(0.01).momentum(0.5);
    let (mut opt, mut r, ids, mut rng) = setup(base().gradient_accumulation_steps(2));
    let grads: Vec<Vec<f32>> = SHAPES
        .iter()
        .map(|sh| rng.vec(sh.iter().product(), 1.0, 0))
        .collect();
    for call in 1..=4 {
        let listed: Vec<usize> = (0..3).filter(|&k| k != 1 || call % 3 == 1).collect();
        let g: Vec<(VarId, Gradient)> = listed
            .iter()
            .map(|&k| (ids[k], Gradient::Dense(&grads[k])))
            .collect();
        opt.apply(&g).unwrap();
        let rg: Vec<Option<RefGradient>> = (0..3)
            .map(|k| listed.contains(&k).then(|| RefGradient::Dense(&grads[k])))
            .collect();
        r.step(&rg).unwrap();
        assert_bitwise(&mut opt, &r, &ids, &format!("call {call}"));
    }
    // An independent oracle: one plain step of g / 2 (no accumulation) from the same start.
    // Variable 1's initial values: the second draw of `setup`'s generator.
    let mut rng0 = Rng::new(17);
    let _ = rng0.vec(7, 1.0, 0);
    let init1 = rng0.vec(20, 1.0, 0);
    let mut plain = Reference::new(base().build().unwrap());
    plain.add_variable(SHAPES[1], &init1);
    let half: Vec<f32> = grads[1].iter().map(|g| g / 2.0).collect();
    plain.step(&[Some(RefGradient::Dense(&half))]).unwrap();
    assert_eq!(
        bits(&opt.read_variable(ids[1]).unwrap()),
        bits(&plain.vars[0].x)
    );
}

/// A variable added after training started begins its moving average at its own values (not at zero),
/// and a frozen variable is neither averaged nor overwritten (Keras averages trainable variables).
#[test]
fn late_variables_average_from_their_values_and_frozen_ones_are_left_alone() {
    let b = RmsPropConfig::builder()
        .learning_rate(0.01)
        .use_ema(true)
        .ema_momentum(0.9)
        .ema_overwrite_frequency(1);
    let (mut opt, mut r, mut ids, mut rng) = setup(b);
    run(&mut opt, &mut r, &ids, &mut rng, 2, 1.0);
    let init = rng.vec(10, 1.0, 0);
    ids.push(opt.add_variable("late", &[10], &init).unwrap());
    r.add_variable(&[10], &init);
    let frozen = wgpu_rmsprop::VarOptions {
        frozen: true,
        ..Default::default()
    };
    let init_f = rng.vec(6, 1.0, 0);
    ids.push(
        opt.add_variable_with("frozen", &[6], &init_f, &frozen)
            .unwrap(),
    );
    r.add_variable_with(&[6], &init_f, &frozen).unwrap();
    assert_eq!(opt.read_slot(ids[3], Slot::Ema).unwrap(), init);
    for call in 0..3 {
        let grads: Vec<Vec<f32>> = [7usize, 20, 300, 10, 6]
            .iter()
            .map(|&n| rng.vec(n, 1.0, 0))
            .collect();
        let g: Vec<(VarId, Gradient)> = ids
            .iter()
            .zip(&grads)
            .map(|(&id, v)| (id, Gradient::Dense(v)))
            .collect();
        opt.apply(&g).unwrap();
        let rg: Vec<Option<RefGradient>> =
            grads.iter().map(|v| Some(RefGradient::Dense(v))).collect();
        r.step(&rg).unwrap();
        let label = format!("call {call}");
        assert_bitwise(&mut opt, &r, &ids, &label);
    }
    // With overwrite every call, the late variable is its average (not 10% of it, as from zero), and
    // the frozen one is as it was.
    assert_eq!(bits(&opt.read_variable(ids[4]).unwrap()), bits(&init_f));
    let x = opt.read_variable(ids[3]).unwrap();
    assert!(x
        .iter()
        .zip(&init)
        .all(|(a, b)| (a - b).abs() < 0.5 * b.abs().max(0.1)));
}

/// A step that updates every variable densely averages them in its own dispatches (one per pool buffer,
/// no extra one, on a device with a ninth storage binding such as lavapipe); a step that leaves a
/// variable out, or that the non-finite policy skips, averages exactly as the separate dispatch does.
#[test]
fn the_average_rides_in_the_dense_dispatch_of_a_full_step() {
    let (mut opt, mut r, ids, mut rng) = setup(
        RmsPropConfig::builder()
            .learning_rate(0.05)
            .momentum(0.5)
            .use_ema(true)
            .ema_momentum(0.9)
            .ema_overwrite_frequency(3)
            .non_finite(NonFinite::SkipStep),
    );
    let limit = ctx().device().limits().max_storage_buffers_per_shader_stage;
    assert!(
        limit >= 9,
        "lavapipe binds 32 storage buffers per stage: {limit}"
    );
    let chunks = opt.pool_stats().chunks;
    // Full steps: the dense dispatches only.
    run(&mut opt, &mut r, &ids, &mut rng, 4, 1.0);
    // (SkipStep checks every gradient first: one norm job dispatch and the finalize.)
    assert_eq!(
        opt.last_step_dispatches(),
        chunks + 2,
        "checks, then one update dispatch per pool buffer"
    );
    // A step without the first variable: the averages take their own dispatch, every variable averaged.
    let grads: Vec<Vec<f32>> = SHAPES[1..]
        .iter()
        .map(|s| rng.vec(s.iter().product(), 1.0, 0))
        .collect();
    let listed: Vec<(VarId, &[f32])> = ids[1..]
        .iter()
        .copied()
        .zip(grads.iter().map(|g| &g[..]))
        .collect();
    opt.apply_gradients(&listed).unwrap();
    assert_eq!(
        opt.last_step_dispatches(),
        2 * chunks + 2,
        "and the averages"
    );
    let mut rg: Vec<Option<RefGradient>> = vec![None];
    rg.extend(grads.iter().map(|g| Some(RefGradient::Dense(g))));
    r.step(&rg).unwrap();
    assert_bitwise(&mut opt, &r, &ids, "partial step");
    // A full step the policy skips (a NaN): nothing updated, the averages still move (fused).
    let mut grads: Vec<Vec<f32>> = SHAPES
        .iter()
        .map(|s| rng.vec(s.iter().product(), 1.0, 0))
        .collect();
    grads[0][0] = f32::NAN;
    let listed: Vec<(VarId, &[f32])> = ids
        .iter()
        .copied()
        .zip(grads.iter().map(|g| &g[..]))
        .collect();
    opt.apply_gradients(&listed).unwrap();
    assert_eq!(
        opt.last_step_dispatches(),
        chunks + 2,
        "norm jobs, finalize, update"
    );
    let rg: Vec<Option<RefGradient>> = grads.iter().map(|g| Some(RefGradient::Dense(g))).collect();
    r.step(&rg).unwrap();
    assert_eq!(opt.skipped_steps().unwrap(), 1);
    assert_bitwise(&mut opt, &r, &ids, "skipped step");
    // And full steps again, through an overwrite step.
    run(&mut opt, &mut r, &ids, &mut rng, 3, 1.0);
}
