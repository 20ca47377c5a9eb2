//! Bad input gets a typed error that names the value, and leaves every variable, slot and the step
//! count exactly as they were.

mod common;

use common::{assert_matches, ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{Error, GpuGradient, RmsProp, RmsPropConfig, Slot, VarId};

#[test]
fn bad_hyperparameters_are_rejected_with_field_and_value() {
    let b = RmsPropConfig::builder;
    let cases: Vec<(Result<RmsPropConfig, Error>, &str, &str)> = vec![
        (b().rho(1.0).build(), "rho", "1"),
        (b().rho(1.5).build(), "rho", "1.5"),
        (b().rho(-0.1).build(), "rho", "-0.1"),
        (b().rho(f64::NAN).build(), "rho", "NaN"),
        (b().epsilon(-1e-7).build(), "epsilon", "-0.0000001"),
        (b().epsilon(f64::INFINITY).build(), "epsilon", "inf"),
        (b().learning_rate(-0.1).build(), "learning_rate", "-0.1"),
        (b().learning_rate(f64::NAN).build(), "learning_rate", "NaN"),
        (
            b().learning_rate(1e40).build(),
            "learning_rate",
            "10000000000000000000000000000000000000000",
        ),
        (b().momentum(-0.5).build(), "momentum", "-0.5"),
        (b().momentum(f64::NEG_INFINITY).build(), "momentum", "-inf"),
        (b().name("").build(), "name", "\"\""),
    ];
    for (result, field, value) in cases {
        match result {
            Err(Error::InvalidConfig {
                field: f, value: v, ..
            }) => {
                assert_eq!((f, v.as_str()), (field, value));
            }
            other => panic!("{field}={value}: expected InvalidConfig, got {other:?}"),
        }
    }
    let msg = b().rho(1.5).build().unwrap_err().to_string();
    assert_eq!(msg, "`rho` must be in [0, 1). Received: rho=1.5");
    // Edge values that are valid.
    assert!(b()
        .rho(0.0)
        .epsilon(0.0)
        .momentum(0.0)
        .learning_rate(0.0)
        .build()
        .is_ok());
    let d = RmsPropConfig::default();
    assert_eq!(
        (d.rho(), d.momentum(), d.epsilon(), d.centered()),
        (0.9, 0.0, 1e-7, false)
    );
}

/// An optimizer with two variables after two steps, and its reference.
fn setup() -> (RmsProp, Vec<VarId>, Reference, RmsPropConfig) {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.05)
        .momentum(0.5)
        .centered(true)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut rng = Rng::new(3);
    let mut ids = Vec::new();
    let mut refs = Reference::new(cfg.clone());
    for (k, n) in [6usize, 9].into_iter().enumerate() {
        let init = rng.vec(n, 1.0, 0);
        ids.push(opt.add_variable(&format!("w{k}"), &[n], &init).unwrap());
        refs.add_variable(&[n], &init);
    }
    for _ in 1..=2 {
        let g: Vec<Vec<f32>> = [6, 9].iter().map(|&n| rng.vec(n, 1.0, 0)).collect();
        opt.apply_gradients(&[(ids[0], &g[0]), (ids[1], &g[1])])
            .unwrap();
        refs.step(&[
            Some(RefGradient::Dense(&g[0])),
            Some(RefGradient::Dense(&g[1])),
        ])
        .unwrap();
    }
    (opt, ids, refs, cfg)
}

#[test]
fn bad_steps_change_nothing() {
    let (mut opt, ids, mut refs, cfg) = setup();
    let before = snapshot(&mut opt, &ids);
    let good6 = [0.5f32; 6];
    let good9 = [0.25f32; 9];

    // Wrong length, listed after a valid gradient: nothing of the valid one may be written either.
    let e = opt
        .apply_gradients(&[(ids[0], &good6), (ids[1], &[1.0; 8])])
        .unwrap_err();
    assert_eq!(
        e,
        Error::GradientLength {
            name: "w1".into(),
            expected: 9,
            got: 8
        }
    );
    assert!(e.to_string().contains("has 8 elements, the variable has 9"));

    // The same variable twice.
    let e = opt
        .apply_gradients(&[(ids[0], &good6), (ids[0], &good6)])
        .unwrap_err();
    assert_eq!(e, Error::DuplicateGradient { name: "w0".into() });

    // A handle of another optimizer.
    let mut other = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let foreign = other.add_variable("w0", &[6], &[0.0; 6]).unwrap();
    let e = opt
        .apply_gradients(&[(ids[1], &good9), (foreign, &good6)])
        .unwrap_err();
    assert!(matches!(e, Error::UnknownVariable(_)), "{e:?}");
    assert!(matches!(
        opt.read_variable(foreign),
        Err(Error::UnknownVariable(_))
    ));
    assert!(
        matches!(opt.variable("nope"), Err(Error::UnknownVariable(ref n)) if n.contains("nope"))
    );

    // Bad variables.
    let e = opt.add_variable("w0", &[2], &[0.0; 2]).unwrap_err();
    assert_eq!(e, Error::DuplicateVariable { name: "w0".into() });
    let e = opt.add_variable("w2", &[2, 3], &[0.0; 5]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InitLength {
                expected: 6,
                got: 5,
                ..
            }
        ),
        "{e:?}"
    );
    let e = opt.add_variable("w3", &[usize::MAX, 2], &[]).unwrap_err();
    assert!(matches!(e, Error::InvalidShape { .. }), "{e:?}");

    // GPU gradient buffers: missing COPY_SRC, unaligned offset, too small.
    let device = ctx().device();
    let mk = |usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bad"),
            size: 64,
            usage,
            mapped_at_creation: false,
        })
    };
    let no_copy = mk(wgpu::BufferUsages::STORAGE);
    let ok_buf = mk(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
    for (buffer, offset, needle) in [
        (&no_copy, 0, "COPY_SRC"),
        (&ok_buf, 2, "multiple of 4"),
        (&ok_buf, 32, "exceeds the buffer's 64 bytes"),
    ] {
        let e = opt
            .apply_gpu_gradients(&[
                (
                    ids[0],
                    GpuGradient {
                        buffer: &ok_buf,
                        offset: 0,
                    },
                ),
                (ids[1], GpuGradient { buffer, offset }),
            ])
            .unwrap_err();
        match e {
            Error::GradientBuffer {
                ref name,
                ref reason,
            } => {
                assert_eq!(name, "w1");
                assert!(reason.contains(needle), "{reason}");
            }
            e => panic!("expected GradientBuffer, got {e:?}"),
        }
    }

    // An absent slot is a typed error too.
    let mut plain = RmsProp::new(ctx(), RmsPropConfig::default()).unwrap();
    let p = plain.add_variable("p", &[2], &[1.0, 2.0]).unwrap();
    assert!(matches!(
        plain.read_slot(p, Slot::Momentum),
        Err(Error::SlotNotPresent {
            slot: "momentum",
            ..
        })
    ));

    assert_eq!(
        snapshot(&mut opt, &ids),
        before,
        "state changed after rejected calls"
    );
    assert_eq!(opt.iterations(), 2);

    // And the optimizer still works, in step with the reference.
    opt.apply_gradients(&[(ids[0], &good6), (ids[1], &good9)])
        .unwrap();
    refs.step(&[
        Some(RefGradient::Dense(&good6)),
        Some(RefGradient::Dense(&good9)),
    ])
    .unwrap();
    for (k, &id) in ids.iter().enumerate() {
        assert_matches(&mut opt, id, &refs.vars[k], &format!("w{k}"));
    }
}

#[test]
fn invalid_tuning_options_are_rejected() {
    use wgpu_rmsprop::OptimizerOptions;
    for (options, field) in [
        (
            OptimizerOptions {
                workgroup_size: 0,
                ..Default::default()
            },
            "workgroup_size",
        ),
        (
            OptimizerOptions {
                workgroup_size: 1 << 20,
                ..Default::default()
            },
            "workgroup_size",
        ),
        (
            OptimizerOptions {
                max_chunk_bytes: Some(8),
                ..Default::default()
            },
            "max_chunk_bytes",
        ),
        (
            OptimizerOptions {
                max_workgroups_per_dimension: Some(0),
                ..Default::default()
            },
            "max_workgroups_per_dimension",
        ),
        (
            OptimizerOptions {
                vec4s_per_invocation: 0,
                ..Default::default()
            },
            "vec4s_per_invocation",
        ),
        (
            OptimizerOptions {
                vec4s_per_invocation: 17,
                ..Default::default()
            },
            "vec4s_per_invocation",
        ),
    ] {
        match RmsProp::with_options(ctx(), RmsPropConfig::default(), options) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}
