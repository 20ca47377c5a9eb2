//! Non-finite gradients, checkpoints, long runs.

mod common;

use common::{assert_matches, ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{Gradient, Indices, NonFinite, RmsProp, RmsPropConfig, Slot};

#[test]
fn skip_step_skips_the_whole_step_on_the_gpu_and_counts_it() {
    for clip in [false, true] {
        let mut b = RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .centered(true)
            .non_finite(NonFinite::SkipStep);
        if clip {
            b = b.global_clipnorm(1.0);
        }
        let cfg = b.build().unwrap();
        let mut rng = Rng::new(4);
        let (i0, i1) = (rng.vec(300, 1.0, 0), rng.vec(40, 1.0, 0));
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let a = opt.add_variable("a", &[300], &i0).unwrap();
        let t = opt.add_variable("t", &[10, 4], &i1).unwrap();
        let mut r = Reference::new(cfg.clone());
        r.add_variable(&[300], &i0);
        r.add_variable(&[10, 4], &i1);
        for step in 0..6 {
            let mut g = rng.vec(300, 1.0, 0);
            let mut rows = rng.vec(8, 1.0, 0);
            match step {
                1 => g[123] = f32::NAN,
                3 => rows[5] = f32::INFINITY,
                4 => g[0] = f32::NEG_INFINITY,
                _ => {}
            }
            let before = snapshot(&mut opt, &[a, t]);
            opt.apply(&[
                (a, Gradient::Dense(&g)),
                (
                    t,
                    Gradient::Sparse {
                        indices: Indices::I32(&[7, 2]),
                        values: &rows,
                    },
                ),
            ])
            .unwrap();
            r.step(&[
                Some(RefGradient::Dense(&g)),
                Some(RefGradient::Sparse {
                    indices: &[7, 2],
                    values: &rows,
                }),
            ])
            .unwrap();
            if matches!(step, 1 | 3 | 4) {
                let after = snapshot(&mut opt, &[a, t]);
                assert_eq!(
                    after.1, before.1,
                    "step {step} must leave every variable and slot as it was"
                );
            }
            assert_matches(&mut opt, a, &r.vars[0], &format!("a after step {step}"));
            assert_matches(&mut opt, t, &r.vars[1], &format!("t after step {step}"));
        }
        assert_eq!(opt.skipped_steps().unwrap(), 3);
        assert_eq!(r.skipped, 3);
        assert_eq!(opt.iterations(), 6);
    }
}

#[test]
fn propagate_lets_nan_flow_into_the_state_as_tensorflow_does() {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let a = opt.add_variable("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    opt.apply_gradients(&[(a, &[0.5, f32::NAN, 0.5])]).unwrap();
    let x = opt.read_variable(a).unwrap();
    let v = opt.read_slot(a, Slot::Velocity).unwrap();
    assert!(x[0].is_finite() && x[2].is_finite());
    assert!(x[1].is_nan() && v[1].is_nan());
    assert_eq!(opt.skipped_steps().unwrap(), 0);
}
