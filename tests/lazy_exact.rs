//! `SparseMode::LazyExact` against the CPU twin: lazy steps whose rows are caught up in closed form give
//! the numbers of dense steps. GPU against the twin in the same mode (the same closed form), and against
//! the twin in `SparseMode::Dense` (k steps one by one) with stated tolerances; skipped spans of 1, 2,
//! 1,000 and 100,000 steps; a schedule changing while rows are skipped; rows never listed and rows
//! listed every step; dense gradients between lazy steps; a checkpoint in the middle; the GPU buffers
//! read directly after `catch_up` (what a forward pass gathers); what is refused.

mod common;

use common::trio::{close, keras, raw, sched, Trio};
use common::{ctx, Rng};
use wgpu_rmsprop::reference::{rmsprop, skip_steps, RefGradient, Reference, State};
use wgpu_rmsprop::{
    Error, Gradient, Indices, Preset, RmsProp, RmsPropConfig, RmsPropConfigBuilder, SparseMode,
    VarId, WeightDecay,
};

#[test]
fn every_closed_form_matches_dense_steps() {
    // Plain, momentum (each form), centered (both average forms), decoupled decay with and without
    // momentum, per preset.
    let cases: Vec<(&str, RmsPropConfigBuilder)> = vec![
        ("keras", keras(0.01)),
        ("keras momentum", keras(0.01).momentum(0.9)),
        (
            "keras centered momentum",
            keras(0.01).momentum(0.9).centered(true),
        ),
        (
            "keras decay momentum",
            keras(0.01)
                .momentum(0.8)
                .weight_decay_mode(WeightDecay::Decoupled(0.1)),
        ),
        (
            "keras decay",
            keras(0.01).weight_decay_mode(WeightDecay::Decoupled(0.5)),
        ),
        (
            "torch momentum centered",
            RmsPropConfig::preset(Preset::Torch)
                .momentum(0.9)
                .centered(true),
        ),
        (
            "optax momentum",
            RmsPropConfig::preset(Preset::Optax).momentum(0.9),
        ),
        (
            "legacy momentum",
            RmsPropConfig::preset(Preset::KerasLegacy).momentum(0.9),
        ),
    ];
    for (label, b) in cases {
        let mut t = Trio::new(b, &[[200, 7], [50, 4]], 3);
        let mut rng = Rng::new(9);
        // 20 steps listing a few rows each (rows 0..5 of the first table every step).
        for s in 0..20 {
            let mut a: Vec<usize> = (0..5).collect();
            a.extend((0..6).map(|_| (rng.next_f32().abs() * 200.0) as usize % 200));
            let b = vec![(s * 7) % 50, (s * 7) % 50];
            t.step(&[Some(a), Some(b)], &mut rng, 1.0);
        }
        t.check(2e-5, label);
        // A dense step between lazy ones, then more lazy steps.
        t.step(&[None, Some(vec![1])], &mut rng, 1.0);
        for _ in 0..5 {
            t.step(&[Some(vec![3, 199]), Some(vec![2])], &mut rng, 1.0);
        }
        t.check(2e-5, &format!("{label} after a dense step"));
    }
}

#[test]
fn skipped_spans_of_1_2_and_1000_steps_on_the_gpu() {
    for k in [1usize, 2, 1000] {
        let b = keras(0.01)
            .momentum(0.9)
            .centered(true)
            .rho(0.999)
            .weight_decay_mode(WeightDecay::Decoupled(0.01));
        let mut t = Trio::new(b, &[[64, 3]], 5);
        let mut rng = Rng::new(k as u64);
        // Row 0 listed, then k steps of row 1 alone, then row 0 again.
        t.step(&[Some(vec![0, 1])], &mut rng, 1.0);
        for _ in 0..k {
            t.step(&[Some(vec![1])], &mut rng, 0.1);
        }
        t.step(&[Some(vec![0])], &mut rng, 1.0);
        // One-by-one rounding against log2(k) squarings: the dense twin is judged at 1e-4 of the
        // largest magnitude (seen: under 2e-6 at k = 1,000).
        t.check(1e-4, &format!("k={k}"));
    }
}

#[test]
fn a_span_of_100000_steps_in_closed_form_against_one_by_one() {
    // The twin's closed form (the GPU's, operation for operation) against 100,000 steps with gradient
    // 0 applied one by one with the twin's update, in f32.
    for (label, b) in [
        ("momentum", keras(0.001).momentum(0.9999).rho(0.99999)),
        (
            "centered decay",
            keras(0.001)
                .centered(true)
                .rho(0.99999)
                .weight_decay_mode(WeightDecay::Decoupled(0.001)),
        ),
    ] {
        let c = b.build().unwrap();
        let p = c.catch_up_scalars();
        let s0 = State {
            x: 0.75,
            v: 0.02,
            m: 1e-4,
            a: if c.centered() { 0.01 } else { 0.0 },
        };
        let mut s = s0;
        for _ in 0..100_000 {
            s = rmsprop(&c, &p, s, 0.0, 0.0, false);
        }
        let closed = skip_steps(&c, &p, s0, 100_000);
        // Relative error of 100,000 roundings one by one (about sqrt(k) ulps, up to k ulps): 1e-3.
        for (name, got, want) in [
            ("x", closed.x, s.x),
            ("v", closed.v, s.v),
            ("m", closed.m, s.m),
            ("a", closed.a, s.a),
        ] {
            assert!(
                (got - want).abs() <= 1e-3 * want.abs() + 1e-12,
                "{label} {name}: closed {got} vs one by one {want}"
            );
        }
        assert!(s.v < s0.v * 0.5, "{label}: the velocity decayed ({})", s.v);
    }
}

#[test]
fn a_schedule_changing_while_rows_are_skipped() {
    // The learning rate does not enter the skipped steps with the rate inside the momentum buffer.
    let schedule = sched();
    let b = keras(0.0).learning_rate(schedule).momentum(0.9);
    let mut t = Trio::new(b, &[[30, 5]], 8);
    let mut rng = Rng::new(2);
    for s in 0..25 {
        // Row s % 30 and row 29 every step: rows skip a varying number of steps under a falling rate.
        t.step(&[Some(vec![s % 30, 29])], &mut rng, 1.0);
    }
    t.check(2e-5, "schedule");
}

#[test]
fn rows_never_listed_and_rows_listed_every_step() {
    let b = keras(0.01).momentum(0.9).centered(true);
    let mut t = Trio::new(b, &[[40, 6]], 4);
    let mut rng = Rng::new(4);
    for _ in 0..12 {
        // Rows 0..4 every step; rows 20.. never.
        t.step(&[Some(vec![0, 1, 2, 3, 4, 2])], &mut rng, 1.0);
    }
    // Before any catch-up the rows listed every step are already the dense twin's: read the GPU's
    // rows 0..4 through a read of the table (which catches up rows 5.., not these).
    let got = t.opt.read_variable(t.ids[0]).unwrap();
    for (i, (&a, &e)) in got.iter().zip(&t.dense.vars[0].x).take(30).enumerate() {
        assert!(
            (a - e).abs() <= 1e-6 * e.abs().max(1.0),
            "listed row element {i}: {a} vs {e}"
        );
    }
    t.check(2e-5, "never listed");
}

#[test]
fn a_checkpoint_in_the_middle_resumes_bit_for_bit() {
    // A constant rate (the closed form), and a schedule with decay whose history of 4 steps resets
    // (the saving run and the resumed one count from 0 after the checkpoint alike).
    let constant = keras(0.01).momentum(0.9).centered(true);
    let scheduled = keras(0.0)
        .learning_rate(sched())
        .momentum(0.9)
        .weight_decay_mode(WeightDecay::Decoupled(0.1))
        .lazy_exact_history(4);
    for (label, b) in [("constant", constant), ("scheduled", scheduled)] {
        checkpoint_in_the_middle(b, label);
    }
}

fn checkpoint_in_the_middle(b: RmsPropConfigBuilder, label: &str) {
    let config = b.sparse_mode(SparseMode::LazyExact).build().unwrap();
    let mut rng = Rng::new(6);
    let init = rng.vec(100 * 4, 1.0, 0);
    let make = || {
        let mut o = RmsProp::new(ctx(), config.clone()).unwrap();
        let id = o.add_variable("t", &[100, 4], &init).unwrap();
        (o, id)
    };
    let steps: Vec<(Vec<i64>, Vec<f32>)> = (0..12)
        .map(|s| {
            let rows = vec![(s * 13) % 100, (s * 29) % 100, 7];
            (rows, rng.vec(12, 1.0, 0))
        })
        .collect();
    let run = |o: &mut RmsProp, id: VarId, range: std::ops::Range<usize>| {
        for (rows, values) in &steps[range] {
            let g = Gradient::Sparse {
                indices: Indices::I64(rows),
                values,
            };
            o.apply(&[(id, g)]).unwrap();
        }
    };
    let dir = std::env::temp_dir().join(format!("lazy-exact-ckpt-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mid.safetensors");
    let (mut a, ida) = make();
    run(&mut a, ida, 0..6);
    a.save_checkpoint(&path, true).unwrap();
    run(&mut a, ida, 6..12);
    let (mut b2, idb) = make();
    run(&mut b2, idb, 0..2);
    b2.load_checkpoint(&path).unwrap();
    run(&mut b2, idb, 6..12);
    assert_eq!(
        common::kept_state(&mut a, &[ida]),
        common::kept_state(&mut b2, &[idb]),
        "{label}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn after_catch_up_the_gpu_buffers_hold_the_dense_rows() {
    // What a forward pass gathering rows from the variable's buffer sees after `catch_up`.
    let b = keras(0.01).momentum(0.9);
    let mut t = Trio::new(b, &[[64, 4]], 12);
    let mut rng = Rng::new(12);
    for s in 0..10 {
        t.step(&[Some(vec![s, s + 10])], &mut rng, 1.0);
    }
    t.opt.catch_up(&[t.ids[0]]).unwrap();
    // The variable's buffer as a shader binding its slices reads it (no read that catches up).
    let got = raw(&mut t.opt, t.ids[0], None);
    let device = ctx().device();
    for (i, (&a, &e)) in got.iter().zip(&t.dense.vars[0].x).enumerate() {
        assert!(
            (a - e).abs() <= 2e-5 * e.abs().max(1.0),
            "[{i}]: {a} vs {e}"
        );
    }
    // Without the catch-up a lazy step leaves rows behind: record_read refuses the variable.
    t.step(&[Some(vec![1])], &mut rng, 1.0);
    let mut enc = device.create_command_encoder(&Default::default());
    let dst = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64 * 4 * 4,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let e = t
        .opt
        .record_read(
            &mut enc,
            &[(t.ids[0], wgpu_rmsprop::Tensor::Variable)],
            &dst,
            0,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "sparse_mode",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn configurations_without_a_closed_form_are_refused() {
    let lazy = |b: RmsPropConfigBuilder| b.sparse_mode(SparseMode::LazyExact).build();
    let field = |r: Result<RmsPropConfig, Error>| match r {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(
        field(lazy(keras(0.01).weight_decay_mode(WeightDecay::L2(0.1)))),
        "weight_decay"
    );
    assert_eq!(
        field(lazy(
            RmsPropConfig::preset(Preset::Optax)
                .momentum(0.9)
                .nesterov(true)
        )),
        "nesterov"
    );
    assert_eq!(field(lazy(keras(0.01).use_ema(true))), "sparse_mode");
    for n in [0, 1, 3, 1 << 21] {
        assert_eq!(
            field(lazy(keras(0.01).lazy_exact_history(n))),
            "lazy_exact_history"
        );
    }
    // Schedules where the rate enters the skipped steps, and a constant rate with decay, are fine.
    let schedule = sched();
    lazy(keras(0.0).learning_rate(schedule.clone()).momentum(0.9)).unwrap();
    lazy(
        keras(0.0)
            .learning_rate(schedule.clone())
            .weight_decay_mode(WeightDecay::Decoupled(0.1)),
    )
    .unwrap();
    lazy(
        RmsPropConfig::preset(Preset::Torch)
            .learning_rate(schedule)
            .momentum(0.9),
    )
    .unwrap();
    lazy(keras(0.01).weight_decay_mode(WeightDecay::Decoupled(0.1))).unwrap();
}

#[test]
fn schedules_where_the_rate_enters_the_skipped_steps() {
    // Decoupled decay and PyTorch's momentum form take each skipped step's own rate: the history of
    // step maps. A history of 4 steps resets (every row caught up, counts to 0) every 4 lazy steps of
    // a variable; 4,096 (the default) never does here.
    let torch = || RmsPropConfig::preset(Preset::Torch).learning_rate(sched());
    let cases: Vec<(&str, RmsPropConfigBuilder)> = vec![
        (
            "keras decay momentum",
            keras(0.0)
                .learning_rate(sched())
                .momentum(0.8)
                .weight_decay_mode(WeightDecay::Decoupled(0.1)),
        ),
        (
            "torch momentum centered",
            torch().momentum(0.9).centered(true),
        ),
        (
            "torch decay momentum, history 4",
            torch()
                .momentum(0.9)
                .weight_decay_mode(WeightDecay::Decoupled(0.2))
                .lazy_exact_history(4),
        ),
        (
            "keras decay, history 2",
            keras(0.0)
                .learning_rate(sched())
                .weight_decay_mode(WeightDecay::Decoupled(0.3))
                .lazy_exact_history(2),
        ),
    ];
    for (label, b) in cases {
        let mut t = Trio::new(b, &[[30, 5], [7, 3]], 4);
        let mut rng = Rng::new(6);
        for s in 0..25 {
            // Rows skip 1 to 29 steps while the rate falls; the second table is dense at step 12.
            let second = if s == 12 { None } else { Some(vec![s % 7]) };
            t.step(&[Some(vec![s % 30, 29]), second], &mut rng, 1.0);
            if s == 17 {
                t.check(2e-5, &format!("{label} at step 18"));
            }
        }
        t.check(2e-5, label);
    }
}

#[test]
fn per_variable_options_and_their_change_mid_run() {
    let config = keras(0.01)
        .momentum(0.9)
        .sparse_mode(SparseMode::LazyExact)
        .build()
        .unwrap();
    let dense_config = keras(0.01)
        .momentum(0.9)
        .sparse_mode(SparseMode::Dense)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
    let (mut exact, mut dense) = (Reference::new(config), Reference::new(dense_config));
    let mut rng = Rng::new(21);
    let init = rng.vec(50 * 3, 1.0, 0);
    let own = wgpu_rmsprop::VarOptions {
        momentum: Some(0.5),
        lr_multiplier: 2.0,
        rho: Some(0.8),
        ..Default::default()
    };
    let id = opt.add_variable_with("t", &[50, 3], &init, &own).unwrap();
    exact.add_variable_with(&[50, 3], &init, &own).unwrap();
    dense.add_variable_with(&[50, 3], &init, &own).unwrap();
    fn step(
        (opt, exact, dense): (&mut RmsProp, &mut Reference, &mut Reference),
        id: VarId,
        rng: &mut Rng,
        rows: Vec<usize>,
    ) {
        let values = rng.vec(rows.len() * 3, 1.0, 0);
        let i64s: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let g = Gradient::Sparse {
            indices: Indices::I64(&i64s),
            values: &values,
        };
        opt.apply(&[(id, g)]).unwrap();
        let rg = RefGradient::Sparse {
            indices: &rows,
            values: &values,
        };
        exact.step(&[Some(rg)]).unwrap();
        dense.step(&[Some(rg)]).unwrap();
    }
    for s in 0..8 {
        step(
            (&mut opt, &mut exact, &mut dense),
            id,
            &mut rng,
            vec![s, 40],
        );
    }
    // New options mid-run: the rows behind take their missed steps with the old ones first.
    let changed = wgpu_rmsprop::VarOptions {
        momentum: Some(0.7),
        ..Default::default()
    };
    opt.set_variable_options(id, &changed).unwrap();
    exact.set_variable_options(0, &changed).unwrap();
    dense.set_variable_options(0, &changed).unwrap();
    for s in 0..8 {
        step(
            (&mut opt, &mut exact, &mut dense),
            id,
            &mut rng,
            vec![s + 10, 40],
        );
    }
    exact.catch_up();
    close(&mut opt, &exact, &[id], 2e-6, "options (twin)");
    close(&mut opt, &dense, &[id], 2e-5, "options (dense)");
    // A variable's own momentum and decay, with the rate after the buffer, under a schedule (the
    // history of step maps, per variable: its own options enter the maps).
    let torch = RmsPropConfig::preset(Preset::Torch)
        .learning_rate(sched())
        .weight_decay_mode(WeightDecay::Decoupled(0.01));
    let config = torch
        .clone()
        .sparse_mode(SparseMode::LazyExact)
        .build()
        .unwrap();
    let dense_config = torch.sparse_mode(SparseMode::Dense).build().unwrap();
    let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
    let (mut exact, mut dense) = (Reference::new(config), Reference::new(dense_config));
    let own = wgpu_rmsprop::VarOptions {
        momentum: Some(0.9),
        lr_multiplier: 0.5,
        weight_decay: Some(0.2),
        ..Default::default()
    };
    let id = opt.add_variable_with("w", &[50, 3], &init, &own).unwrap();
    exact.add_variable_with(&[50, 3], &init, &own).unwrap();
    dense.add_variable_with(&[50, 3], &init, &own).unwrap();
    for s in 0..12 {
        let rows = vec![s % 9, 40];
        step((&mut opt, &mut exact, &mut dense), id, &mut rng, rows);
    }
    exact.catch_up();
    close(
        &mut opt,
        &exact,
        &[id],
        2e-6,
        "own momentum, schedule (twin)",
    );
    close(
        &mut opt,
        &dense,
        &[id],
        2e-5,
        "own momentum, schedule (dense)",
    );
}

#[test]
fn steps_the_non_finite_policy_skips_do_not_count() {
    // Also under a schedule with decay, whose history of 2 steps resets before skipped steps too.
    let skip = |b: RmsPropConfigBuilder| b.non_finite(wgpu_rmsprop::NonFinite::SkipStep);
    let constant = skip(keras(0.01).momentum(0.9).centered(true));
    let scheduled = skip(
        keras(0.0)
            .learning_rate(sched())
            .momentum(0.9)
            .weight_decay_mode(WeightDecay::Decoupled(0.1))
            .lazy_exact_history(2),
    );
    for (label, b) in [("constant", constant), ("scheduled", scheduled)] {
        skipping(b, label);
    }
}

fn skipping(b: RmsPropConfigBuilder, label: &str) {
    let mut t = Trio::new(b, &[[30, 4], [10, 2]], 14);
    let mut rng = Rng::new(14);
    for s in 0..12 {
        t.step(&[Some(vec![s % 30, 29]), Some(vec![s % 10])], &mut rng, 1.0);
        if s % 4 == 1 {
            // A NaN in the second table skips the whole step (both tables): no row counts it.
            let v0 = rng.vec(4, 1.0, 0);
            let v1 = vec![f32::NAN, 1.0];
            let (i0, i1) = ([3i64], [2i64]);
            t.opt
                .apply(&[
                    (
                        t.ids[0],
                        Gradient::Sparse {
                            indices: Indices::I64(&i0),
                            values: &v0,
                        },
                    ),
                    (
                        t.ids[1],
                        Gradient::Sparse {
                            indices: Indices::I64(&i1),
                            values: &v1,
                        },
                    ),
                ])
                .unwrap();
            for r in [&mut t.exact, &mut t.dense] {
                r.step(&[
                    Some(RefGradient::Sparse {
                        indices: &[3],
                        values: &v0,
                    }),
                    Some(RefGradient::Sparse {
                        indices: &[2],
                        values: &v1,
                    }),
                ])
                .unwrap();
            }
        }
    }
    assert_eq!(t.exact.skipped, 3);
    assert_eq!(t.opt.skipped_steps().unwrap(), 3);
    t.check(2e-5, label);
}
