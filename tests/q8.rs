//! 8-bit block-wise quantized optimizer state (`Dtype::Q8`) on the GPU against the CPU twin, bit for
//! bit: every preset's dense step, blocks of 64 to 1,024 elements, partial last blocks, variables
//! split across pool buffers, several variables per pool, small variables kept in f32, dense-mode
//! sparse steps; state bytes; what is refused (lazy steps: tests/q8_lazy.rs).

mod common;

use common::{ctx, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Dtype, Error, Gradient, Indices, OptimizerOptions, Preset, RmsProp, RmsPropConfig,
    RmsPropConfigBuilder, Slot, StorageTypes, VarId,
};

fn q8() -> StorageTypes {
    StorageTypes {
        state: Dtype::Q8,
        ..StorageTypes::default()
    }
}

/// `label`: how many elements differ in bits, and the first (no megabyte dumps on failure).
fn same(got: &[f32], want: &[f32], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let diff: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = diff.first() {
        panic!(
            "{label}: {} of {} differ, first [{i}]: {} vs {}",
            diff.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Every variable and slot against the twin, bit for bit.
fn check(opt: &mut RmsProp, r: &Reference, ids: &[VarId], label: &str) {
    for (k, &id) in ids.iter().enumerate() {
        let s = &r.vars[k];
        same(
            &opt.read_variable(id).unwrap(),
            &s.x,
            &format!("{label} w{k} x"),
        );
        let v = opt.read_slot(id, Slot::Velocity).unwrap();
        same(&v, &s.v, &format!("{label} w{k} velocity"));
        if let Some(m) = &s.m {
            let got = opt.read_slot(id, Slot::Momentum).unwrap();
            same(&got, m, &format!("{label} w{k} momentum"));
        }
        if let Some(a) = &s.a {
            let got = opt.read_slot(id, Slot::AverageGradient).unwrap();
            same(&got, a, &format!("{label} w{k} average_gradient"));
        }
    }
}

/// Builds both, adds `lens` variables, runs `steps` dense steps with gradients spanning 1e-6..1.
fn run(
    b: RmsPropConfigBuilder,
    options: OptimizerOptions,
    lens: &[usize],
    steps: usize,
    label: &str,
) {
    let config = b.build().unwrap();
    let mut opt = RmsProp::with_options(ctx(), config.clone(), options).unwrap();
    let mut r = Reference::new(config);
    let mut rng = Rng::new(11);
    let mut ids = Vec::new();
    for (k, &n) in lens.iter().enumerate() {
        let init = rng.vec(n, 1.0, 0);
        ids.push(opt.add_variable(&format!("w{k}"), &[n], &init).unwrap());
        r.add_variable(&[n], &init);
    }
    check(&mut opt, &r, &ids, &format!("{label} init"));
    for t in 0..steps {
        let grads: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| {
                let scale = 10f32.powi(-((t % 6) as i32));
                rng.vec(n, scale, 7)
            })
            .collect();
        let g: Vec<(VarId, Gradient)> = ids
            .iter()
            .zip(&grads)
            .map(|(&id, g)| (id, Gradient::Dense(g)))
            .collect();
        opt.apply(&g).unwrap();
        let rg: Vec<Option<RefGradient>> =
            grads.iter().map(|g| Some(RefGradient::Dense(g))).collect();
        r.step(&rg).unwrap();
        check(&mut opt, &r, &ids, &format!("{label} step {}", t + 1));
    }
}

#[test]
fn every_preset_matches_the_twin_bit_for_bit() {
    for preset in [
        Preset::Keras,
        Preset::KerasLegacy,
        Preset::TfRaw,
        Preset::Tf1,
        Preset::Torch,
        Preset::Optax,
    ] {
        for (momentum, centered) in [(0.0, false), (0.9, false), (0.9, true)] {
            let b = RmsPropConfig::preset(preset)
                .learning_rate(0.01)
                .momentum(momentum)
                .centered(centered)
                .storage(q8());
            // 4,096 (one full pool of blocks), 10,007 (a partial last block), and a small one in f32.
            run(
                b,
                OptimizerOptions::default(),
                &[4096, 10_007, 100],
                5,
                &format!("{preset:?} m={momentum} c={centered}"),
            );
        }
    }
}

#[test]
fn block_sizes_splits_and_alignment() {
    for block in [64usize, 256, 1024] {
        let b = RmsPropConfig::builder()
            .momentum(0.5)
            .centered(true)
            .storage(q8())
            .q8_block(block)
            .q8_min_size(1);
        // A variable split across pool buffers of 64 KiB, odd lengths, three variables in a pool.
        let options = OptimizerOptions {
            max_chunk_bytes: Some(1 << 16),
            slice_alignment: Some(256),
            ..OptimizerOptions::default()
        };
        run(b, options, &[3, 40_001, 777], 4, &format!("block {block}"));
    }
    // Several invocations per workgroup's vec4s.
    let b = RmsPropConfig::builder()
        .momentum(0.9)
        .storage(q8())
        .q8_min_size(1);
    let options = OptimizerOptions {
        vec4s_per_invocation: 3,
        workgroup_size: 64,
        ..OptimizerOptions::default()
    };
    run(b, options, &[5_000, 257], 4, "vec4s per invocation 3");
}

#[test]
fn dense_mode_sparse_steps_and_state_bytes() {
    let config = RmsPropConfig::preset(Preset::Keras)
        .learning_rate(0.01)
        .momentum(0.9)
        .sparse_mode(wgpu_rmsprop::SparseMode::Dense)
        .storage(q8())
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
    let mut r = Reference::new(config);
    let mut rng = Rng::new(5);
    let init = rng.vec(8192, 1.0, 0);
    let id = opt.add_variable("table", &[1024, 8], &init).unwrap();
    r.add_variable(&[1024, 8], &init);
    for t in 0..4 {
        let indices: Vec<i64> = vec![3, 700, 3, (t * 97) as i64 % 1024];
        let rows: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        let values = rng.vec(indices.len() * 8, 1.0, 0);
        opt.apply(&[(
            id,
            Gradient::Sparse {
                indices: Indices::I64(&indices),
                values: &values,
            },
        )])
        .unwrap();
        r.step(&[Some(RefGradient::Sparse {
            indices: &rows,
            values: &values,
        })])
        .unwrap();
        check(&mut opt, &r, &[id], &format!("sparse step {}", t + 1));
    }
    // State bytes: q8 with its absmax against f32, centered with momentum, 1M elements.
    let bytes = |state: Dtype| {
        let c = RmsPropConfig::builder()
            .momentum(0.9)
            .centered(true)
            .storage(StorageTypes {
                state,
                ..StorageTypes::default()
            })
            .build()
            .unwrap();
        let mut o = RmsProp::new(ctx(), c).unwrap();
        o.add_variable("w", &[1 << 20], &vec![0.0; 1 << 20])
            .unwrap();
        o.pool_stats().state_bytes
    };
    let ratio = bytes(Dtype::Q8) as f64 / bytes(Dtype::F32) as f64;
    assert!(ratio <= 0.26, "q8 / f32 state bytes: {ratio}");
}

#[test]
fn what_is_refused() {
    let e = RmsPropConfig::builder().q8_block(100).build().unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "q8_block",
                ..
            }
        ),
        "{e}"
    );
    let e = RmsPropConfig::builder().q8_block(8192).build().unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "q8_block",
                ..
            }
        ),
        "{e}"
    );
    for bad in [
        StorageTypes {
            variable: Dtype::Q8,
            ..StorageTypes::default()
        },
        StorageTypes {
            gradient: Dtype::Q8,
            ..StorageTypes::default()
        },
        StorageTypes {
            copy: Some(Dtype::Q8),
            ..StorageTypes::default()
        },
    ] {
        let e = RmsPropConfig::builder().storage(bad).build().unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "storage",
                    ..
                }
            ),
            "{e}"
        );
    }
    // A block larger than 4x the workgroup size.
    let config = RmsPropConfig::builder()
        .storage(q8())
        .q8_block(4096)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config).unwrap();
    let e = opt
        .add_variable("w", &[8192], &vec![0.0; 8192])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "q8_block",
                ..
            }
        ),
        "{e}"
    );
    // A workgroup of 96 invocations cannot hold whole blocks of 64 vec4.
    let config = RmsPropConfig::builder().storage(q8()).build().unwrap();
    let options = OptimizerOptions {
        workgroup_size: 96,
        ..OptimizerOptions::default()
    };
    let mut opt = RmsProp::with_options(ctx(), config, options).unwrap();
    let e = opt
        .add_variable("w", &[8192], &vec![0.0; 8192])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "q8_block",
                ..
            }
        ),
        "{e}"
    );
    // Lazy sparse steps with sequential duplicates on quantized state are refused (each pair would be
    // quantized; tests/q8_lazy.rs has the rest); nothing changes.
    let config = RmsPropConfig::preset(Preset::TfRaw)
        .storage(q8())
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config).unwrap();
    let id = opt.add_variable("t", &[1024, 8], &vec![0.5; 8192]).unwrap();
    let before = common::kept_state(&mut opt, &[id]);
    let e = opt
        .apply(&[(
            id,
            Gradient::Sparse {
                indices: Indices::I64(&[1]),
                values: &[0.1; 8],
            },
        )])
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
    assert_eq!(common::kept_state(&mut opt, &[id]), before);
    // Pool buffers hold whole blocks: one smaller than a block is refused.
    let config = RmsPropConfig::builder().storage(q8()).build().unwrap();
    let options = OptimizerOptions {
        max_chunk_bytes: Some(512),
        ..OptimizerOptions::default()
    };
    let e = RmsProp::with_options(ctx(), config, options).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "max_chunk_bytes",
                ..
            }
        ),
        "{e}"
    );
}
