//! Per-variable options through the optimizer's API: one dense dispatch per pool buffer whatever the
//! options, bad options refused with nothing changed, frozen variables untouched bit for bit, options
//! changed during training (slots gained and dropped), exclusions from weight decay by name, checkpoints,
//! and the uniform-parameter path. Every result is compared with the CPU twin.

mod common;

use common::{assert_close, ctx, kept_state, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Error, GpuGradient, GpuIndices, Gradient, Indices, NonFinite, OptimizerOptions, RmsProp,
    RmsPropConfig, Slot, VarId, VarOptions,
};

/// Compares every variable and every slot with the twin; slots the twin lacks must be absent.
fn check(opt: &mut RmsProp, ids: &[VarId], r: &Reference, label: &str) {
    for (k, &id) in ids.iter().enumerate() {
        let s = &r.vars[k];
        assert_close(
            &format!("{label} {k} x"),
            &opt.read_variable(id).unwrap(),
            &s.x,
        );
        let v = opt.read_slot(id, Slot::Velocity).unwrap();
        assert_close(&format!("{label} {k} velocity"), &v, &s.v);
        for (slot, values) in [(Slot::Momentum, &s.m), (Slot::AverageGradient, &s.a)] {
            match values {
                Some(e) => {
                    let got = opt.read_slot(id, slot).unwrap();
                    assert_close(&format!("{label} {k} {}", slot.name()), &got, e);
                }
                None => assert!(
                    matches!(opt.read_slot(id, slot), Err(Error::SlotNotPresent { .. })),
                    "{label} {k}: {} must not exist",
                    slot.name()
                ),
            }
        }
    }
}

/// An optimizer and its twin with one variable of each size and options.
fn build(
    config: &RmsPropConfig,
    options: OptimizerOptions,
    vars: &[(usize, VarOptions)],
    rng: &mut Rng,
) -> (RmsProp, Vec<VarId>, Reference) {
    let mut opt = RmsProp::with_options(ctx(), config.clone(), options).unwrap();
    let mut r = Reference::new(config.clone());
    let mut ids = Vec::new();
    for (k, (n, o)) in vars.iter().enumerate() {
        let init = rng.vec(*n, 1.0, 0);
        ids.push(
            opt.add_variable_with(&format!("v{k}"), &[*n], &init, o)
                .unwrap(),
        );
        r.add_variable_with(&[*n], &init, o).unwrap();
    }
    (opt, ids, r)
}

/// One dense step of random gradients for every variable, on both.
fn dense_step(opt: &mut RmsProp, ids: &[VarId], r: &mut Reference, rng: &mut Rng) {
    let grads: Vec<Vec<f32>> = r.vars.iter().map(|v| rng.vec(v.x.len(), 2.0, 7)).collect();
    let pairs: Vec<(VarId, &[f32])> = ids
        .iter()
        .copied()
        .zip(grads.iter().map(|g| &g[..]))
        .collect();
    opt.apply_gradients(&pairs).unwrap();
    let refs: Vec<Option<RefGradient>> =
        grads.iter().map(|g| Some(RefGradient::Dense(g))).collect();
    r.step(&refs).unwrap();
}

fn mixed() -> Vec<VarOptions> {
    let d = VarOptions::default;
    vec![
        d(),
        VarOptions {
            lr_multiplier: 0.25,
            momentum: Some(0.0),
            ..d()
        },
        VarOptions {
            centered: Some(true),
            epsilon: Some(1e-3),
            ..d()
        },
        VarOptions {
            learning_rate: Some(0.05),
            rho: Some(0.5),
            maximize: Some(true),
            ..d()
        },
        VarOptions {
            exclude_from_weight_decay: true,
            ..d()
        },
        VarOptions {
            weight_decay: Some(0.3),
            momentum: Some(0.95),
            ..d()
        },
    ]
}

#[test]
fn one_dense_dispatch_per_pool_buffer_with_mixed_options() {
    let sizes = [1usize, 3, 63, 257, 1000, 5];
    for clip in [false, true] {
        let mut b = RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .weight_decay(0.1);
        if clip {
            b = b.clipnorm(0.5);
        }
        let config = b.build().unwrap();
        let options = OptimizerOptions {
            slice_alignment: Some(256),
            max_chunk_bytes: Some(2048),
            ..OptimizerOptions::default()
        };
        let mut rng = Rng::new(3);
        let with: Vec<(usize, VarOptions)> = sizes.iter().copied().zip(mixed()).collect();
        let without: Vec<(usize, VarOptions)> =
            sizes.iter().map(|&n| (n, VarOptions::default())).collect();
        let (mut opt, ids, mut r) = build(&config, options, &with, &mut rng);
        let (mut plain, plain_ids, mut rp) = build(&config, options, &without, &mut rng);
        let chunks = opt.pool_stats().chunks;
        assert!(chunks >= 3, "the pools are split ({chunks} buffers)");
        for t in 0..3 {
            dense_step(&mut opt, &ids, &mut r, &mut rng);
            dense_step(&mut plain, &plain_ids, &mut rp, &mut rng);
            // The same dispatches as without options: without clipping, exactly one per pool buffer.
            assert_eq!(
                opt.last_step_dispatches(),
                plain.last_step_dispatches(),
                "clip {clip} step {t}"
            );
            if !clip {
                assert_eq!(opt.last_step_dispatches(), chunks, "step {t}");
            }
            check(&mut opt, &ids, &r, &format!("clip {clip} step {t}"));
        }
    }
}

#[test]
fn a_frozen_variable_takes_part_as_an_absent_one() {
    // Frozen in the middle of a pool buffer: the run of dense variables splits there, as for a
    // variable left out of the step.
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .build()
        .unwrap();
    let mut rng = Rng::new(5);
    let frozen = VarOptions {
        frozen: true,
        ..VarOptions::default()
    };
    let vars = vec![
        (8, VarOptions::default()),
        (8, frozen),
        (8, VarOptions::default()),
    ];
    let (mut opt, ids, mut r) = build(&config, OptimizerOptions::default(), &vars, &mut rng);
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    assert_eq!(opt.last_step_dispatches(), 2);
    check(&mut opt, &ids, &r, "frozen middle");
}

#[test]
fn frozen_variables_stay_bit_for_bit_and_leave_norms_and_the_nonfinite_check() {
    let config = RmsPropConfig::builder()
        .learning_rate(0.02)
        .momentum(0.9)
        .weight_decay(0.1)
        .global_clipnorm(0.5)
        .non_finite(NonFinite::SkipStep)
        .build()
        .unwrap();
    let frozen = VarOptions {
        frozen: true,
        ..VarOptions::default()
    };
    let mut rng = Rng::new(11);
    let vars = vec![
        (17, VarOptions::default()),
        (9, frozen.clone()),
        (12, frozen.clone()),
        (20, frozen.clone()),
        (6, frozen.clone()),
        (33, VarOptions::default()),
    ];
    let (mut opt, ids, mut r) = build(&config, OptimizerOptions::default(), &vars, &mut rng);
    let before = kept_state(&mut opt, &ids[1..5]).1;
    let device = ctx().device();
    let gpu_values = wgpu::util::DeviceExt::create_buffer_init(
        device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("frozen gradient"),
            contents: bytemuck::cast_slice(&[f32::NAN; 32]),
            usage: wgpu::BufferUsages::COPY_SRC,
        },
    );
    let gpu_rows = wgpu::util::DeviceExt::create_buffer_init(
        device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("frozen rows"),
            contents: bytemuck::cast_slice(&[1i32, 3, 1]),
            usage: wgpu::BufferUsages::COPY_SRC,
        },
    );
    for t in 1..=3 {
        let g0 = rng.vec(17, 3.0, 0);
        let g5 = rng.vec(33, 3.0, 0);
        // Frozen: NaN dense values (would skip the step), huge sparse rows (would dominate the global
        // norm), a GPU gradient and GPU-grouped rows of NaN.
        let nan = vec![f32::NAN; 9];
        let huge = vec![1e6f32; 3];
        let grads = [
            (ids[0], Gradient::Dense(&g0)),
            (ids[1], Gradient::Dense(&nan)),
            (
                ids[2],
                Gradient::Sparse {
                    indices: Indices::I64(&[2, 2, 7]),
                    values: &huge,
                },
            ),
            (
                ids[3],
                Gradient::Gpu(GpuGradient {
                    buffer: &gpu_values,
                    offset: 0,
                }),
            ),
            (
                ids[4],
                Gradient::SparseGpuIndices {
                    indices: GpuIndices {
                        buffer: &gpu_rows,
                        offset: 0,
                        len: 3,
                    },
                    values: GpuGradient {
                        buffer: &gpu_values,
                        offset: 0,
                    },
                },
            ),
            (ids[5], Gradient::Dense(&g5)),
        ];
        assert_eq!(opt.apply(&grads).unwrap(), t);
        // The twin is given the frozen gradients too: it must ignore them as the GPU does.
        let rows = [2usize, 2, 7];
        let refs = [
            Some(RefGradient::Dense(&g0)),
            Some(RefGradient::Dense(&nan)),
            Some(RefGradient::Sparse {
                indices: &rows,
                values: &huge,
            }),
            None,
            None,
            Some(RefGradient::Dense(&g5)),
        ];
        r.step(&refs).unwrap();
        check(&mut opt, &ids, &r, &format!("step {t}"));
    }
    assert_eq!(
        opt.skipped_steps().unwrap(),
        0,
        "a frozen NaN skipped a step"
    );
    assert_eq!(opt.invalid_gpu_indices().unwrap(), 0);
    assert_eq!(
        kept_state(&mut opt, &ids[1..5]).1,
        before,
        "a frozen variable changed"
    );
    // Unfrozen, it trains like any other (its slots are where they were: zero).
    opt.set_variable_options(ids[1], &VarOptions::default())
        .unwrap();
    r.set_variable_options(1, &VarOptions::default()).unwrap();
    let g1 = rng.vec(9, 1.0, 0);
    let (g0, g5) = (rng.vec(17, 1.0, 0), rng.vec(33, 1.0, 0));
    opt.apply(&[
        (ids[0], Gradient::Dense(&g0)),
        (ids[1], Gradient::Dense(&g1)),
        (ids[5], Gradient::Dense(&g5)),
    ])
    .unwrap();
    let refs = [
        Some(RefGradient::Dense(&g0)),
        Some(RefGradient::Dense(&g1)),
        None,
        None,
        None,
        Some(RefGradient::Dense(&g5)),
    ];
    r.step(&refs).unwrap();
    check(&mut opt, &ids, &r, "unfrozen");
}

#[test]
fn bad_options_are_typed_errors_and_change_nothing() {
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .build()
        .unwrap();
    let mut rng = Rng::new(2);
    let vars = vec![(5, VarOptions::default()), (7, mixed()[2].clone())];
    let (mut opt, ids, mut r) = build(&config, OptimizerOptions::default(), &vars, &mut rng);
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    let before = kept_state(&mut opt, &ids);
    let version = opt.layout_version();
    let bad = VarOptions {
        rho: Some(1.5),
        ..VarOptions::default()
    };
    match opt.add_variable_with("w_bad", &[3], &[0.0; 3], &bad) {
        Err(Error::InvalidVarOptions {
            variable,
            field,
            value,
            ..
        }) => assert_eq!(
            (variable.as_str(), field, value.as_str()),
            ("w_bad", "rho", "1.5")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(opt.num_variables(), 2);
    assert!(opt.variable("w_bad").is_err());
    let conflicting = VarOptions {
        weight_decay: Some(0.1),
        exclude_from_weight_decay: true,
        ..VarOptions::default()
    };
    for o in [bad, conflicting] {
        let e = opt.set_variable_options(ids[1], &o).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidVarOptions { variable, .. } if variable == "v1"),
            "{e}"
        );
    }
    assert_eq!(opt.variable_options(ids[1]).unwrap(), &mixed()[2]);
    assert!(matches!(
        opt.exclude_from_weight_decay_names(&["ok", ""]),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(!opt.excluded_from_weight_decay(ids[0]).unwrap());
    let mut other = RmsProp::new(ctx(), config.clone()).unwrap();
    let foreign = other.add_variable("v0", &[5], &[0.0; 5]).unwrap();
    assert!(matches!(
        opt.set_variable_options(foreign, &VarOptions::default()),
        Err(Error::UnknownVariable(_))
    ));
    // While a recorded step is unresolved, options (and name exclusions) wait.
    let g = vec![0.5f32; 5];
    let mut encoder = ctx().device().create_command_encoder(&Default::default());
    let step = opt
        .record(&mut encoder, &[(ids[0], Gradient::Dense(&g))])
        .unwrap();
    for e in [
        opt.set_variable_options(ids[0], &mixed()[1]),
        opt.exclude_from_weight_decay_names(&["v"]),
        opt.add_variable_with("w2", &[1], &[0.0], &VarOptions::default())
            .map(|_| ()),
    ] {
        assert!(matches!(e, Err(Error::UnresolvedSteps { .. })), "{e:?}");
    }
    opt.abandon(step).unwrap();
    drop(encoder);
    assert_eq!(kept_state(&mut opt, &ids), before);
    assert_eq!(opt.layout_version(), version);
    // Later steps are unaffected.
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    check(&mut opt, &ids, &r, "after errors");
}

#[test]
fn options_changed_during_training_gain_and_drop_slots() {
    // No momentum, not centered, no decay: the pools start with the velocity only.
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .build()
        .unwrap();
    let mut rng = Rng::new(9);
    let vars = vec![(70, VarOptions::default()), (30, VarOptions::default())];
    let (mut opt, ids, mut r) = build(&config, OptimizerOptions::default(), &vars, &mut rng);
    assert_eq!(opt.slots(), [Slot::Velocity]);
    let grad = opt.gradient_slices(ids[0]).unwrap();
    let version = opt.layout_version();
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    let rich = VarOptions {
        momentum: Some(0.9),
        centered: Some(true),
        weight_decay: Some(0.2),
        ..VarOptions::default()
    };
    opt.set_variable_options(ids[0], &rich).unwrap();
    r.set_variable_options(0, &rich).unwrap();
    // The pools now keep both slots (for every variable); no slice moved.
    assert_eq!(
        opt.slots(),
        [Slot::Velocity, Slot::Momentum, Slot::AverageGradient]
    );
    assert_eq!(opt.layout_version(), version);
    assert_eq!(
        opt.variable_slots(ids[0]).unwrap(),
        [Slot::Velocity, Slot::Momentum, Slot::AverageGradient]
    );
    assert_eq!(opt.variable_slots(ids[1]).unwrap(), [Slot::Velocity]);
    check(&mut opt, &ids, &r, "gained");
    for t in 0..2 {
        dense_step(&mut opt, &ids, &mut r, &mut rng);
        check(&mut opt, &ids, &r, &format!("rich {t}"));
    }
    // Resident gradients through the slices taken before: still valid.
    let objects = opt.gpu_objects_created();
    let mut encoder = ctx().device().create_command_encoder(&Default::default());
    let g = rng.vec(70, 1.0, 0);
    ctx()
        .queue()
        .write_buffer(&grad[0].buffer, grad[0].offset, bytemuck::cast_slice(&g));
    let step = opt
        .record(&mut encoder, &[(ids[0], Gradient::Resident)])
        .unwrap();
    opt.submit(encoder, step).unwrap();
    r.step(&[Some(RefGradient::Dense(&g)), None]).unwrap();
    check(&mut opt, &ids, &r, "resident");
    assert_eq!(
        opt.gpu_objects_created(),
        objects,
        "a steady step allocated"
    );
    // Back to the configuration's values: the slots are dropped for this variable...
    opt.set_variable_options(ids[0], &VarOptions::default())
        .unwrap();
    r.set_variable_options(0, &VarOptions::default()).unwrap();
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    check(&mut opt, &ids, &r, "dropped");
    // ... and gained again, they start at zero (not where they were left).
    let momentum = VarOptions {
        momentum: Some(0.5),
        ..VarOptions::default()
    };
    opt.set_variable_options(ids[0], &momentum).unwrap();
    r.set_variable_options(0, &momentum).unwrap();
    assert_eq!(
        opt.read_slot(ids[0], Slot::Momentum).unwrap(),
        vec![0.0; 70]
    );
    for t in 0..2 {
        dense_step(&mut opt, &ids, &mut r, &mut rng);
        check(&mut opt, &ids, &r, &format!("regained {t}"));
    }
    // A variable added now gets the slots its options say, whatever the pools keep.
    let init = rng.vec(11, 1.0, 0);
    let id = opt.add_variable("late", &[11], &init).unwrap();
    r.add_variable(&[11], &init);
    let ids = [ids[0], ids[1], id];
    assert_eq!(opt.variable_slots(id).unwrap(), [Slot::Velocity]);
    dense_step(&mut opt, &ids, &mut r, &mut rng);
    check(&mut opt, &ids, &r, "late");
}

#[test]
fn exclusions_by_name_apply_to_existing_and_later_variables() {
    let config = RmsPropConfig::builder()
        .learning_rate(0.05)
        .weight_decay(0.2)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
    let mut r = Reference::new(config);
    let mut rng = Rng::new(4);
    let excluded = VarOptions {
        exclude_from_weight_decay: true,
        ..VarOptions::default()
    };
    let own = VarOptions {
        weight_decay: Some(0.4),
        ..VarOptions::default()
    };
    let mut ids = Vec::new();
    let mut add = |opt: &mut RmsProp, r: &mut Reference, name: &str, o: &VarOptions, twin| {
        let init = rng.vec(6, 1.0, 0);
        ids.push(opt.add_variable_with(name, &[6], &init, o).unwrap());
        r.add_variable_with(&[6], &init, twin).unwrap();
    };
    let d = VarOptions::default();
    add(&mut opt, &mut r, "dense/kernel", &d, &d);
    add(&mut opt, &mut r, "dense/bias", &d, &excluded);
    opt.exclude_from_weight_decay_names(&["bias", "norm"])
        .unwrap();
    add(&mut opt, &mut r, "layer_norm/gamma", &d, &excluded);
    // Its own weight decay wins over a name match.
    add(&mut opt, &mut r, "out/bias", &own, &own);
    let flags: Vec<bool> = ids
        .iter()
        .map(|&id| opt.excluded_from_weight_decay(id).unwrap())
        .collect();
    assert_eq!(flags, [false, true, true, false]);
    // The options as given are kept apart from the name list.
    assert!(
        !opt.variable_options(ids[1])
            .unwrap()
            .exclude_from_weight_decay
    );
    for _ in 0..3 {
        dense_step(&mut opt, &ids, &mut r, &mut rng);
    }
    check(&mut opt, &ids, &r, "by name");
}

#[test]
fn checkpoints_record_options_and_refuse_a_mismatch() {
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .weight_decay(0.1)
        .build()
        .unwrap();
    let vars: Vec<(usize, VarOptions)> =
        [4usize, 9, 2, 30, 8, 5].into_iter().zip(mixed()).collect();
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("groups.safetensors");
    let mut rng = Rng::new(6);
    let (mut a, ids, mut r) = build(&config, OptimizerOptions::default(), &vars, &mut rng);
    dense_step(&mut a, &ids, &mut r, &mut rng);
    dense_step(&mut a, &ids, &mut r, &mut rng);
    a.save_checkpoint(&path, true).unwrap();
    // Same options: restores, and continues bit for bit as the uninterrupted run.
    let mut rb = Rng::new(99);
    let (mut b, b_ids, _) = build(&config, OptimizerOptions::default(), &vars, &mut rb);
    b.load_checkpoint(&path).unwrap();
    assert_eq!(kept_state(&mut b, &b_ids), kept_state(&mut a, &ids));
    let g: Vec<Vec<f32>> = vars.iter().map(|(n, _)| rng.vec(*n, 1.0, 0)).collect();
    for (opt, ids) in [(&mut a, &ids), (&mut b, &b_ids)] {
        let pairs: Vec<(VarId, &[f32])> =
            ids.iter().copied().zip(g.iter().map(|g| &g[..])).collect();
        opt.apply_gradients(&pairs).unwrap();
    }
    assert_eq!(kept_state(&mut b, &b_ids), kept_state(&mut a, &ids));
    // Other options (one variable's momentum): refused, naming the variable; nothing changed.
    let mut changed = vars.clone();
    changed[1].1.momentum = Some(0.5);
    let (mut c, c_ids, _) = build(&config, OptimizerOptions::default(), &changed, &mut rb);
    let before = kept_state(&mut c, &c_ids);
    match c.load_checkpoint(&path) {
        Err(Error::Checkpoint { message, .. }) => assert!(message.contains("\"v1\""), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(kept_state(&mut c, &c_ids), before);
    // Without options: refused too (the file's variables have options).
    let plain: Vec<(usize, VarOptions)> = vars
        .iter()
        .map(|(n, _)| (*n, VarOptions::default()))
        .collect();
    let (mut p, _, _) = build(&config, OptimizerOptions::default(), &plain, &mut rb);
    assert!(matches!(
        p.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_uniform_parameter_path_reads_the_table_too() {
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.5)
        .weight_decay(0.1)
        .clipnorm(1.0)
        .build()
        .unwrap();
    let options = OptimizerOptions {
        use_immediates: false,
        slice_alignment: Some(256),
        ..OptimizerOptions::default()
    };
    let mut rng = Rng::new(8);
    let vars: Vec<(usize, VarOptions)> = [1usize, 3, 63, 257, 9, 4]
        .into_iter()
        .zip(mixed())
        .collect();
    let (mut opt, ids, mut r) = build(&config, options, &vars, &mut rng);
    for t in 0..3 {
        dense_step(&mut opt, &ids, &mut r, &mut rng);
        check(&mut opt, &ids, &r, &format!("uniform {t}"));
    }
}
