//! NaN and ±Inf gradients with every clip kind under `NonFinite::Propagate`.
//!
//! WGSL's `clamp`/`min`/`max` of a NaN is undefined (SPIR-V FClamp/FMin/FMax), and Rust's `f32::max`/
//! `min` ignore a NaN while `f32::clamp` keeps it, so the kernels and the CPU twin spell the NaN case out
//! (README, "Clipping"). These tests pin that rule: the GPU against the twin on every variable and slot
//! after several steps, and both against values worked out by hand for a tiny case.

mod common;

use common::{ctx, Rng, ATOL, RTOL};
use wgpu_rmsprop::reference::{RefGradient, Reference, ReferenceState};
use wgpu_rmsprop::{
    ClipRules, Gradient, Indices, NonFinite, Preset, RmsProp, RmsPropConfig, RmsPropConfigBuilder,
    Slot, VarId,
};

#[derive(Debug, Clone, Copy)]
enum Clip {
    Value,
    Norm,
    Global,
    /// Keras 2 (legacy) order: clipvalue, then clipnorm.
    ValueThenNorm,
    /// clipvalue, then global_clipnorm.
    ValueThenGlobal,
}

const CLIPS: [Clip; 5] = [
    Clip::Value,
    Clip::Norm,
    Clip::Global,
    Clip::ValueThenNorm,
    Clip::ValueThenGlobal,
];

const BAD: [f32; 3] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];

fn with_clip(b: RmsPropConfigBuilder, clip: Clip, value: f64, norm: f64) -> RmsPropConfig {
    let b = match clip {
        Clip::Value => b.clipvalue(value),
        Clip::Norm => b.clipnorm(norm),
        Clip::Global => b.global_clipnorm(norm),
        Clip::ValueThenNorm => b.clipvalue(value).clipnorm(norm),
        Clip::ValueThenGlobal => b.clipvalue(value).global_clipnorm(norm),
    };
    b.non_finite(NonFinite::Propagate).build().unwrap()
}

/// Lavapipe computes exactly what the twin does (no fma contraction; the gradients below make every sum
/// of squares exact, so the f32 reduction tree and the twin's f64 sum agree). Elsewhere finite values
/// get the usual tolerance; non-finite ones must match everywhere.
fn bit_exact_adapter() -> bool {
    ctx()
        .adapter_info()
        .is_some_and(|i| i.name.to_lowercase().contains("llvmpipe"))
}

/// `actual` equals `expected` bit for bit, or both are NaN (any payload); with `exact` false, finite
/// values may differ within the tests' tolerance.
fn assert_same(label: &str, actual: &[f32], expected: &[f32], exact: bool) {
    assert_eq!(actual.len(), expected.len(), "{label}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let ok = if e.is_nan() || a.is_nan() {
            a.is_nan() && e.is_nan()
        } else if exact || !e.is_finite() || !a.is_finite() {
            a.to_bits() == e.to_bits()
        } else {
            (a - e).abs() <= ATOL + RTOL * e.abs()
        };
        assert!(ok, "{label}[{i}]: got {a:e}, expected {e:e}");
    }
}

fn assert_state(opt: &mut RmsProp, id: VarId, r: &ReferenceState, label: &str, exact: bool) {
    assert_same(
        &format!("{label} x"),
        &opt.read_variable(id).unwrap(),
        &r.x,
        exact,
    );
    let slots = [
        (Slot::Velocity, Some(&r.v)),
        (Slot::Momentum, r.m.as_ref()),
        (Slot::AverageGradient, r.a.as_ref()),
    ];
    for (slot, want) in slots {
        match want {
            Some(want) => assert_same(
                &format!("{label} {}", slot.name()),
                &opt.read_slot(id, slot).unwrap(),
                want,
                exact,
            ),
            None => assert!(opt.read_slot(id, slot).is_err(), "{label}: {slot:?} kept"),
        }
    }
}

/// Multiples of 1/8 in [-3, 3]: their squares and sums are exact in f32.
fn eighths(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f32() * 24.0).round() / 8.0)
        .collect()
}

/// Every clip kind, every non-finite value, two conventions (Keras with momentum and centered, lazy sparse
/// rows; PyTorch, epsilon outside the square root and sparse rows merged densely), a dense and a sparse
/// variable: the bad value enters the dense gradient at step 2 and the sparse one at step 4; the GPU
/// matches the twin on the variables and every slot after each step.
#[test]
fn nonfinite_gradients_match_the_twin_for_every_clip_kind() {
    let exact = bit_exact_adapter();
    for clip in CLIPS {
        let value_then_norm = matches!(clip, Clip::ValueThenNorm | Clip::ValueThenGlobal);
        let keras = if value_then_norm {
            RmsPropConfig::preset(Preset::KerasLegacy)
        } else {
            RmsPropConfig::preset(Preset::Keras)
        };
        let conventions = [
            (
                "keras",
                keras
                    .learning_rate(0.01)
                    .rho(0.8)
                    .momentum(0.5)
                    .centered(true),
            ),
            (
                "torch",
                RmsPropConfig::preset(Preset::Torch)
                    .momentum(0.3)
                    .centered(true),
            ),
        ];
        for (name, builder) in conventions {
            let cfg = with_clip(builder, clip, 0.5, 1.0);
            for bad in BAD {
                let label = format!("{name} {clip:?} {bad}");
                let mut rng = Rng::new(11);
                let (d0, s0) = (rng.vec(37, 1.0, 0), rng.vec(18, 1.0, 0));
                let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
                let d = opt.add_variable("d", &[37], &d0).unwrap();
                let s = opt.add_variable("s", &[6, 3], &s0).unwrap();
                let mut r = Reference::new(cfg.clone());
                r.add_variable(&[37], &d0);
                r.add_variable(&[6, 3], &s0);
                let indices = [4usize, 1, 4];
                for step in 1..=5 {
                    let mut g = eighths(&mut rng, 37);
                    let mut rows = eighths(&mut rng, 9);
                    match step {
                        2 => g[5] = bad,
                        4 => rows[4] = bad,
                        _ => {}
                    }
                    opt.apply(&[
                        (d, Gradient::Dense(&g)),
                        (
                            s,
                            Gradient::Sparse {
                                indices: Indices::I32(&[4, 1, 4]),
                                values: &rows,
                            },
                        ),
                    ])
                    .unwrap();
                    r.step(&[
                        Some(RefGradient::Dense(&g)),
                        Some(RefGradient::Sparse {
                            indices: &indices,
                            values: &rows,
                        }),
                    ])
                    .unwrap();
                    let at = format!("{label} step {step}");
                    assert_state(&mut opt, d, &r.vars[0], &format!("{at} d"), exact);
                    assert_state(&mut opt, s, &r.vars[1], &format!("{at} s"), exact);
                }
            }
        }
    }
}

/// The clipped gradients of the tiny case, by hand: variable `a = [bad, 3, -4]`, variable `b = [0.5, -0.5]`,
/// clipvalue 2, clipnorm / global_clipnorm 1.
fn clipped_by_hand(clip: Clip, bad: f32) -> (Vec<f32>, Vec<f32>) {
    let nan = f32::NAN;
    let b = vec![0.5, -0.5];
    // clip_by_value: NaN stays NaN, ±Inf becomes ±2.
    let bad_clipped = if bad.is_nan() {
        nan
    } else {
        2.0f32.copysign(bad)
    };
    match clip {
        Clip::Value => (vec![bad_clipped, 2.0, -2.0], b),
        // ||a|| is NaN: all of a is NaN. ||a|| = inf: a * 1 / inf, so 0 (with its sign) for the finite
        // elements and inf / inf = NaN for the infinite one. ||b|| < 1: b unchanged.
        Clip::Norm => {
            if bad.is_nan() {
                (vec![nan; 3], b)
            } else {
                (vec![nan, 0.0, -0.0], b)
            }
        }
        // A non-finite global norm makes every gradient of the step NaN (Keras / TF).
        Clip::Global => (vec![nan; 3], vec![nan; 2]),
        // clipvalue first: an infinite element becomes ±2, so the norm is finite, sqrt(12).
        Clip::ValueThenNorm => {
            if bad.is_nan() {
                (vec![nan; 3], b)
            } else {
                let n = 12.0f32.sqrt();
                (
                    vec![bad_clipped * 1.0 / n, 2.0 * 1.0 / n, -2.0 * 1.0 / n],
                    b,
                )
            }
        }
        // Global norm of [±2, 2, -2] and b: sqrt(12.5); scale = 1 * min(1/n, 1/1).
        Clip::ValueThenGlobal => {
            if bad.is_nan() {
                (vec![nan; 3], vec![nan; 2])
            } else {
                let scale = 1.0 * (1.0 / 12.5f32.sqrt());
                (
                    vec![bad_clipped * scale, 2.0 * scale, -2.0 * scale],
                    vec![0.5 * scale, -0.5 * scale],
                )
            }
        }
    }
}

/// One Keras step from x = 1, v = 0 with the clipped gradient `g` (lr 0.1, rho 0.75, eps 1e-7):
/// `(x, v)`.
fn keras_step_by_hand(g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let v: Vec<f32> = g.iter().map(|&g| 0.75 * 0.0 + 0.25 * (g * g)).collect();
    let x = g
        .iter()
        .zip(&v)
        .map(|(&g, &v)| 1.0 - (0.1 * g) / (v + 1e-7).sqrt())
        .collect();
    (x, v)
}

/// The rule on a case small enough to work out by hand: GPU and twin both give the hand values (NaN
/// exactly where the rule says, finite values within the tolerance).
#[test]
fn nonfinite_clipping_follows_the_rule_worked_out_by_hand() {
    for clip in CLIPS {
        let builder = RmsPropConfig::builder()
            .learning_rate(0.1)
            .rho(0.75)
            .clip_rules(ClipRules::ValueThenNorm);
        let cfg = with_clip(builder, clip, 2.0, 1.0);
        for bad in BAD {
            let label = format!("{clip:?} {bad}");
            let (ga, gb) = ([bad, 3.0, -4.0], [0.5, -0.5]);
            let (ca, cb) = clipped_by_hand(clip, bad);
            let (xa, va) = keras_step_by_hand(&ca);
            let (xb, vb) = keras_step_by_hand(&cb);

            let mut r = Reference::new(cfg.clone());
            r.add_variable(&[3], &[1.0; 3]);
            r.add_variable(&[2], &[1.0; 2]);
            r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
                .unwrap();
            assert_same(&format!("twin {label} a x"), &r.vars[0].x, &xa, false);
            assert_same(&format!("twin {label} a v"), &r.vars[0].v, &va, false);
            assert_same(&format!("twin {label} b x"), &r.vars[1].x, &xb, false);
            assert_same(&format!("twin {label} b v"), &r.vars[1].v, &vb, false);

            let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
            let a = opt.add_variable("a", &[3], &[1.0; 3]).unwrap();
            let b = opt.add_variable("b", &[2], &[1.0; 2]).unwrap();
            opt.apply_gradients(&[(a, &ga), (b, &gb)]).unwrap();
            let gpu = |opt: &mut RmsProp, id| {
                (
                    opt.read_variable(id).unwrap(),
                    opt.read_slot(id, Slot::Velocity).unwrap(),
                )
            };
            let (gxa, gva) = gpu(&mut opt, a);
            let (gxb, gvb) = gpu(&mut opt, b);
            assert_same(&format!("gpu {label} a x"), &gxa, &xa, false);
            assert_same(&format!("gpu {label} a v"), &gva, &va, false);
            assert_same(&format!("gpu {label} b x"), &gxb, &xb, false);
            assert_same(&format!("gpu {label} b v"), &gvb, &vb, false);
        }
    }
}
