//! Presets, schedules, clipping and recording several steps before one submit.

mod common;

use common::{assert_matches, ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{rmsprop, RefGradient, Reference, State};
use wgpu_rmsprop::{
    DuplicateIndices, EpsilonPlacement, Error, GpuGradient, Gradient, LearningRate,
    OptimizerOptions, Preset, RmsProp, RmsPropConfig, Schedule, SparseMode, VarId, WeightDecay,
};

fn decaying() -> RmsPropConfig {
    RmsPropConfig::builder()
        .learning_rate(Schedule::ExponentialDecay {
            initial_learning_rate: 0.1,
            decay_steps: 1.0,
            decay_rate: 0.5,
            staircase: false,
        })
        .momentum(0.9)
        .build()
        .unwrap()
}

/// A caller's buffer holding `values` (gradients to copy from on the GPU).
fn gradient_buffer(values: &[f32]) -> wgpu::Buffer {
    let buffer = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("grads"),
        size: values.len() as u64 * 4,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx()
        .queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(values));
    buffer
}

/// Records `steps` steps with gradients in a caller's buffer into one encoder, submits once, and
/// compares with the reference (which uses each step's own learning rate).
fn record_several(options: OptimizerOptions, steps: usize) {
    let cfg = decaying();
    let ctx = ctx();
    let mut rng = Rng::new(8);
    let init = rng.vec(10, 1.0, 0);
    let mut opt = RmsProp::with_options(ctx, cfg.clone(), options).unwrap();
    let w = opt.add_variable("w", &[10], &init).unwrap();
    let mut r = Reference::new(cfg.clone());
    r.add_variable(&[10], &init);
    // One gradient buffer region per step, written before recording.
    let grads: Vec<Vec<f32>> = (0..steps).map(|_| rng.vec(10, 1.0, 0)).collect();
    let packed: Vec<f32> = grads.concat();
    let buffer = gradient_buffer(&packed);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let (mut rates, mut recorded) = (Vec::new(), Vec::new());
    for (t, g) in grads.iter().enumerate() {
        let gg = GpuGradient {
            buffer: &buffer,
            offset: t as u64 * 40,
        };
        let step = opt.record(&mut encoder, &[(w, Gradient::Gpu(gg))]).unwrap();
        rates.push(step.learning_rate());
        recorded.push(step);
        r.step(&[Some(RefGradient::Dense(g))]).unwrap();
    }
    // Nothing counts before the submit is resolved.
    assert_eq!((opt.iterations(), opt.last_learning_rate()), (0, None));
    let index = ctx.queue().submit([encoder.finish()]);
    for step in recorded {
        opt.submitted(step, index.clone()).unwrap();
    }
    assert_eq!(opt.iterations(), grads.len() as u64);
    assert_eq!(rates[0], 0.1);
    assert_eq!(rates[1], 0.05);
    assert_matches(&mut opt, w, &r.vars[0], "after one submit");
}

/// Steps recorded before one submit that list different variables, with per-variable clipping: each step
/// has its own norm jobs and clipping tables, which must reach the GPU in step order (not all before the
/// submit, where the last step's tables would serve every step).
#[test]
fn steps_with_different_variables_and_clipping_recorded_before_one_submit() {
    for use_immediates in [true, false] {
        let cfg = RmsPropConfig::builder()
            .learning_rate(0.05)
            .momentum(0.5)
            .clipnorm(0.5)
            .build()
            .unwrap();
        let ctx = ctx();
        let mut rng = Rng::new(21);
        let options = OptimizerOptions {
            use_immediates,
            ..Default::default()
        };
        let mut opt = RmsProp::with_options(ctx, cfg.clone(), options).unwrap();
        let mut r = Reference::new(cfg.clone());
        let sizes = [37usize, 100, 5];
        let ids: Vec<VarId> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let init = rng.vec(n, 1.0, 0);
                r.add_variable(&[n], &init);
                opt.add_variable(&format!("v{k}"), &[n], &init).unwrap()
            })
            .collect();
        // Step t lists these variables; every gradient comes from one caller buffer.
        let plan: [&[usize]; 4] = [&[0], &[0, 1], &[1, 2], &[2, 0]];
        let grads: Vec<Vec<Vec<f32>>> = plan
            .iter()
            .map(|_| sizes.iter().map(|&n| rng.vec(n, 3.0, 0)).collect())
            .collect();
        let mut packed = Vec::new();
        let mut offsets = Vec::new();
        for step in &grads {
            let mut o = Vec::new();
            for g in step {
                o.push(packed.len() as u64 * 4);
                packed.extend_from_slice(g);
            }
            offsets.push(o);
        }
        let buffer = gradient_buffer(&packed);
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let mut recorded = Vec::new();
        for (t, listed) in plan.iter().enumerate() {
            let step: Vec<(VarId, Gradient<'_>)> = listed
                .iter()
                .map(|&k| {
                    let gg = GpuGradient {
                        buffer: &buffer,
                        offset: offsets[t][k],
                    };
                    (ids[k], Gradient::Gpu(gg))
                })
                .collect();
            recorded.push(opt.record(&mut encoder, &step).unwrap());
            let refs: Vec<Option<RefGradient<'_>>> = (0..sizes.len())
                .map(|k| {
                    listed
                        .contains(&k)
                        .then(|| RefGradient::Dense(&grads[t][k]))
                })
                .collect();
            r.step(&refs).unwrap();
        }
        let index = ctx.queue().submit([encoder.finish()]);
        for step in recorded.drain(..) {
            opt.submitted(step, index.clone()).unwrap();
        }
        for (k, &id) in ids.iter().enumerate() {
            assert_matches(
                &mut opt,
                id,
                &r.vars[k],
                &format!("v{k} (immediates {use_immediates})"),
            );
        }
    }
}

#[test]
fn two_steps_recorded_before_one_submit_use_two_learning_rates() {
    record_several(OptimizerOptions::default(), 2);
    // Five steps, each with its own rate, with immediates (lavapipe has them).
    record_several(OptimizerOptions::default(), 5);
}

#[test]
fn two_steps_recorded_before_one_submit_on_the_uniform_path() {
    let options = OptimizerOptions {
        use_immediates: false,
        ..Default::default()
    };
    record_several(options, 2);
    record_several(options, 6);
}

/// Host gradients in several steps recorded before one submit (each step's data is copied in encoder
/// order), also past `max_staging_bytes` (one-off staging buffers); `apply` is refused while recorded
/// steps wait.
#[test]
fn host_data_in_steps_recorded_before_one_submit() {
    let ctx = ctx();
    let grads: Vec<Vec<f32>> = (0..3).map(|t| vec![0.5 - 0.25 * t as f32; 4]).collect();
    let mut r = Reference::new(decaying());
    r.add_variable(&[4], &[1.0; 4]);
    let mut opt = RmsProp::new(ctx, decaying()).unwrap();
    let w = opt.add_variable("w", &[4], &[1.0; 4]).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let mut recorded = Vec::new();
    for g in &grads {
        recorded.push(
            opt.record(&mut encoder, &[(w, Gradient::Dense(g))])
                .unwrap(),
        );
        r.step(&[Some(RefGradient::Dense(g))]).unwrap();
    }
    let e = opt.apply(&[(w, Gradient::Dense(&grads[0]))]).unwrap_err();
    assert!(
        matches!(e, Error::UnresolvedSteps { count: 3, .. }),
        "{e:?}"
    );
    let index = ctx.queue().submit([encoder.finish()]);
    for step in recorded {
        opt.submitted(step, index.clone()).unwrap();
    }
    assert_matches(&mut opt, w, &r.vars[0], "three host steps, one submit");

    let direct = OptimizerOptions {
        max_staging_bytes: 0,
        ..Default::default()
    };
    let mut opt = RmsProp::with_options(ctx, decaying(), direct).unwrap();
    let w = opt.add_variable("w", &[4], &[1.0; 4]).unwrap();
    // Past max_staging_bytes each step gets a one-off buffer, copied in encoder order too: two such
    // steps recorded before one submit each see their own gradient.
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let first = opt
        .record(&mut encoder, &[(w, Gradient::Dense(&grads[0]))])
        .unwrap();
    let second = opt
        .record(&mut encoder, &[(w, Gradient::Dense(&grads[1]))])
        .unwrap();
    drop(first);
    // Resolving the second resolves the first (encoders are submitted in recording order).
    assert_eq!(opt.submit(encoder, second).unwrap(), 2);
    let mut r = Reference::new(decaying());
    r.add_variable(&[4], &[1.0; 4]);
    r.step(&[Some(RefGradient::Dense(&grads[0]))]).unwrap();
    r.step(&[Some(RefGradient::Dense(&grads[1]))]).unwrap();
    assert_matches(&mut opt, w, &r.vars[0], "one-off staging, one submit");
}

/// Clipping with norms computed on the GPU, against the reference, including an all-zero step.
fn clip_case(cfg: RmsPropConfig, options: OptimizerOptions) {
    let mut rng = Rng::new(31);
    let sizes = [7usize, 200_003, 1];
    let mut opt = RmsProp::with_options(ctx(), cfg.clone(), options).unwrap();
    let mut r = Reference::new(cfg.clone());
    let mut ids = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let init = rng.vec(n, 1.0, 0);
        ids.push(opt.add_variable(&format!("v{k}"), &[n], &init).unwrap());
        r.add_variable(&[n], &init);
    }
    for t in 0..4 {
        let grads: Vec<Vec<f32>> = sizes
            .iter()
            .map(|&n| {
                if t == 2 {
                    vec![0.0; n]
                } else {
                    rng.vec(n, 3.0, 0)
                }
            })
            .collect();
        let pairs: Vec<(VarId, &[f32])> = ids
            .iter()
            .copied()
            .zip(grads.iter().map(|g| g.as_slice()))
            .collect();
        opt.apply_gradients(&pairs).unwrap();
        r.step(
            &grads
                .iter()
                .map(|g| Some(RefGradient::Dense(g)))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        // The factors the GPU applied, against the CPU's norms.
        let factors = opt.last_clip_factors().unwrap().unwrap();
        let sumsq: Vec<f64> = grads
            .iter()
            .map(|g| {
                let c = cfg.clipvalue().unwrap_or(f64::INFINITY);
                g.iter().map(|&x| f64::from(x).clamp(-c, c).powi(2)).sum()
            })
            .collect();
        for (k, f) in factors.iter().enumerate() {
            let expected = match (cfg.clipnorm(), cfg.global_clipnorm()) {
                (Some(c), _) => c / sumsq[k].sqrt().max(c),
                (None, Some(c)) => {
                    let n = sumsq.iter().sum::<f64>().sqrt();
                    if n > 0.0 {
                        c * (1.0 / n).min(1.0 / c)
                    } else {
                        1.0
                    }
                }
                _ => 1.0,
            };
            assert!(f.is_finite());
            assert!(
                (f64::from(*f) - expected).abs() <= 1e-5 * expected,
                "step {t} var {k}: {f} vs {expected}"
            );
        }
        for (k, &id) in ids.iter().enumerate() {
            assert_matches(&mut opt, id, &r.vars[k], &format!("step {t} v{k}"));
        }
    }
}

#[test]
fn clipnorm_and_global_clipnorm_on_the_gpu_match_the_reference() {
    let b = || RmsPropConfig::builder().learning_rate(0.01).momentum(0.5);
    clip_case(
        b().clipnorm(2.0).build().unwrap(),
        OptimizerOptions::default(),
    );
    clip_case(
        b().global_clipnorm(3.0).centered(true).build().unwrap(),
        OptimizerOptions::default(),
    );
    clip_case(
        b().clipvalue(0.5).build().unwrap(),
        OptimizerOptions::default(),
    );
    let legacy = RmsPropConfig::preset(Preset::KerasLegacy)
        .clipvalue(1.0)
        .clipnorm(4.0)
        .build()
        .unwrap();
    clip_case(legacy, OptimizerOptions::default());
    // Split pools: a variable's norm is summed over several buffers.
    let split = OptimizerOptions {
        max_chunk_bytes: Some(256 * 1024),
        ..Default::default()
    };
    clip_case(b().global_clipnorm(1.0).build().unwrap(), split);
}

#[test]
fn learning_rate_closures_and_their_errors() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c2 = calls.clone();
    let callable = LearningRate::callable(move || {
        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        0.01
    });
    for lr in [LearningRate::from_fn(|s| 0.1 / (1 + s) as f64), callable] {
        let cfg = RmsPropConfig::builder().learning_rate(lr).build().unwrap();
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let w = opt.add_variable("w", &[3], &[1.0, 2.0, 3.0]).unwrap();
        let mut r = Reference::new(cfg);
        r.add_variable(&[3], &[1.0, 2.0, 3.0]);
        for _ in 0..3 {
            opt.apply_gradients(&[(w, &[0.1, -0.2, 0.3])]).unwrap();
            r.step(&[Some(RefGradient::Dense(&[0.1, -0.2, 0.3]))])
                .unwrap();
        }
        assert_matches(&mut opt, w, &r.vars[0], "closure");
    }
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    // A closure that yields a bad rate: typed error, nothing applied.
    let cfg = RmsPropConfig::builder()
        .learning_rate(LearningRate::from_fn(
            |s| if s == 1 { f64::NAN } else { 0.01 },
        ))
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let w = opt.add_variable("w", &[2], &[1.0, 1.0]).unwrap();
    opt.apply_gradients(&[(w, &[0.5, 0.5])]).unwrap();
    let before = snapshot(&mut opt, &[w]);
    let e = opt.apply_gradients(&[(w, &[0.5, 0.5])]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidLearningRate { step: 2, .. }),
        "{e:?}"
    );
    assert_eq!(snapshot(&mut opt, &[w]), before);
}

#[test]
fn presets_carry_their_frameworks_defaults_and_rules() {
    let torch = RmsPropConfig::preset(Preset::Torch).build().unwrap();
    assert_eq!((torch.rho(), torch.epsilon()), (0.99, 1e-8));
    assert_eq!(torch.epsilon_placement(), EpsilonPlacement::OutsideSqrt);
    assert_eq!(torch.sparse_mode(), SparseMode::Dense);
    assert!(matches!(
        RmsPropConfig::preset(Preset::Torch)
            .weight_decay(0.1)
            .build()
            .unwrap()
            .weight_decay(),
        WeightDecay::L2(_)
    ));
    assert!(matches!(
        RmsPropConfig::builder()
            .weight_decay(0.1)
            .build()
            .unwrap()
            .weight_decay(),
        WeightDecay::Decoupled(_)
    ));
    let tf1 = RmsPropConfig::preset(Preset::Tf1).build().unwrap();
    assert_eq!(
        (tf1.epsilon(), tf1.initial_accumulator_value()),
        (1e-10, 1.0)
    );
    assert!(
        tf1.has_momentum(),
        "the raw kernels always keep a momentum slot"
    );
    let raw = RmsPropConfig::preset(Preset::TfRaw).build().unwrap();
    assert_eq!(raw.duplicate_indices(), DuplicateIndices::Sequential);
    let legacy = RmsPropConfig::preset(Preset::KerasLegacy).build().unwrap();
    assert_eq!(legacy.epsilon_placement(), EpsilonPlacement::OutsideSqrt);
    let legacy_m = RmsPropConfig::preset(Preset::KerasLegacy)
        .momentum(0.9)
        .build()
        .unwrap();
    assert_eq!(legacy_m.epsilon_placement(), EpsilonPlacement::InsideSqrt);
    assert_eq!(legacy_m.sparse_mode(), SparseMode::Lazy);
    let optax = RmsPropConfig::preset(Preset::Optax).build().unwrap();
    assert_eq!(
        (optax.learning_rate().at_step(1).unwrap(), optax.epsilon()),
        (0.01, 1e-8)
    );
    // Keras 3 refuses two clipping options; Keras 2 takes clipvalue with one norm clip.
    let e = RmsPropConfig::builder()
        .clipvalue(1.0)
        .clipnorm(1.0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "clipvalue",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(RmsPropConfig::preset(Preset::KerasLegacy)
        .clipvalue(1.0)
        .clipnorm(1.0)
        .build()
        .is_ok());
    let e = RmsPropConfig::builder()
        .clipnorm(1.0)
        .global_clipnorm(1.0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "global_clipnorm",
                ..
            }
        ),
        "{e:?}"
    );
    let e = RmsPropConfig::builder()
        .duplicate_indices(DuplicateIndices::Keras3)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "duplicate_indices",
                ..
            }
        ),
        "{e:?}"
    );
    let e = RmsPropConfig::builder().clipnorm(0.0).build().unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "clipnorm",
                ..
            }
        ),
        "{e:?}"
    );
    let e = RmsPropConfig::builder()
        .learning_rate(Schedule::ExponentialDecay {
            initial_learning_rate: 0.1,
            decay_steps: 0.0,
            decay_rate: 0.5,
            staircase: false,
        })
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "decay_steps",
                ..
            }
        ),
        "{e:?}"
    );
    for p in Preset::ALL {
        assert_eq!(Preset::from_name(p.name()), Some(p));
    }
}

#[test]
fn the_centered_guard_gives_no_nan_where_the_frameworks_would() {
    // v - a^2 below zero by rounding: the frameworks take the sqrt of a negative number.
    for placement in [EpsilonPlacement::InsideSqrt, EpsilonPlacement::OutsideSqrt] {
        let cfg = RmsPropConfig::builder()
            .centered(true)
            .epsilon(1e-12)
            .epsilon_placement(placement)
            .build()
            .unwrap();
        let p = cfg.scalars(1).unwrap();
        let s = State {
            x: 1.0,
            v: 1e-6,
            m: 0.0,
            a: 1.0001e-3,
        };
        let out = rmsprop(&cfg, &p, s, 1.0001e-3, 0.0, false);
        assert!(
            out.x.is_finite() && out.v.is_finite() && out.a.is_finite(),
            "{placement:?}: {out:?}"
        );
        // Where the estimate is non-negative, the guard changes nothing.
        let ok = State {
            x: 1.0,
            v: 1.0,
            m: 0.0,
            a: 0.1,
        };
        let guarded = rmsprop(&cfg, &p, ok, 0.5, 0.0, false);
        let vel = p.rho * 1.0 + p.one_minus_rho * 0.25;
        let avg = p.rho * 0.1 + p.one_minus_rho * 0.5;
        let d = match placement {
            EpsilonPlacement::InsideSqrt => (vel - avg * avg + p.epsilon).sqrt(),
            EpsilonPlacement::OutsideSqrt => (vel - avg * avg).sqrt() + p.epsilon,
        };
        assert_eq!(guarded.x, 1.0 - (p.lr * 0.5) / d);
    }
}

#[test]
fn weight_decay_and_maximize_match_the_reference_on_the_gpu() {
    let configs = [
        RmsPropConfig::builder()
            .weight_decay(0.1)
            .momentum(0.5)
            .build()
            .unwrap(),
        RmsPropConfig::preset(Preset::Torch)
            .weight_decay(0.05)
            .maximize(true)
            .momentum(0.3)
            .centered(true)
            .build()
            .unwrap(),
        RmsPropConfig::preset(Preset::Optax)
            .momentum(0.9)
            .nesterov(true)
            .bias_correction(true)
            .build()
            .unwrap(),
    ];
    for cfg in configs {
        let mut rng = Rng::new(2);
        let init = rng.vec(33, 1.0, 0);
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let w = opt.add_variable("w", &[3, 11], &init).unwrap();
        let mut r = Reference::new(cfg.clone());
        r.add_variable(&[3, 11], &init);
        for _ in 0..5 {
            let g = rng.vec(33, 1.0, 4);
            opt.apply_gradients(&[(w, &g)]).unwrap();
            r.step(&[Some(RefGradient::Dense(&g))]).unwrap();
        }
        assert_matches(&mut opt, w, &r.vars[0], &format!("{:?}", cfg.preset_kind()));
    }
}
