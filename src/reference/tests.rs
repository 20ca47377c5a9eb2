//! Unit tests of the CPU twin: hand-checkable steps, storage rounding, stochastic rounding, 8-bit state.
use super::*;
use crate::config::Preset;
use crate::dtype::Dtype;

fn storage(variable: Dtype, gradient: Dtype, state: Dtype) -> StorageTypes {
    StorageTypes {
        variable,
        gradient,
        state,
        copy: None,
    }
}

fn keras(lr: f64) -> crate::config::RmsPropConfigBuilder {
    RmsPropConfig::preset(Preset::Keras).learning_rate(lr)
}

#[test]
fn a_step_below_half_an_ulp_leaves_a_bf16_variable_while_f32_state_moves() {
    // x = 1.5 in bf16 (ulp 2^-7); each step moves it by lr / sqrt(v) <= 0.0032 < 2^-8.
    let mixed = storage(Dtype::Bf16, Dtype::F32, Dtype::F32);
    let mut r = Reference::new(keras(0.001).storage(mixed).build().unwrap());
    let mut f = Reference::new(keras(0.001).build().unwrap());
    r.add_variable(&[], &[1.5]);
    f.add_variable(&[], &[1.5]);
    for _ in 0..5 {
        r.step(&[Some(RefGradient::Dense(&[1.0]))]).unwrap();
        f.step(&[Some(RefGradient::Dense(&[1.0]))]).unwrap();
        assert_eq!(r.vars[0].x[0], 1.5);
        // The f32 velocity is exactly the f32 optimizer's (it only sees the same gradients).
        assert_eq!(r.vars[0].v[0].to_bits(), f.vars[0].v[0].to_bits());
    }
    // The f32 variable drifted by five increments, more than an ulp of bf16.
    assert!(f.vars[0].x[0] < 1.5 - 2f32.powi(-7), "{}", f.vars[0].x[0]);
}

#[test]
fn an_f16_subnormal_velocity_survives() {
    // v = (1 - rho) g^2 = 0.1 * 2^-20 ~ 9.5e-8: below f16's smallest normal (2^-14), rounded to
    // the subnormal 2 * 2^-24, not flushed to zero.
    let c = keras(0.001)
        .rho(0.9)
        .storage(StorageTypes::all(Dtype::F16))
        .build()
        .unwrap();
    let mut r = Reference::new(c.clone());
    r.add_variable(&[], &[1.0]);
    r.step(&[Some(RefGradient::Dense(&[2f32.powi(-10)]))])
        .unwrap();
    let v = r.vars[0].v[0];
    assert_eq!(v, 2f32.powi(-23));
    // The f32 value the step computed, rounded once.
    let p = c.scalars(1).unwrap();
    let s = rmsprop(
        &c,
        &p,
        State {
            x: 1.0,
            v: 0.0,
            m: 0.0,
            a: 0.0,
        },
        2f32.powi(-10),
        0.0,
        false,
    );
    assert_eq!(v, Dtype::F16.round(s.v));
    assert_eq!(r.vars[0].x[0], Dtype::F16.round(s.x));
}

#[test]
fn initial_values_and_gradients_are_rounded_on_entry() {
    let c = keras(0.01)
        .storage(StorageTypes::all(Dtype::Bf16))
        .build()
        .unwrap();
    let mut r = Reference::new(c.clone());
    r.add_variable(&[2], &[0.1, 3.0]);
    assert_eq!(r.vars[0].x, vec![205.0 / 2048.0, 3.0]);
    // 1 + 2^-9 is below half an ulp of 1 in bf16: the step is the step of gradient 1.
    let mut q = r.clone();
    r.step(&[Some(RefGradient::Dense(&[1.0 + 2f32.powi(-9), 1.0]))])
        .unwrap();
    q.step(&[Some(RefGradient::Dense(&[1.0, 1.0]))]).unwrap();
    assert_eq!(r.vars[0].x, q.vars[0].x);
    assert_eq!(r.vars[0].v, q.vars[0].v);
}

#[test]
fn keras3_duplicates_round_the_merged_row_but_not_the_squares() {
    // Rows 1 and 2^-8 for row 0: the merged row 1 + 2^-8 is a tie in bf16 and rounds to 1; the sum of
    // squares 1 + 2^-16 stays f32.
    let c = keras(0.01)
        .sparse_mode(SparseMode::Dense)
        .duplicate_indices(DuplicateIndices::Keras3)
        .storage(StorageTypes::all(Dtype::Bf16))
        .build()
        .unwrap();
    let mut r = Reference::new(c.clone());
    r.add_variable(&[2, 1], &[1.0, 1.0]);
    let (indices, values) = ([0usize, 0], [1.0f32, 2f32.powi(-8)]);
    r.step(&[Some(RefGradient::Sparse {
        indices: &indices,
        values: &values,
    })])
    .unwrap();
    let p = c.scalars(1).unwrap();
    let s0 = State {
        x: 1.0,
        v: 0.0,
        m: 0.0,
        a: 0.0,
    };
    let st = StorageTypes::all(Dtype::Bf16);
    let want = store(&st, rmsprop(&c, &p, s0, 1.0, 1.0 + 2f32.powi(-16), true));
    assert_eq!((r.vars[0].x[0], r.vars[0].v[0]), (want.x, want.v));
    // The absent row decays (nothing to decay from 0) and keeps its value.
    assert_eq!((r.vars[0].x[1], r.vars[0].v[1]), (1.0, 0.0));
}

#[test]
fn sequential_duplicates_store_each_pair_before_the_next() {
    let c = RmsPropConfig::preset(Preset::TfRaw)
        .learning_rate(0.01)
        .momentum(0.5)
        .sparse_mode(SparseMode::Lazy)
        .duplicate_indices(DuplicateIndices::Sequential)
        .storage(StorageTypes::all(Dtype::F16))
        .build()
        .unwrap();
    let mut r = Reference::new(c.clone());
    r.add_variable(&[3], &[1.0, -2.0, 0.5]);
    let (indices, values) = ([2usize, 0, 2], [0.3f32, 0.7, -0.2]);
    r.step(&[Some(RefGradient::Sparse {
        indices: &indices,
        values: &values,
    })])
    .unwrap();
    let p = c.scalars(1).unwrap();
    let st = StorageTypes::all(Dtype::F16);
    let fresh = |x: f32| State {
        x,
        v: 0.0,
        m: 0.0,
        a: 0.0,
    };
    let g = |x: f32| Dtype::F16.round(x);
    let once = store(&st, rmsprop(&c, &p, fresh(0.5), g(0.3), 0.0, false));
    let twice = store(&st, rmsprop(&c, &p, once, g(-0.2), 0.0, false));
    assert_eq!(r.vars[0].x[2], twice.x);
    assert_eq!(r.vars[0].v[2], twice.v);
    assert_eq!(r.vars[0].m.as_ref().unwrap()[2], twice.m);
    let row0 = store(&st, rmsprop(&c, &p, fresh(1.0), g(0.7), 0.0, false));
    assert_eq!(r.vars[0].x[0], row0.x);
    // The unlisted row is untouched.
    assert_eq!((r.vars[0].x[1], r.vars[0].v[1]), (-2.0, 0.0));
}

#[test]
fn per_variable_storage_overrides_the_configuration() {
    let c = keras(0.001).build().unwrap();
    let mut r = Reference::new(c);
    let bf16 = VarOptions {
        storage: Some(StorageTypes::all(Dtype::Bf16)),
        ..VarOptions::default()
    };
    r.add_variable_with(&[], &[1.5], &bf16).unwrap();
    r.add_variable(&[], &[1.5]);
    r.step(&[
        Some(RefGradient::Dense(&[1.0])),
        Some(RefGradient::Dense(&[1.0])),
    ])
    .unwrap();
    assert_eq!(r.vars[0].x[0], 1.5);
    assert!(r.vars[1].x[0] < 1.5);
    assert_eq!(r.vars[0].v[0], Dtype::Bf16.round(r.vars[1].v[0]));
    // Fixed when added.
    let err = r
        .set_variable_options(0, &VarOptions::default())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidVarOptions {
            field: "storage",
            ..
        }
    ));
    r.set_variable_options(0, &bf16).unwrap();
}

fn q8_state() -> StorageTypes {
    storage(Dtype::F32, Dtype::F32, Dtype::Q8)
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(0x85EB_CA6B);
            let h = (h ^ (h >> 13)).wrapping_mul(0xC2B2_AE35);
            ((h ^ (h >> 16)) as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// An f32-state twin whose slots are quantized after each step by hand (what q8 storage does).
fn quantize_by_hand(var: &mut ReferenceState, block: usize) {
    let (u, s) = (Codebook::dynamic(false), Codebook::dynamic(true));
    u.quantize_blocks(&mut var.v, block);
    if let Some(m) = var.m.as_mut() {
        s.quantize_blocks(m, block);
    }
    if let Some(a) = var.a.as_mut() {
        s.quantize_blocks(a, block);
    }
}

#[test]
fn q8_state_is_the_f32_step_quantized_by_blocks() {
    // 300 elements in blocks of 64: the last block partial (44).
    let (n, block) = (300, 64);
    for preset in [Preset::Keras, Preset::Torch, Preset::Tf1, Preset::Optax] {
        let b = || {
            RmsPropConfig::preset(preset)
                .learning_rate(0.01)
                .momentum(0.9)
                .centered(true)
                .q8_block(block)
                .q8_min_size(256)
        };
        let mut q = Reference::new(b().storage(q8_state()).build().unwrap());
        let mut f = Reference::new(b().build().unwrap());
        let init = values(n, 1, 1.0);
        q.add_variable(&[n], &init);
        f.add_variable(&[n], &init);
        // The initial velocity (1 for tf1) is quantized: a constant block is stored exactly.
        quantize_by_hand(&mut f.vars[0], block);
        assert_eq!(q.vars[0].v, f.vars[0].v);
        let q8 = q.vars[0].q8.clone().expect("quantized");
        assert_eq!(q8.v.absmax.len(), 5);
        let init_v = RmsPropConfig::preset(preset)
            .build()
            .unwrap()
            .initial_accumulator_value() as f32;
        assert!(q8.v.absmax.iter().all(|&a| a == init_v), "{preset:?}");
        assert_eq!(q8.m.as_ref().unwrap().codes, vec![0; n]);
        for t in 0..6 {
            let g = values(n, 10 + t, 0.1);
            q.step(&[Some(RefGradient::Dense(&g))]).unwrap();
            f.step(&[Some(RefGradient::Dense(&g))]).unwrap();
            quantize_by_hand(&mut f.vars[0], block);
            let (qv, fv) = (&q.vars[0], &f.vars[0]);
            assert_eq!(qv.x, fv.x, "{preset:?} step {t}");
            assert_eq!((&qv.v, &qv.m, &qv.a), (&fv.v, &fv.m, &fv.a));
            // The codes and absmax decode to the slots' values.
            let q8 = qv.q8.as_ref().unwrap();
            assert_eq!(
                Codebook::dynamic(false).dequantize_blocks(&q8.v, block),
                qv.v
            );
            let s = Codebook::dynamic(true);
            assert_eq!(
                s.dequantize_blocks(q8.m.as_ref().unwrap(), block),
                *qv.m.as_ref().unwrap()
            );
            assert_eq!(
                s.dequantize_blocks(q8.a.as_ref().unwrap(), block),
                *qv.a.as_ref().unwrap()
            );
            assert_eq!(q8.v.absmax[4], crate::quant::block_absmax(&qv.v[256..]));
        }
        // Quantization did something: the values differ from an unquantized run.
        let mut plain = Reference::new(b().build().unwrap());
        plain.add_variable(&[n], &init);
        for t in 0..6 {
            let g = values(n, 10 + t, 0.1);
            plain.step(&[Some(RefGradient::Dense(&g))]).unwrap();
        }
        assert_ne!(plain.vars[0].v, q.vars[0].v);
    }
}

#[test]
fn q8_small_variables_keep_f32_state_and_absent_ones_stay() {
    let b = || keras(0.01).momentum(0.5).q8_block(64).q8_min_size(128);
    let mut q = Reference::new(b().storage(q8_state()).build().unwrap());
    let mut f = Reference::new(b().build().unwrap());
    // 127 elements: below q8_min_size; 128: quantized.
    for r in [&mut q, &mut f] {
        r.add_variable(&[127], &values(127, 2, 1.0));
        r.add_variable(&[128], &values(128, 3, 1.0));
    }
    assert!(q.vars[0].q8.is_none() && q.vars[1].q8.is_some());
    let (g0, g1) = (values(127, 4, 0.1), values(128, 5, 0.1));
    q.step(&[Some(RefGradient::Dense(&g0)), Some(RefGradient::Dense(&g1))])
        .unwrap();
    f.step(&[Some(RefGradient::Dense(&g0)), Some(RefGradient::Dense(&g1))])
        .unwrap();
    let (a, b) = (&q.vars[0], &f.vars[0]);
    assert_eq!((&a.x, &a.v, &a.m, &a.q8), (&b.x, &b.v, &b.m, &None));
    assert_ne!(q.vars[1].v, f.vars[1].v);
    // A variable absent from a step is not touched (not requantized).
    let before = q.vars[1].clone();
    q.step(&[Some(RefGradient::Dense(&g0)), None]).unwrap();
    assert_eq!(q.vars[1], before);
}

#[test]
fn q8_per_variable_storage_and_slots_gained_later() {
    let c = keras(0.01).q8_block(64).q8_min_size(64).build().unwrap();
    let mut r = Reference::new(c);
    let q8 = VarOptions {
        storage: Some(q8_state()),
        ..VarOptions::default()
    };
    r.add_variable_with(&[100], &values(100, 6, 1.0), &q8)
        .unwrap();
    r.add_variable(&[100], &values(100, 6, 1.0));
    assert!(r.vars[0].q8.is_some() && r.vars[1].q8.is_none());
    let g = values(100, 7, 0.1);
    r.step(&[Some(RefGradient::Dense(&g)), Some(RefGradient::Dense(&g))])
        .unwrap();
    assert_ne!(r.vars[0].v, r.vars[1].v);
    let mut want = r.vars[1].v.clone();
    // One step from v = 0: the f32 velocity quantized by blocks.
    Codebook::dynamic(false).quantize_blocks(&mut want, 64);
    assert_eq!(r.vars[0].v, want);
    // Momentum gained: zero bytes, zero values; lost: dropped.
    let with_m = VarOptions {
        momentum: Some(0.9),
        ..q8.clone()
    };
    r.set_variable_options(0, &with_m).unwrap();
    let m = r.vars[0].q8.as_ref().unwrap().m.clone().unwrap();
    assert_eq!((m.codes, m.absmax), (vec![0; 100], vec![0.0; 2]));
    r.step(&[Some(RefGradient::Dense(&g)), None]).unwrap();
    assert!(r.vars[0].m.as_ref().unwrap().iter().any(|&x| x != 0.0));
    r.set_variable_options(0, &q8).unwrap();
    assert!(r.vars[0].m.is_none() && r.vars[0].q8.as_ref().unwrap().m.is_none());
    // q8 is a state type only.
    let bad = VarOptions {
        storage: Some(StorageTypes::all(Dtype::Q8)),
        ..VarOptions::default()
    };
    assert!(matches!(
        r.add_variable_with(&[100], &[0.0; 100], &bad),
        Err(Error::InvalidVarOptions {
            field: "storage",
            ..
        })
    ));
}

#[test]
fn q8_sequential_sparse_gradients_are_refused_before_anything_changes() {
    let c = keras(0.01)
        .duplicate_indices(DuplicateIndices::Sequential)
        .storage(q8_state())
        .q8_block(64)
        .q8_min_size(64)
        .build()
        .unwrap();
    let mut r = Reference::new(c);
    r.add_variable(&[8, 8], &values(64, 8, 1.0));
    // Below q8_min_size: f32 state, sparse steps are fine.
    r.add_variable(&[4, 8], &values(32, 9, 1.0));
    let before = r.clone();
    let (indices, rows) = ([1usize], [0.5f32; 8]);
    let sparse = RefGradient::Sparse {
        indices: &indices,
        values: &rows,
    };
    let err = r.step(&[Some(sparse), None]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "sparse_mode",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("var0"), "{err}");
    assert_eq!((&r.vars, r.iterations), (&before.vars, before.iterations));
    r.step(&[None, Some(sparse)]).unwrap();
    assert_eq!(r.iterations, 1);
    // Frozen: the gradient is ignored, so it is not refused.
    let frozen = VarOptions {
        frozen: true,
        storage: Some(q8_state()),
        ..VarOptions::default()
    };
    r.set_variable_options(0, &frozen).unwrap();
    r.step(&[Some(sparse), None]).unwrap();
}

#[test]
fn keras_base_features_with_16_bit_storage_are_refused() {
    // The configuration refuses them (the optimizer and the twin alike).
    let err = keras(0.001)
        .use_ema(true)
        .storage(StorageTypes::all(Dtype::F16))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "storage",
                ..
            }
        ),
        "{err}"
    );
}
