//! Sparse (IndexedSlices) RMSprop on the GPU against the CPU reference: variables and every slot after
//! several steps, for every sparse mode; untouched rows compared bit for bit.

mod common;

use common::{assert_close, assert_matches, ctx, snapshot, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    DuplicateIndices, Error, Gradient, Indices, OptimizerOptions, Preset, RmsProp, RmsPropConfig,
    SparseMode, VarId,
};

/// (name, config): the four duplicate/absent-row rules, with momentum and centered state.
fn modes() -> Vec<(&'static str, RmsPropConfig)> {
    let keras = || {
        RmsPropConfig::builder()
            .learning_rate(0.02)
            .rho(0.85)
            .momentum(0.6)
            .centered(true)
            .epsilon(1e-6)
    };
    vec![
        ("lazy_sum", keras().build().unwrap()),
        (
            "lazy_sequential",
            RmsPropConfig::preset(Preset::TfRaw)
                .learning_rate(0.02)
                .momentum(0.5)
                .centered(true)
                .build()
                .unwrap(),
        ),
        (
            "dense_sum",
            keras().sparse_mode(SparseMode::Dense).build().unwrap(),
        ),
        (
            "dense_keras3",
            keras()
                .sparse_mode(SparseMode::Dense)
                .duplicate_indices(DuplicateIndices::Keras3)
                .build()
                .unwrap(),
        ),
    ]
}

struct Sparse {
    indices: Vec<i64>,
    values: Vec<f32>,
}

/// Applies `steps` (one sparse gradient per variable and step) on the GPU and the reference and compares
/// every variable and slot after each step. In lazy mode, rows never listed are compared bit for bit
/// with their initial values.
fn check(
    cfg: &RmsPropConfig,
    options: OptimizerOptions,
    shapes: &[Vec<usize>],
    steps: &[Vec<Sparse>],
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut opt = RmsProp::with_options(ctx(), cfg.clone(), options).unwrap();
    let mut r = Reference::new(cfg.clone());
    let mut ids = Vec::new();
    let mut inits = Vec::new();
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let init = rng.vec(n, 1.0, 0);
        ids.push(opt.add_variable(&format!("t{k}"), shape, &init).unwrap());
        r.add_variable(shape, &init);
        inits.push(init);
    }
    for (t, step) in steps.iter().enumerate() {
        let grads: Vec<(VarId, Gradient)> = ids
            .iter()
            .zip(step)
            .map(|(&id, s)| {
                (
                    id,
                    Gradient::Sparse {
                        indices: Indices::I64(&s.indices),
                        values: &s.values,
                    },
                )
            })
            .collect();
        opt.apply(&grads).unwrap();
        let idx: Vec<Vec<usize>> = step
            .iter()
            .map(|s| s.indices.iter().map(|&i| i as usize).collect())
            .collect();
        let rg: Vec<Option<RefGradient>> = step
            .iter()
            .zip(&idx)
            .map(|(s, i)| {
                Some(RefGradient::Sparse {
                    indices: i,
                    values: &s.values,
                })
            })
            .collect();
        r.step(&rg).unwrap();
        for (k, &id) in ids.iter().enumerate() {
            assert_matches(&mut opt, id, &r.vars[k], &format!("t{k} step {}", t + 1));
        }
    }
    if cfg.sparse_mode() == SparseMode::Lazy {
        for (k, &id) in ids.iter().enumerate() {
            let row_len: usize = shapes[k][1..].iter().product();
            let x = opt.read_variable(id).unwrap();
            let v = opt.read_slot(id, wgpu_rmsprop::Slot::Velocity).unwrap();
            for row in 0..shapes[k][0] {
                if steps.iter().any(|s| s[k].indices.contains(&(row as i64))) {
                    continue;
                }
                for c in 0..row_len {
                    let i = row * row_len + c;
                    assert_eq!(
                        x[i].to_bits(),
                        inits[k][i].to_bits(),
                        "untouched row {row} of t{k} moved"
                    );
                    let v0 = cfg.initial_accumulator_value() as f32;
                    assert_eq!(v[i].to_bits(), v0.to_bits(), "untouched row {row} decayed");
                }
            }
        }
    }
}

fn sparse(rng: &mut Rng, indices: &[i64], row_len: usize) -> Sparse {
    Sparse {
        indices: indices.to_vec(),
        values: rng.vec(indices.len() * row_len, 2.0, 0),
    }
}

#[test]
fn unsorted_repeated_empty_and_single_rows_all_modes() {
    // Variable 0: 10 x 3; variable 1: a 3-D variable 6 x 2 x 5 (rows of 10 elements).
    let shapes = vec![vec![10, 3], vec![6, 2, 5]];
    for (i, (name, cfg)) in modes().into_iter().enumerate() {
        eprintln!("{name}");
        let mut rng = Rng::new(40 + i as u64);
        let steps = vec![
            // Unsorted, with index 7 three times.
            vec![
                sparse(&mut rng, &[7, 2, 9, 7, 0, 7], 3),
                sparse(&mut rng, &[5, 1, 3], 10),
            ],
            // Empty list; a single row.
            vec![sparse(&mut rng, &[], 3), sparse(&mut rng, &[4], 10)],
            // Repeats in the 3-D variable.
            vec![
                sparse(&mut rng, &[3], 3),
                sparse(&mut rng, &[2, 2, 0, 5, 2], 10),
            ],
        ];
        check(&cfg, OptimizerOptions::default(), &shapes, &steps, 7);
    }
}

#[test]
fn rows_listed_before_keep_their_state_when_later_steps_list_others() {
    // Row 0 (the first element of the variable) gets state in step 1 and is left out of the steps
    // after: a lazy step must not touch it, whatever the invocations past the listed rows do. 9 x 5 and
    // lists of 1-3 rows leave most of a workgroup past the end.
    for (i, (name, cfg)) in modes().into_iter().enumerate() {
        eprintln!("{name}");
        let mut rng = Rng::new(80 + i as u64);
        let steps = vec![
            vec![sparse(&mut rng, &[0, 3], 5)],
            vec![sparse(&mut rng, &[5], 5)],
            vec![sparse(&mut rng, &[8, 2, 8], 5)],
        ];
        check(&cfg, OptimizerOptions::default(), &[vec![9, 5]], &steps, 9);
    }
}

#[test]
fn sparse_variables_split_across_pool_buffers() {
    // 256 elements per buffer: a 50 x 7 table spans two buffers, rows straddle the boundary.
    let options = OptimizerOptions {
        max_chunk_bytes: Some(1024),
        ..Default::default()
    };
    for (i, (_, cfg)) in modes().into_iter().enumerate() {
        let mut rng = Rng::new(60 + i as u64);
        let steps: Vec<Vec<Sparse>> = (0..3)
            .map(|_| vec![sparse(&mut rng, &[36, 37, 0, 49, 36, 20], 7)])
            .collect();
        check(&cfg, options, &[vec![50, 7]], &steps, 8);
    }
}

#[test]
fn lazy_with_every_row_once_equals_the_dense_update() {
    let cfg = modes()[0].1.clone();
    let mut rng = Rng::new(3);
    let init = rng.vec(8 * 5, 1.0, 0);
    let mut lazy = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut dense = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let a = lazy.add_variable("t", &[8, 5], &init).unwrap();
    let b = dense.add_variable("t", &[8, 5], &init).unwrap();
    for _ in 0..3 {
        let order: [u32; 8] = [3, 0, 7, 1, 6, 2, 5, 4];
        let rows = rng.vec(8 * 5, 1.0, 0);
        let mut full = vec![0.0; 40];
        for (k, &r) in order.iter().enumerate() {
            full[r as usize * 5..r as usize * 5 + 5].copy_from_slice(&rows[k * 5..k * 5 + 5]);
        }
        lazy.apply(&[(
            a,
            Gradient::Sparse {
                indices: Indices::U32(&order),
                values: &rows,
            },
        )])
        .unwrap();
        dense.apply_gradients(&[(b, &full)]).unwrap();
    }
    assert_close(
        "x",
        &lazy.read_variable(a).unwrap(),
        &dense.read_variable(b).unwrap(),
    );
    for slot in lazy.slots() {
        assert_close(
            slot.name(),
            &lazy.read_slot(a, slot).unwrap(),
            &dense.read_slot(b, slot).unwrap(),
        );
    }
}

#[test]
fn a_100000_by_64_table_with_16384_indices_about_20_percent_repeated() {
    let (rows, cols, k) = (100_000usize, 64usize, 16_384usize);
    let mut rng = Rng::new(99);
    // 80% distinct rows, the rest repeats of earlier ones, shuffled by the generator.
    let mut indices: Vec<i64> = Vec::with_capacity(k);
    for j in 0..k {
        let u = ((rng.next_f32() + 1.0) * 0.5 * rows as f32) as i64 % rows as i64;
        if j % 5 == 4 {
            let prev = indices[(u as usize) % indices.len()];
            indices.push(prev);
        } else {
            indices.push(u);
        }
    }
    let distinct = {
        let mut d = indices.clone();
        d.sort_unstable();
        d.dedup();
        d.len()
    };
    assert!(
        distinct < k * 85 / 100 && distinct > k * 70 / 100,
        "{distinct} distinct of {k}"
    );
    for (_, cfg) in modes().into_iter().take(2) {
        let steps: Vec<Vec<Sparse>> = (0..2)
            .map(|_| vec![sparse(&mut rng, &indices, cols)])
            .collect();
        check(
            &cfg,
            OptimizerOptions::default(),
            &[vec![rows, cols]],
            &steps,
            5,
        );
    }
}

#[test]
fn dense_and_sparse_gradients_mixed_in_one_step() {
    for (_, cfg) in modes() {
        let mut rng = Rng::new(17);
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let mut r = Reference::new(cfg.clone());
        let (i0, i1) = (rng.vec(12, 1.0, 0), rng.vec(20, 1.0, 0));
        let a = opt.add_variable("dense", &[12], &i0).unwrap();
        let b = opt.add_variable("table", &[5, 4], &i1).unwrap();
        r.add_variable(&[12], &i0);
        r.add_variable(&[5, 4], &i1);
        for _ in 0..3 {
            let g = rng.vec(12, 1.0, 0);
            let idx = [4i32, 1, 4];
            let vals = rng.vec(12, 1.0, 0);
            opt.apply(&[
                (a, Gradient::Dense(&g)),
                (
                    b,
                    Gradient::Sparse {
                        indices: Indices::I32(&idx),
                        values: &vals,
                    },
                ),
            ])
            .unwrap();
            // Few dispatches: the sparse rows, the dense update (one range, or one per variable when
            // per-variable state is read, as with Keras 3 duplicates) and that state's finalize.
            assert!(
                opt.last_step_dispatches() <= 4,
                "{}",
                opt.last_step_dispatches()
            );
            r.step(&[
                Some(RefGradient::Dense(&g)),
                Some(RefGradient::Sparse {
                    indices: &[4, 1, 4],
                    values: &vals,
                }),
            ])
            .unwrap();
        }
        assert_matches(&mut opt, a, &r.vars[0], "dense");
        assert_matches(&mut opt, b, &r.vars[1], "table");
    }
}

#[test]
fn every_mode_is_deterministic_bit_for_bit() {
    for (name, cfg) in modes() {
        let run = || {
            let mut rng = Rng::new(5);
            let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
            let t = opt
                .add_variable("t", &[300, 9], &rng.vec(2700, 1.0, 0))
                .unwrap();
            for _ in 0..4 {
                let idx: Vec<i64> = (0..500).map(|j| (j * 7919 % 300) as i64 / 2).collect();
                let vals = rng.vec(500 * 9, 1.0, 0);
                opt.apply(&[(
                    t,
                    Gradient::Sparse {
                        indices: Indices::I64(&idx),
                        values: &vals,
                    },
                )])
                .unwrap();
            }
            snapshot(&mut opt, &[t])
        };
        assert_eq!(run(), run(), "{name}");
    }
}

#[test]
fn index_types_give_identical_results() {
    let cfg = modes()[0].1.clone();
    let results: Vec<_> = (0..3)
        .map(|kind| {
            let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
            let t = opt.add_variable("t", &[4, 2], &[1.0; 8]).unwrap();
            let vals = [0.5, -1.0, 2.0, 0.25, 1.5, 1.5];
            let (a, b, c) = ([3i32, 0, 3], [3i64, 0, 3], [3u32, 0, 3]);
            let indices = match kind {
                0 => Indices::I32(&a),
                1 => Indices::I64(&b),
                _ => Indices::U32(&c),
            };
            opt.apply(&[(
                t,
                Gradient::Sparse {
                    indices,
                    values: &vals,
                },
            )])
            .unwrap();
            snapshot(&mut opt, &[t])
        })
        .collect();
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn bad_sparse_input_is_a_typed_error_and_changes_nothing() {
    let cfg = modes()[0].1.clone();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let t = opt.add_variable("table", &[4, 3], &[0.5; 12]).unwrap();
    let s = opt.add_variable("scalar", &[], &[1.0]).unwrap();
    opt.apply(&[(
        t,
        Gradient::Sparse {
            indices: Indices::I64(&[1, 2]),
            values: &[0.1; 6],
        },
    )])
    .unwrap();
    let before = snapshot(&mut opt, &[t, s]);
    let bad: Vec<(Gradient, &str)> = vec![
        (
            Gradient::Sparse {
                indices: Indices::I64(&[0, 4]),
                values: &[0.1; 6],
            },
            "index 4 at position 1 is outside [0, 4)",
        ),
        (
            Gradient::Sparse {
                indices: Indices::I32(&[-1]),
                values: &[0.1; 3],
            },
            "index -1 at position 0",
        ),
        (
            Gradient::Sparse {
                indices: Indices::I64(&[i64::MAX]),
                values: &[0.1; 3],
            },
            "is outside [0, 4)",
        ),
        (
            Gradient::Sparse {
                indices: Indices::U32(&[1, 2]),
                values: &[0.1; 5],
            },
            "need 6 values, 5 given",
        ),
    ];
    for (g, needle) in bad {
        // A valid dense step for the scalar comes first: it must not be applied either.
        let e = opt
            .apply(&[(s, Gradient::Dense(&[1.0])), (t, g)])
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
        assert!(e.to_string().contains("\"table\""), "{e}");
    }
    let e = opt
        .apply(&[(
            s,
            Gradient::Sparse {
                indices: Indices::I64(&[0]),
                values: &[1.0],
            },
        )])
        .unwrap_err();
    assert!(matches!(e, Error::SparseScalar { .. }), "{e:?}");
    assert_eq!(snapshot(&mut opt, &[t, s]), before);
}

/// Host indices and values against the same data already on the GPU (indices grouped there): the same
/// bits, for every mode, with a table split across pool buffers; bad GPU indices are skipped and counted.
#[test]
fn indices_on_the_gpu_give_the_same_bits_as_host_indices() {
    let options = OptimizerOptions {
        max_chunk_bytes: Some(1024),
        ..Default::default()
    };
    let device = ctx().device();
    for (name, cfg) in modes() {
        let mut rng = Rng::new(3);
        let init = rng.vec(50 * 7, 1.0, 0);
        let mut host = RmsProp::with_options(ctx(), cfg.clone(), options).unwrap();
        let mut gpu = RmsProp::with_options(ctx(), cfg.clone(), options).unwrap();
        let a = host.add_variable("t", &[50, 7], &init).unwrap();
        let b = gpu.add_variable("t", &[50, 7], &init).unwrap();
        let steps: [&[i32]; 4] = [
            &[36, 37, 0, 49, 36, 20, 36],
            &[],
            &[5],
            &[49, 48, 47, 49, 0, 0],
        ];
        for idx in steps {
            let values = rng.vec(idx.len() * 7, 1.0, 0);
            host.apply(&[(
                a,
                Gradient::Sparse {
                    indices: Indices::I32(idx),
                    values: &values,
                },
            )])
            .unwrap();
            let mk = |data: &[u8]| {
                let buf = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("caller"),
                    size: (data.len() as u64 + 8).next_multiple_of(16),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx().queue().write_buffer(&buf, 8, data);
                buf
            };
            let (ib, vb) = (
                mk(bytemuck::cast_slice(idx)),
                mk(bytemuck::cast_slice(&values)),
            );
            gpu.apply(&[(
                b,
                Gradient::SparseGpuIndices {
                    indices: wgpu_rmsprop::GpuIndices {
                        buffer: &ib,
                        offset: 8,
                        len: idx.len(),
                    },
                    values: wgpu_rmsprop::GpuGradient {
                        buffer: &vb,
                        offset: 8,
                    },
                },
            )])
            .unwrap();
            assert_eq!(
                snapshot(&mut host, &[a]),
                snapshot(&mut gpu, &[b]),
                "{name} after {idx:?}"
            );
        }
        assert_eq!(gpu.invalid_gpu_indices().unwrap(), 0);
        // Bad indices on the GPU: skipped (their rows untouched) and counted.
        let before = snapshot(&mut gpu, &[b]);
        let bad: [i32; 3] = [-1, 50, 1 << 30];
        let ib = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bad"),
            size: 16,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx()
            .queue()
            .write_buffer(&ib, 0, bytemuck::cast_slice(&bad));
        let vb = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bad values"),
            size: 3 * 7 * 4,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        gpu.apply(&[(
            b,
            Gradient::SparseGpuIndices {
                indices: wgpu_rmsprop::GpuIndices {
                    buffer: &ib,
                    offset: 0,
                    len: 3,
                },
                values: wgpu_rmsprop::GpuGradient {
                    buffer: &vb,
                    offset: 0,
                },
            },
        )])
        .unwrap();
        assert_eq!(gpu.invalid_gpu_indices().unwrap(), 3, "{name}");
        if cfg.sparse_mode() == SparseMode::Lazy {
            assert_eq!(
                snapshot(&mut gpu, &[b]).1,
                before.1,
                "{name}: skipped indices must not touch the table"
            );
        }
    }
}
