//! Dense RMSprop on the GPU against the CPU reference: variables and every slot, after several steps,
//! for all four variants with non-default hyperparameters, at sizes that break tiling.

mod common;

use common::{assert_matches, ctx, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{GpuGradient, OptimizerOptions, RmsProp, RmsPropConfig, VarId};

const STEPS: usize = 4;

fn dense(grads: &[Vec<f32>]) -> Vec<Option<RefGradient<'_>>> {
    grads.iter().map(|g| Some(RefGradient::Dense(g))).collect()
}

fn variants() -> Vec<(&'static str, RmsPropConfig)> {
    let base = || {
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .rho(0.8)
            .epsilon(1e-6)
    };
    vec![
        ("plain", base().build().unwrap()),
        ("momentum", base().momentum(0.7).build().unwrap()),
        ("centered", base().centered(true).build().unwrap()),
        (
            "centered_momentum",
            base().momentum(0.6).centered(true).build().unwrap(),
        ),
    ]
}

/// An optimizer and its reference with variables of the given sizes.
fn setup(
    config: &RmsPropConfig,
    options: OptimizerOptions,
    sizes: &[usize],
    rng: &mut Rng,
) -> (RmsProp, Vec<VarId>, Reference) {
    let mut opt = RmsProp::with_options(ctx(), config.clone(), options).unwrap();
    let mut r = Reference::new(config.clone());
    let mut ids = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let init = rng.vec(n, 2.0, 0);
        ids.push(opt.add_variable(&format!("v{k}"), &[n], &init).unwrap());
        r.add_variable(&[n], &init);
    }
    (opt, ids, r)
}

/// Runs STEPS steps of random gradients (about 1 in 7 elements zero, so decay without gradient is
/// exercised) and compares every variable and slot after the first and the last step.
fn run(config: &RmsPropConfig, options: OptimizerOptions, sizes: &[usize], seed: u64) -> RmsProp {
    let mut rng = Rng::new(seed);
    let (mut opt, ids, mut r) = setup(config, options, sizes, &mut rng);
    for t in 1..=STEPS {
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 3.0, 7)).collect();
        let pairs: Vec<(VarId, &[f32])> = ids
            .iter()
            .copied()
            .zip(grads.iter().map(|g| g.as_slice()))
            .collect();
        assert_eq!(opt.apply_gradients(&pairs).unwrap(), t as u64);
        r.step(&dense(&grads)).unwrap();
        if t == 1 || t == STEPS {
            for (k, &id) in ids.iter().enumerate() {
                assert_matches(
                    &mut opt,
                    id,
                    &r.vars[k],
                    &format!("size {} step {t}", sizes[k]),
                );
            }
        }
    }
    assert_eq!(opt.iterations(), STEPS as u64);
    opt
}

#[test]
fn each_size_alone_all_variants() {
    for (name, cfg) in variants() {
        for (i, &n) in [1usize, 3, 63, 64, 65, 255, 256, 257, 4097]
            .iter()
            .enumerate()
        {
            eprintln!("{name} n={n}");
            run(&cfg, OptimizerOptions::default(), &[n], 100 + i as u64);
        }
    }
}

#[test]
fn about_one_million_elements_all_variants() {
    for (i, (_, cfg)) in variants().into_iter().enumerate() {
        run(
            &cfg,
            OptimizerOptions::default(),
            &[1_000_003],
            7 + i as u64,
        );
    }
}

#[test]
fn many_sizes_in_one_pool_one_dispatch() {
    let sizes = [1, 3, 63, 64, 65, 255, 256, 257, 4097, 10, 1];
    for (i, (_, cfg)) in variants().into_iter().enumerate() {
        let opt = run(&cfg, OptimizerOptions::default(), &sizes, 50 + i as u64);
        assert_eq!(opt.pool_stats().chunks, 1);
        assert_eq!(
            opt.last_step_dispatches(),
            1,
            "one fused dispatch for all variables"
        );
    }
}

#[test]
fn pools_split_across_buffers_with_small_limits() {
    // 1 KiB per buffer = 256 elements: variables of 1000 and 4097 elements span several chunks.
    let options = OptimizerOptions {
        max_chunk_bytes: Some(1024),
        ..Default::default()
    };
    let sizes = [3, 1000, 257, 100, 4097, 1, 255];
    for (i, (_, cfg)) in variants().into_iter().enumerate() {
        let opt = run(&cfg, options, &sizes, 70 + i as u64);
        let stats = opt.pool_stats();
        assert!(stats.chunks >= 20, "expected a split pool, got {stats:?}");
        assert_eq!(
            opt.last_step_dispatches(),
            stats.chunks,
            "one dispatch per pool buffer"
        );
    }
}

#[test]
fn dispatch_folding_with_a_small_workgroup_limit() {
    // At most 3 workgroups per dimension and 64 invocations per group: a dispatch covers at most
    // 3*3*64 vec4, so large variables need 2-D grids and several dispatches.
    let options = OptimizerOptions {
        workgroup_size: 64,
        max_workgroups_per_dimension: Some(3),
        ..Default::default()
    };
    for (i, (_, cfg)) in variants().into_iter().enumerate() {
        let opt = run(&cfg, options, &[4097, 3, 20_000], 90 + i as u64);
        assert!(opt.last_step_dispatches() > 1);
    }
}

#[test]
fn several_vec4s_per_invocation_with_folding_and_split_pools() {
    // Each invocation updates 2, 3 or 16 vec4s a workgroup apart; sizes end mid-invocation, mid-group and
    // mid-vec4, grids fold (3 groups per dimension) and pools split at 1 KiB.
    for (k, per) in [2u32, 3, 16].into_iter().enumerate() {
        let options = OptimizerOptions {
            workgroup_size: 64,
            vec4s_per_invocation: per,
            max_workgroups_per_dimension: Some(3),
            ..Default::default()
        };
        for (i, (_, cfg)) in variants().into_iter().enumerate() {
            let seed = 200 + 10 * k as u64 + i as u64;
            run(&cfg, options, &[1, 3, 255, 257, 4097, 20_000], seed);
            let split = OptimizerOptions {
                max_chunk_bytes: Some(1024),
                ..options
            };
            run(&cfg, split, &[3, 1000, 257], seed + 5);
        }
    }
}

#[test]
fn dispatch_folding_past_65535_workgroups() {
    // With 32 invocations per workgroup, each on a vec4, 65,535 workgroups cover 8,386,560 elements:
    // this variable needs 65,541 workgroups, folded into a 2-D grid on the real device limit.
    let n = 65_535 * 32 * 4 + 5 * 32 * 4 + 3;
    let options = OptimizerOptions {
        workgroup_size: 32,
        ..Default::default()
    };
    let cfg = variants().pop().unwrap().1;
    let opt = run(&cfg, options, &[n], 99);
    assert_eq!(opt.last_step_dispatches(), 1);
}

#[test]
fn steps_with_a_subset_of_variables_leave_the_others_untouched() {
    let cfg = variants()[3].1.clone();
    let mut rng = Rng::new(5);
    let sizes = [5usize, 7, 9];
    let (mut opt, ids, mut r) = setup(&cfg, OptimizerOptions::default(), &sizes, &mut rng);
    for t in 1..=3u64 {
        // Step 1: all; steps 2, 3: only v0 and v2 (v1 in between must not move or decay).
        let g: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 1.0, 0)).collect();
        let listed: Vec<usize> = if t == 1 { vec![0, 1, 2] } else { vec![0, 2] };
        let pairs: Vec<(VarId, &[f32])> =
            listed.iter().map(|&k| (ids[k], g[k].as_slice())).collect();
        opt.apply_gradients(&pairs).unwrap();
        let rg: Vec<Option<RefGradient>> = (0..3)
            .map(|k| listed.contains(&k).then(|| RefGradient::Dense(&g[k])))
            .collect();
        r.step(&rg).unwrap();
        if t > 1 {
            assert_eq!(
                opt.last_step_dispatches(),
                2,
                "v0 and v2 are not adjacent: two ranges"
            );
        }
    }
    for (k, &id) in ids.iter().enumerate() {
        assert_matches(&mut opt, id, &r.vars[k], &format!("v{k}"));
    }
}

#[test]
fn gradients_from_a_gpu_buffer_match_host_gradients() {
    let ctx = ctx();
    for (name, cfg) in variants() {
        let mut rng = Rng::new(11);
        let sizes = [3usize, 257, 1];
        let (mut opt, ids, mut r) = setup(&cfg, OptimizerOptions::default(), &sizes, &mut rng);
        // All gradients packed in one caller buffer, starting 12 bytes in (not 16-aligned).
        let total: usize = sizes.iter().sum::<usize>() + 3;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("caller gradients"),
            size: total as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        for t in 1..=3u64 {
            let g: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 2.0, 5)).collect();
            let mut packed = vec![0.0f32; 3];
            let mut offsets = Vec::new();
            for gk in &g {
                offsets.push(packed.len() as u64 * 4);
                packed.extend_from_slice(gk);
            }
            ctx.queue()
                .write_buffer(&buffer, 0, bytemuck::cast_slice(&packed));
            let pairs: Vec<_> = ids
                .iter()
                .zip(&offsets)
                .map(|(&id, &offset)| {
                    (
                        id,
                        GpuGradient {
                            buffer: &buffer,
                            offset,
                        },
                    )
                })
                .collect();
            assert_eq!(opt.apply_gpu_gradients(&pairs).unwrap(), t);
            r.step(&dense(&g)).unwrap();
        }
        for (k, &id) in ids.iter().enumerate() {
            assert_matches(&mut opt, id, &r.vars[k], &format!("{name} v{k}"));
        }
    }
}

#[test]
fn variables_added_after_steps_grow_the_pool_and_keep_state() {
    let cfg = variants()[1].1.clone();
    let mut rng = Rng::new(21);
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut r = Reference::new(cfg.clone());
    let init0 = rng.vec(1000, 1.0, 0);
    let a = opt.add_variable("a", &[10, 100], &init0).unwrap();
    r.add_variable(&[10, 100], &init0);
    let g = rng.vec(1000, 1.0, 0);
    opt.apply_gradients(&[(a, &g)]).unwrap();
    r.step(&[Some(RefGradient::Dense(&g))]).unwrap();
    // 200,000 elements do not fit the first 64 KiB chunk: it grows (a GPU copy of its contents).
    let init1 = rng.vec(200_000, 1.0, 0);
    let b = opt.add_variable("b", &[200_000], &init1).unwrap();
    r.add_variable(&[200_000], &init1);
    let (ga, gb) = (rng.vec(1000, 1.0, 0), rng.vec(200_000, 1.0, 0));
    opt.apply_gradients(&[(a, &ga), (b, &gb)]).unwrap();
    r.step(&[Some(RefGradient::Dense(&ga)), Some(RefGradient::Dense(&gb))])
        .unwrap();
    assert_matches(&mut opt, a, &r.vars[0], "a");
    assert_matches(&mut opt, b, &r.vars[1], "b");
    assert_eq!(opt.variable("b").unwrap(), b);
    assert_eq!(opt.variable_info(a).unwrap(), ("a", &[10usize, 100][..]));
}

#[test]
fn scalar_and_empty_variables() {
    let cfg = variants()[2].1.clone();
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let s = opt.add_variable("s", &[], &[1.5]).unwrap();
    let e = opt.add_variable("e", &[0, 4], &[]).unwrap();
    let mut r = Reference::new(cfg.clone());
    r.add_variable(&[], &[1.5]);
    for _ in 1..=3 {
        opt.apply_gradients(&[(s, &[0.25]), (e, &[])]).unwrap();
        r.step(&[Some(RefGradient::Dense(&[0.25]))]).unwrap();
    }
    assert_matches(&mut opt, s, &r.vars[0], "scalar");
    assert!(opt.read_variable(e).unwrap().is_empty());
}

/// Per-variable clipping state (global_clipnorm, clipnorm, clipvalue) with a thousand variables of
/// awkward sizes, 256-byte slices (padding between variables) and pools split over several buffers:
/// one dense dispatch per pool buffer (each finds its variables through the segment map), steps listing
/// every variable and steps listing a subset, every slot against the twin.
#[test]
fn per_variable_clipping_in_one_dispatch_per_pool_buffer() {
    let sizes: Vec<usize> = (0..1000)
        .map(|k| [1, 3, 4, 5, 63, 255, 257][k % 7])
        .collect();
    let configs = [
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .centered(true)
            .global_clipnorm(1.0)
            .build()
            .unwrap(),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .clipnorm(0.3)
            .build()
            .unwrap(),
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.9)
            .clipvalue(0.2)
            .build()
            .unwrap(),
    ];
    for (c, cfg) in configs.iter().enumerate() {
        let options = OptimizerOptions {
            slice_alignment: Some(256),
            max_chunk_bytes: Some(64 << 10),
            ..Default::default()
        };
        let mut rng = Rng::new(40 + c as u64);
        let (mut opt, ids, mut r) = setup(cfg, options, &sizes, &mut rng);
        let chunks = opt.pool_stats().chunks;
        assert!(chunks > 1, "{chunks}");
        for t in 0..3 {
            let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 2.0, 5)).collect();
            // Step 1 lists every variable; later steps every third one (runs split at absent ones).
            let listed: Vec<usize> = (0..sizes.len()).filter(|k| t == 0 || k % 3 == t).collect();
            let step: Vec<(VarId, wgpu_rmsprop::Gradient<'_>)> = listed
                .iter()
                .map(|&k| (ids[k], wgpu_rmsprop::Gradient::Dense(&grads[k])))
                .collect();
            opt.apply(&step).unwrap();
            if t == 0 {
                // Norm partials (one per pool buffer, with a norm clip), the finalize dispatch, and
                // one dense dispatch per pool buffer.
                let norms = if cfg.clipvalue().is_some() { 0 } else { chunks };
                assert_eq!(
                    opt.last_step_dispatches(),
                    norms + 1 + chunks,
                    "config {c}: one dense dispatch per pool buffer"
                );
            }
            let refs: Vec<Option<RefGradient<'_>>> = (0..sizes.len())
                .map(|k| listed.contains(&k).then(|| RefGradient::Dense(&grads[k])))
                .collect();
            r.step(&refs).unwrap();
        }
        for (k, &id) in ids.iter().enumerate().step_by(37) {
            assert_matches(&mut opt, id, &r.vars[k], &format!("config {c} v{k}"));
        }
    }
}
