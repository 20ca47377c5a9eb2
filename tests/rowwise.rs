//! The row-wise velocity (`VarOptions::rowwise_velocity`) against its CPU twin (`reference::rowwise`):
//! dense steps, lazy and dense-mode sparse steps with duplicates, plain and momentum, rows of 1, 2, 3, 63,
//! 64, 65 and 129 elements (rows of up to 64 take one invocation, longer ones 64 lanes), split pools,
//! indices grouped on the GPU, per-variable options, a skipped step, next to element-wise
//! variables; the state bytes it saves; what is refused (nothing changes); checkpoints.
//!
//! Tolerance: bit for bit on lavapipe (with clipnorm 1e-6 of each tensor's scale: the twin sums the
//! norm in f64; on other adapters `common::ATOL`/`RTOL` too, see `same`).
//! The twin sums a row's squares in the kernel's order (per lane, then by halves) and runs the
//! element-wise update (`rmsprop`) with the row's mean in place of `g^2`; the kernel computes the row's
//! new velocity once and gives it to every lane (a per-lane `rho*v + (1-rho)*q` may be contracted into
//! an fma in one place and not another: on lavapipe that moved 10 of 189 elements by an ulp). A GPU
//! that contracts other products may differ by an ulp or so (see `common::RTOL`).

mod common;

use common::{ctx, kept_state, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    DuplicateIndices, Error, Gradient, Indices, OptimizerOptions, Preset, RmsProp, RmsPropConfig,
    Slot, SparseMode, StorageTypes, VarId, VarOptions,
};

fn rowwise() -> VarOptions {
    VarOptions {
        rowwise_velocity: true,
        ..VarOptions::default()
    }
}

/// GPU and twin fed the same steps.
struct Pair {
    opt: RmsProp,
    r: Reference,
    ids: Vec<VarId>,
    shapes: Vec<Vec<usize>>,
    rng: Rng,
    /// 0: bit for bit; else relative to each tensor's largest magnitude.
    tol: f32,
}

impl Pair {
    fn new(config: RmsPropConfig, options: OptimizerOptions, vars: &[(&[usize], bool)]) -> Self {
        let mut opt = RmsProp::with_options(ctx(), config.clone(), options).unwrap();
        let mut r = Reference::new(config);
        let mut rng = Rng::new(7);
        let (mut ids, mut shapes) = (Vec::new(), Vec::new());
        for (k, &(shape, row)) in vars.iter().enumerate() {
            let n = shape.iter().product();
            let init = rng.vec(n, 1.0, 0);
            let o = if row {
                rowwise()
            } else {
                VarOptions::default()
            };
            ids.push(
                opt.add_variable_with(&format!("v{k}"), shape, &init, &o)
                    .unwrap(),
            );
            r.add_variable_with(shape, &init, &o).unwrap();
            shapes.push(shape.to_vec());
        }
        Pair {
            opt,
            r,
            ids,
            shapes,
            rng,
            tol: 0.0,
        }
    }

    /// One step: dense gradients, or (`sparse`) rows 0, last, 1, 0 again (a duplicate) for variables
    /// of rank 2 and dense gradients for the others.
    fn step(&mut self, sparse: bool) {
        let mut dense = Vec::new();
        let mut rows = Vec::new();
        for shape in &self.shapes {
            let n: usize = shape.iter().product();
            let two = sparse && shape.len() == 2;
            let listed: Vec<usize> = if two {
                vec![0, shape[0] - 1, 1.min(shape[0] - 1), 0]
            } else {
                Vec::new()
            };
            let len = if two { listed.len() * shape[1] } else { n };
            dense.push(self.rng.vec(len, 3.0, 7));
            rows.push(listed);
        }
        let idx: Vec<Vec<i64>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| i as i64).collect())
            .collect();
        let grads: Vec<(VarId, Gradient<'_>)> = self
            .ids
            .iter()
            .zip(&dense)
            .zip(&rows)
            .zip(&idx)
            .map(|(((&id, g), r), i)| match r.is_empty() {
                true => (id, Gradient::Dense(g)),
                false => (
                    id,
                    Gradient::Sparse {
                        indices: Indices::I64(i),
                        values: g,
                    },
                ),
            })
            .collect();
        self.opt.apply(&grads).unwrap();
        let refs: Vec<Option<RefGradient<'_>>> = dense
            .iter()
            .zip(&rows)
            .map(|(g, r)| {
                Some(match r.is_empty() {
                    true => RefGradient::Dense(g),
                    false => RefGradient::Sparse {
                        indices: r,
                        values: g,
                    },
                })
            })
            .collect();
        self.r.step(&refs).unwrap();
    }

    /// Variable, velocity (per row for row-wise variables) and momentum, bit for bit.
    fn check(&mut self, label: &str) {
        for (k, &id) in self.ids.iter().enumerate() {
            let s = &self.r.vars[k];
            let mut pairs = vec![
                (
                    "velocity",
                    self.opt.read_slot(id, Slot::Velocity).unwrap(),
                    s.v.clone(),
                ),
                ("x", self.opt.read_variable(id).unwrap(), s.x.clone()),
            ];
            if let Some(m) = &s.m {
                let got = self.opt.read_slot(id, Slot::Momentum).unwrap();
                pairs.push(("momentum", got, m.clone()));
            }
            for (name, got, want) in pairs {
                let what = format!("{label} v{k} {:?} {name}", self.shapes[k]);
                same(&got, &want, self.tol, &what);
            }
        }
    }
}

/// `got` is `want` bit for bit on lavapipe, or (`tol` > 0) within `tol` of the tensor's largest
/// magnitude; on another adapter (which may contract products into fma) within `common::ATOL` +
/// `common::RTOL` too.
fn same(got: &[f32], want: &[f32], tol: f32, what: &str) {
    static LAVAPIPE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let lavapipe = *LAVAPIPE.get_or_init(|| ctx().adapter_description().contains("llvmpipe"));
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (i, (a, e)) in got.iter().zip(want).enumerate() {
        let d = (a - e).abs();
        let ok = a.to_bits() == e.to_bits()
            || d <= tol * scale
            || (!lavapipe && d <= common::ATOL + common::RTOL * e.abs());
        assert!(
            ok,
            "{what}[{i}]: gpu {a} vs twin {e} (tolerance {tol} x {scale})"
        );
    }
}

/// Row lengths 1, 3, 63, 64 (one invocation per row, 256 rows per workgroup: 257 rows fill one and
/// start another) and 65, 129 (64 lanes per row, summed by halves), a one-row table, next to an
/// element-wise table and a 1-D variable.
const SHAPES: &[(&[usize], bool)] = &[
    (&[5, 1], true),
    (&[257, 2], true),
    (&[4, 3], true),
    (&[3, 63], true),
    (&[2, 64], true),
    (&[3, 65], true),
    (&[1, 129], true),
    (&[6, 2, 5], true),
    (&[4, 3], false),
    (&[7], false),
];

fn run(config: RmsPropConfig, options: OptimizerOptions, label: &str) {
    run_within(config, options, label, 0.0);
}

fn run_within(config: RmsPropConfig, options: OptimizerOptions, label: &str, tol: f32) {
    let mut p = Pair::new(config, options, SHAPES);
    p.tol = tol;
    for (t, sparse) in [false, true, true, false, true].into_iter().enumerate() {
        p.step(sparse);
        p.check(&format!("{label} step {}", t + 1));
    }
}

#[test]
fn lazy_sparse_and_dense_steps_match_the_twin_bit_for_bit() {
    let o = OptimizerOptions::default();
    let keras = RmsPropConfig::preset(Preset::Keras).learning_rate(0.01);
    run(keras.clone().build().unwrap(), o, "keras");
    let momentum = keras.clone().momentum(0.9);
    run(momentum.clone().build().unwrap(), o, "keras momentum");
    // The twin sums the norm in f64, the GPU in f32 along a fixed tree: the clipped gradients differ
    // by an ulp or so (as for element-wise variables), hence 1e-6 of each tensor's scale.
    let clipped = momentum.clipnorm(1.5).build().unwrap();
    run_within(clipped, o, "keras momentum clipnorm", 1e-6);
}

#[test]
fn dense_mode_sparse_steps_and_other_presets_match_the_twin_bit_for_bit() {
    let o = OptimizerOptions::default();
    // Dense-mode sparse rows, L2 decay from the old variable, maximize, momentum after the rate.
    let torch = RmsPropConfig::preset(Preset::Torch)
        .momentum(0.5)
        .weight_decay(0.01)
        .maximize(true)
        .build()
        .unwrap();
    run(torch, o, "torch");
    // Bias correction, a starting velocity, Nesterov on the negated trace.
    let optax = RmsPropConfig::preset(Preset::Optax)
        .momentum(0.9)
        .nesterov(true)
        .bias_correction(true)
        .initial_accumulator_value(0.1)
        .build()
        .unwrap();
    run(optax, o, "optax");
}

#[test]
fn split_pools_keep_rows_whole() {
    // 64 vec4 per pool buffer: [100, 3] and [20, 13] are split in whole rows (units of 3 and 13 vec4).
    let o = OptimizerOptions {
        max_chunk_bytes: Some(1024),
        ..OptimizerOptions::default()
    };
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .build()
        .unwrap();
    let shapes: &[(&[usize], bool)] = &[(&[100, 3], true), (&[20, 13], true), (&[50, 2], false)];
    let mut p = Pair::new(config, o, shapes);
    assert!(p.opt.pool_stats().chunks >= 4, "{:?}", p.opt.pool_stats());
    for (t, sparse) in [false, true, false].into_iter().enumerate() {
        p.step(sparse);
        p.check(&format!("split step {}", t + 1));
    }
}

#[test]
fn a_row_wise_velocity_is_one_value_per_row_in_the_state_bytes() {
    let config = RmsPropConfig::default();
    let table = vec![0.5f32; 1000 * 64];
    let mut element = RmsProp::new(ctx(), config.clone()).unwrap();
    element.add_variable("t", &[1000, 64], &table).unwrap();
    let mut row = RmsProp::new(ctx(), config).unwrap();
    let id = row
        .add_variable_with("t", &[1000, 64], &table, &rowwise())
        .unwrap();
    let (e, r) = (element.pool_stats(), row.pool_stats());
    assert_eq!(e.state_bytes, 1000 * 64 * 4);
    assert_eq!(r.state_bytes, 1000 * 4);
    assert_eq!(e.state_bytes / r.state_bytes, 64);
    assert_eq!(e.variable_bytes, r.variable_bytes);
    assert_eq!(row.read_slot(id, Slot::Velocity).unwrap(), vec![0.0; 1000]);
    assert_eq!(row.variable_slots(id).unwrap(), [Slot::Velocity]);
}

/// `result` is `InvalidVarOptions` (or `InvalidShape`) naming `field`, and nothing changed.
fn refused(opt: &mut RmsProp, ids: &[VarId], result: Result<VarId, Error>, field: &str) {
    let before = kept_state(opt, ids);
    match result {
        Err(Error::InvalidVarOptions {
            field: f,
            requirement,
            ..
        }) => {
            assert_eq!(f, field, "{requirement}");
            assert!(!requirement.is_empty());
        }
        Err(Error::InvalidShape { reason, .. }) => assert_eq!(field, "shape", "{reason}"),
        other => panic!("expected a refusal on {field}, got {other:?}"),
    }
    assert!(
        opt.variable("new").is_err(),
        "{field}: a variable was added"
    );
    assert_eq!(kept_state(opt, ids), before, "{field}: the state changed");
}

#[test]
fn unsupported_combinations_are_refused_and_change_nothing() {
    let init = vec![0.25f32; 12];
    let mk = |b: wgpu_rmsprop::RmsPropConfigBuilder| {
        let mut opt = RmsProp::new(ctx(), b.build().unwrap()).unwrap();
        let id = opt.add_variable("old", &[4, 3], &init).unwrap();
        opt.apply_gradients(&[(id, &[0.5; 12])]).unwrap();
        (opt, id)
    };
    let builder = RmsPropConfig::builder;
    let cases: Vec<(
        wgpu_rmsprop::RmsPropConfigBuilder,
        VarOptions,
        &[usize],
        &str,
    )> = vec![
        (builder(), rowwise(), &[12], "rowwise_velocity"),
        (builder(), rowwise(), &[], "rowwise_velocity"),
        (builder().centered(true), rowwise(), &[4, 3], "centered"),
        (
            builder(),
            VarOptions {
                centered: Some(true),
                ..rowwise()
            },
            &[4, 3],
            "centered",
        ),
        (
            builder(),
            VarOptions {
                storage: Some(StorageTypes::all(wgpu_rmsprop::Dtype::Bf16)),
                ..rowwise()
            },
            &[4, 3],
            "storage",
        ),
        (
            builder().sparse_mode(SparseMode::LazyExact),
            rowwise(),
            &[4, 3],
            "rowwise_velocity",
        ),
        (
            builder().duplicate_indices(DuplicateIndices::Sequential),
            rowwise(),
            &[4, 3],
            "rowwise_velocity",
        ),
        (
            builder().use_ema(true),
            rowwise(),
            &[4, 3],
            "rowwise_velocity",
        ),
    ];
    for (b, options, shape, field) in cases {
        let (mut opt, id) = mk(b);
        let n = shape.iter().product();
        let result = opt.add_variable_with("new", shape, &vec![0.0; n], &options);
        refused(&mut opt, &[id], result, field);
    }
    // Fixed when added: turning it on or off later.
    let (mut opt, id) = mk(builder());
    let before = kept_state(&mut opt, &[id]);
    let e = opt.set_variable_options(id, &rowwise()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidVarOptions {
                field: "rowwise_velocity",
                ..
            }
        ),
        "{e:?}"
    );
    let t = opt
        .add_variable_with("t", &[2, 3], &[0.0; 6], &rowwise())
        .unwrap();
    let e = opt
        .set_variable_options(t, &VarOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidVarOptions {
                field: "rowwise_velocity",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(kept_state(&mut opt, &[id]), before);
    // A row longer than a pool buffer (64 vec4 here): it could not be kept whole.
    let o = OptimizerOptions {
        max_chunk_bytes: Some(1024),
        ..OptimizerOptions::default()
    };
    let mut opt = RmsProp::with_options(ctx(), RmsPropConfig::default(), o).unwrap();
    let id = opt.add_variable("old", &[4, 3], &init).unwrap();
    let result = opt.add_variable_with("new", &[2, 257], &[0.0; 514], &rowwise());
    refused(&mut opt, &[id], result, "shape");
}

#[test]
fn checkpoints_hold_one_velocity_per_row_and_resume_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-rowwise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .build()
        .unwrap();
    let shapes: &[(&[usize], bool)] = &[(&[6, 5], true), (&[3, 4], false)];
    let o = OptimizerOptions::default();
    let mut a = Pair::new(config.clone(), o, shapes);
    for sparse in [false, true, false] {
        a.step(sparse);
    }
    let file = dir.join("rowwise.safetensors");
    a.opt.save_checkpoint(&file, true).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("slots/velocity/v0").unwrap().shape(), [6]);
    assert_eq!(st.tensor("slots/velocity/v1").unwrap().shape(), [3, 4]);
    // A fresh optimizer (another seed: other values) restored from the file, then both go on.
    let mut b = Pair::new(config.clone(), o, shapes);
    b.rng = Rng::new(99);
    b.step(true);
    b.opt.load_checkpoint(&file).unwrap();
    b.rng = Rng::new(1234);
    a.rng = Rng::new(1234);
    for sparse in [true, false] {
        a.step(sparse);
        b.step(sparse);
    }
    let (ids_a, ids_b) = (a.ids.clone(), b.ids.clone());
    assert_eq!(
        kept_state(&mut a.opt, &ids_a),
        kept_state(&mut b.opt, &ids_b)
    );
    // The file of an element-wise table does not load into a row-wise one (nor the reverse).
    let mut c = Pair::new(config, o, &[(&[6, 5], false), (&[3, 4], false)]);
    c.step(false);
    let other = dir.join("element.safetensors");
    c.opt.save_checkpoint(&other, true).unwrap();
    common::expect_refused(&mut b.opt, &ids_b, &other, &["options"]);
    let ids_c = c.ids.clone();
    common::expect_refused(&mut c.opt, &ids_c, &file, &["options"]);
    // The row-wise file with the velocity in the element-wise shape (checksum made good): refused.
    let forged = dir.join("forged.safetensors");
    let target = "slots/velocity/v0";
    common::replace_tensor(
        &file,
        &forged,
        target,
        safetensors::tensor::Dtype::F32,
        vec![6, 5],
        vec![0u8; 4 * 30],
    );
    common::expect_refused(&mut b.opt, &ids_b, &forged, &[target, "shape"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn own_options_gpu_indices_and_skipped_steps_match_the_twin() {
    // A table with its own rate and momentum (the kernels read the options table), indices grouped on
    // the GPU, a step the non-finite policy skips, options changed between steps.
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .non_finite(wgpu_rmsprop::NonFinite::SkipStep)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
    let mut r = Reference::new(config);
    let mut rng = Rng::new(3);
    let own = VarOptions {
        lr_multiplier: 2.0,
        momentum: Some(0.5),
        ..rowwise()
    };
    let (a0, b0) = (rng.vec(9 * 5, 1.0, 0), rng.vec(4 * 70, 1.0, 0));
    let a = opt.add_variable_with("a", &[9, 5], &a0, &own).unwrap();
    let b = opt
        .add_variable_with("b", &[4, 70], &b0, &rowwise())
        .unwrap();
    r.add_variable_with(&[9, 5], &a0, &own).unwrap();
    r.add_variable_with(&[4, 70], &b0, &rowwise()).unwrap();
    let check = |opt: &mut RmsProp, r: &Reference, label: &str| {
        for (k, id) in [a, b].into_iter().enumerate() {
            let s = &r.vars[k];
            let x = opt.read_variable(id).unwrap();
            same(&x, &s.x, 0.0, &format!("{label} x{k}"));
            let v = opt.read_slot(id, Slot::Velocity).unwrap();
            same(&v, &s.v, 0.0, &format!("{label} v{k}"));
            if let Some(m) = &s.m {
                let got = opt.read_slot(id, Slot::Momentum).unwrap();
                same(&got, m, 0.0, &format!("{label} m{k}"));
            }
        }
    };
    let (ga, gb) = (rng.vec(45, 2.0, 5), rng.vec(280, 2.0, 5));
    opt.apply(&[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))])
        .unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    check(&mut opt, &r, "dense");
    // Rows 3, 8, 3 of `a` with indices and values on the GPU; rows 2, 0 of `b` from the host.
    let idx: [i32; 3] = [3, 8, 3];
    let (va, vb) = (rng.vec(15, 2.0, 0), rng.vec(140, 2.0, 0));
    let device = ctx().device();
    let mk = |data: &[u8]| {
        let buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("caller"),
            size: (data.len() as u64).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx().queue().write_buffer(&buf, 0, data);
        buf
    };
    let (ib, vbuf) = (
        mk(bytemuck::cast_slice(&idx)),
        mk(bytemuck::cast_slice(&va)),
    );
    let rows_b = [2i64, 0];
    opt.apply(&[
        (
            a,
            Gradient::SparseGpuIndices {
                indices: wgpu_rmsprop::GpuIndices {
                    buffer: &ib,
                    offset: 0,
                    len: 3,
                },
                values: wgpu_rmsprop::GpuGradient {
                    buffer: &vbuf,
                    offset: 0,
                },
            },
        ),
        (
            b,
            Gradient::Sparse {
                indices: Indices::I64(&rows_b),
                values: &vb,
            },
        ),
    ])
    .unwrap();
    r.step(&[
        Some(RefGradient::Sparse {
            indices: &[3, 8, 3],
            values: &va,
        }),
        Some(RefGradient::Sparse {
            indices: &[2, 0],
            values: &vb,
        }),
    ])
    .unwrap();
    check(&mut opt, &r, "sparse");
    // A NaN in `b`'s gradient: the whole step is skipped, row velocities included.
    let mut bad = rng.vec(280, 2.0, 0);
    bad[77] = f32::NAN;
    let before = kept_state(&mut opt, &[a, b]).1;
    opt.apply(&[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&bad))])
        .unwrap();
    r.step(&[
        Some(RefGradient::Dense(&ga)),
        Some(RefGradient::Dense(&bad)),
    ])
    .unwrap();
    assert_eq!(kept_state(&mut opt, &[a, b]).1, before);
    assert_eq!(opt.skipped_steps().unwrap(), 1);
    check(&mut opt, &r, "skipped");
    // New options for `b` (it gains a momentum slot, zeroed), then a dense step.
    let more = VarOptions {
        momentum: Some(0.9),
        epsilon: Some(1e-3),
        ..rowwise()
    };
    opt.set_variable_options(b, &more).unwrap();
    r.set_variable_options(1, &more).unwrap();
    opt.apply(&[(a, Gradient::Dense(&ga)), (b, Gradient::Dense(&gb))])
        .unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    assert!(r.vars[1].m.is_some());
    check(&mut opt, &r, "new options");
}
