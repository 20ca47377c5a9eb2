//! The sharded optimizer (`--features distributed`) against the single-process CPU twin, on every rank.
//! Run under MPI (CI: 2 ranks; any number works, 1 included):
//!
//! ```text
//! cargo build --release --features distributed --test distributed
//! mpirun -n 2 target/release/deps/distributed-*          # every check, rank 0 prints `ok` lines
//! mpirun -n 2 target/release/deps/distributed-* --bad-index-on-rank-1   # must abort within seconds
//! ```
//!
//! Each check runs the same steps on the sharded optimizer (each rank giving its part of every
//! gradient) and on [`Reference`] (the whole gradient), then compares every rank's copy of every
//! variable and every slot gathered from the ranks: `|gpu - cpu| <= 1e-6 + 1e-5 |cpu|` (the kernels
//! are the CPU twin's f32 operations; the norms' sums differ in order).

mod common;

use wgpu_rmsprop::distributed::{
    abort_on_panic, DistributedOptions, Reduction, ShardGradient, ShardedRmsProp, VariableSpec,
};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    DuplicateIndices, Error, NonFinite, Preset, RmsPropConfig, RmsPropConfigBuilder, Slot,
    SparseMode, VarOptions,
};

use mpi::collective::CommunicatorCollectives;
use mpi::topology::{Communicator, SimpleCommunicator};

/// Shapes that split mid-row on 2 and 3 ranks: a scalar, a vector, matrices, an embedding table.
const SHAPES: [&[usize]; 5] = [&[], &[7], &[5, 3], &[33, 6], &[2, 2, 3]];
/// Variables with sparse gradients (row indices with duplicates).
const SPARSE: [bool; 5] = [false, false, false, true, true];

fn tol_ok(a: f32, e: f32) -> bool {
    (a - e).abs() <= 1e-6 + 1e-5 * e.abs() || (a.is_nan() && e.is_nan())
}

fn compare(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&a, &e)) in got.iter().zip(want).enumerate() {
        assert!(tol_ok(a, e), "{what}[{i}]: sharded {a}, reference {e}");
    }
}

/// One step's global gradients: dense values, or rows with duplicates.
enum Global {
    Dense(Vec<f32>),
    Sparse(Vec<usize>, Vec<f32>),
}

fn global_step(rng: &mut common::Rng, t: usize) -> Vec<Global> {
    SHAPES
        .iter()
        .zip(SPARSE)
        .map(|(shape, sparse)| {
            let len: usize = shape.iter().product();
            if sparse {
                let rows = shape[0];
                let row_len = len / rows;
                let k = 3 + t % 4;
                let idx: Vec<usize> = (0..k)
                    .map(|j| (j * 7 + t * 5) % rows)
                    .chain([t % rows])
                    .collect();
                let vals = (0..idx.len() * row_len).map(|_| rng.next_f32()).collect();
                Global::Sparse(idx, vals)
            } else {
                Global::Dense((0..len).map(|_| rng.next_f32()).collect())
            }
        })
        .collect()
}

/// Runs `steps` steps of `config` on both, each rank giving its block (Sum) or the whole gradient
/// (Mean), with a non-finite value on the last rank's part at `nan_at` (a step number), and checks
/// every step. From step 4 on, only the sparse variables are in the steps (lazy steps then gather
/// only the listed rows).
fn check(
    world: &SimpleCommunicator,
    label: &str,
    config: RmsPropConfig,
    reduction: Reduction,
    nan_at: Option<usize>,
) {
    let ctx = common::ctx();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let mut rng = common::Rng::new(7);
    let specs: Vec<VariableSpec> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let len: usize = s.iter().product();
            let mut v = VariableSpec::new(
                &format!("v{i}"),
                s,
                (0..len).map(|_| rng.next_f32()).collect(),
            );
            if i == 2 {
                v.options = VarOptions {
                    lr_multiplier: 0.5,
                    ..VarOptions::default()
                };
            }
            if i == 0 {
                // Frozen: its gradient is in no norm and no step.
                v.options = VarOptions {
                    frozen: true,
                    ..VarOptions::default()
                };
            }
            v
        })
        .collect();
    let options = DistributedOptions {
        reduction,
        ..DistributedOptions::default()
    };
    let mut opt = ShardedRmsProp::new(ctx, config.clone(), world, &specs, options).unwrap();
    let mut reference = Reference::new(config);
    for s in &specs {
        reference
            .add_variable_with(&s.shape, &s.init, &s.options)
            .unwrap();
    }
    for t in 1..=6 {
        let mut global = global_step(&mut rng, t);
        if nan_at == Some(t) {
            if let Global::Dense(v) = &mut global[1] {
                v[6] = f32::NAN; // the last element: the last rank's block
            }
        }
        let block = |n: usize| match reduction {
            Reduction::Sum => n * rank / size..n * (rank + 1) / size,
            Reduction::Mean => 0..n,
        };
        let parts: Vec<(Vec<i64>, Vec<f32>)> = global
            .iter()
            .zip(SHAPES)
            .map(|(g, shape)| match g {
                Global::Dense(v) => {
                    let mut mine = vec![0.0; v.len()];
                    let r = block(v.len());
                    mine[r.clone()].copy_from_slice(&v[r]);
                    (Vec::new(), mine)
                }
                Global::Sparse(idx, vals) => {
                    let row_len = shape.iter().skip(1).product::<usize>();
                    let r = block(idx.len());
                    let i = idx[r.clone()].iter().map(|&x| x as i64).collect();
                    (i, vals[r.start * row_len..r.end * row_len].to_vec())
                }
            })
            .collect();
        let grads: Vec<(usize, ShardGradient)> = parts
            .iter()
            .zip(SPARSE)
            .enumerate()
            .filter(|(_, (_, sparse))| *sparse || t < 4)
            .map(|(i, ((idx, vals), sparse))| {
                let g = if sparse {
                    ShardGradient::Sparse {
                        indices: idx,
                        values: vals,
                    }
                } else {
                    ShardGradient::Dense(vals)
                };
                (i, g)
            })
            .collect();
        assert_eq!(opt.step(&grads).unwrap(), t as u64);
        let rg: Vec<Option<RefGradient>> = global
            .iter()
            .zip(SPARSE)
            .map(|(g, sparse)| {
                (sparse || t < 4).then_some(match g {
                    Global::Dense(v) => RefGradient::Dense(v),
                    Global::Sparse(i, v) => RefGradient::Sparse {
                        indices: i,
                        values: v,
                    },
                })
            })
            .collect();
        reference.step(&rg).unwrap();
        reference.catch_up(); // LazyExact: reads bring every row up to date
        let vars = opt.read_variables().unwrap();
        for (i, r) in reference.vars.iter().enumerate() {
            compare(
                &format!("{label} rank {rank} step {t} v{i}"),
                &vars[i],
                &r.x,
            );
        }
        for slot in opt.slots() {
            let got = opt.gather_slot(slot).unwrap();
            for (i, r) in reference.vars.iter().enumerate() {
                let want = match slot {
                    Slot::Velocity => Some(&r.v),
                    Slot::Momentum => r.m.as_ref(),
                    Slot::AverageGradient => r.a.as_ref(),
                    Slot::Ema => r.ema.as_ref(),
                };
                assert_eq!(
                    got[i].is_some(),
                    want.is_some(),
                    "{label} {slot:?} v{i} kept"
                );
                if let (Some(g), Some(w)) = (&got[i], want) {
                    compare(&format!("{label} rank {rank} step {t} {slot:?} v{i}"), g, w);
                }
            }
        }
    }
    assert_eq!(
        opt.skipped_steps(),
        reference.skipped,
        "{label}: skipped steps"
    );
    // ZeRO-1: this rank's state is its shard's (plus the pools' rounding up).
    if rank == 0 {
        println!(
            "ok {label} ({size} ranks; state bytes here {})",
            opt.state_bytes()
        );
    }
}

fn checkpoint_resumes_bit_for_bit(world: &SimpleCommunicator) {
    let ctx = common::ctx();
    let size = world.size() as usize;
    let config = RmsPropConfig::builder()
        .momentum(0.9)
        .centered(true)
        .learning_rate(0.01)
        .build()
        .unwrap();
    let specs = vec![
        VariableSpec::new("a", &[9, 5], (0..45).map(|i| i as f32 * 0.1).collect()),
        VariableSpec::new("b", &[3], vec![1.0, -2.0, 0.5]),
    ];
    let grads_at = |t: usize| -> Vec<Vec<f32>> {
        vec![
            (0..45)
                .map(|i| ((i * 7 + t) % 11) as f32 * 0.3 - 1.5)
                .collect(),
            vec![0.1 * t as f32, -0.2, 0.3],
        ]
    };
    let run = |opt: &mut ShardedRmsProp, t: usize| {
        let g = grads_at(t);
        opt.step(&[
            (0, ShardGradient::Dense(&g[0])),
            (1, ShardGradient::Dense(&g[1])),
        ])
        .unwrap();
    };
    let dir = std::env::temp_dir().join(format!("wgpu-rmsprop-dist-test-{size}"));
    let options = DistributedOptions::default();
    let mut a = ShardedRmsProp::new(ctx, config.clone(), world, &specs, options).unwrap();
    run(&mut a, 1);
    run(&mut a, 2);
    a.save_checkpoint(&dir).unwrap();
    run(&mut a, 3);
    let mut b = ShardedRmsProp::new(ctx, config.clone(), world, &specs, options).unwrap();
    b.load_checkpoint(&dir).unwrap();
    assert_eq!(b.iterations(), 2);
    run(&mut b, 3);
    let bits = |v: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        v.into_iter()
            .map(|x| x.iter().map(|f| f.to_bits()).collect())
            .collect()
    };
    assert_eq!(
        bits(a.read_variables().unwrap()),
        bits(b.read_variables().unwrap())
    );
    for slot in [Slot::Velocity, Slot::Momentum, Slot::AverageGradient] {
        let (x, y) = (a.gather_slot(slot).unwrap(), b.gather_slot(slot).unwrap());
        assert_eq!(
            bits(x.into_iter().flatten().collect()),
            bits(y.into_iter().flatten().collect())
        );
    }
    // A manifest of another world size whose files are not there: a typed error naming the file.
    world.barrier();
    if world.rank() == 0 {
        let m = dir.join("manifest.json");
        let text = std::fs::read_to_string(&m).unwrap();
        let text = text.replace(
            &format!("\"world_size\": {size}"),
            &format!("\"world_size\": {}", size + 1),
        );
        std::fs::write(&m, text).unwrap();
    }
    world.barrier();
    match b.load_checkpoint(&dir) {
        Err(Error::Checkpoint { path, .. }) if path.contains(&format!("-of-{}", size + 1)) => {}
        Err(Error::Checkpoint { message, .. }) if message.contains("another rank failed") => {}
        other => panic!("expected Error::Checkpoint naming a missing shard file, got {other:?}"),
    }
    if world.rank() == 0 {
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "ok checkpoint: bit for bit on {size} ranks, missing shard files are Error::Checkpoint"
        );
    }
}

/// Re-sharding, across two jobs: `--reshard-save DIR` runs steps 1-2, saves into DIR, runs step 3 and
/// writes every variable and slot (their bits) to `DIR/expected.json`; `--reshard-load DIR` on another
/// number of ranks loads DIR (re-sharded), runs step 3 and must find the same bits. Each rank gives
/// its block of every gradient (summed: exact), so the steps do not depend on the number of ranks.
fn reshard(world: &SimpleCommunicator, dir: &std::path::Path, save: bool) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .centered(true)
        .build()
        .unwrap();
    let shapes: [&[usize]; 3] = [&[9, 5], &[3], &[33, 6]];
    let specs: Vec<VariableSpec> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let len: usize = s.iter().product();
            VariableSpec::new(
                &format!("v{i}"),
                s,
                (0..len).map(|k| (k as f32 * 0.37).sin()).collect(),
            )
        })
        .collect();
    let options = DistributedOptions {
        reduction: Reduction::Sum,
        ..DistributedOptions::default()
    };
    let step = |opt: &mut ShardedRmsProp, t: usize| {
        let mut rng = common::Rng::new(t as u64);
        let dense: Vec<Vec<f32>> = shapes[..2]
            .iter()
            .map(|s| {
                let len: usize = s.iter().product();
                let all: Vec<f32> = (0..len).map(|_| rng.next_f32()).collect();
                let r = len * rank / size..len * (rank + 1) / size;
                let mut mine = vec![0.0; len];
                mine[r.clone()].copy_from_slice(&all[r]);
                mine
            })
            .collect();
        let rows: Vec<i64> = vec![3, 30, 3, 17, t as i64];
        let vals: Vec<f32> = (0..rows.len() * 6).map(|_| rng.next_f32()).collect();
        let r = rows.len() * rank / size..rows.len() * (rank + 1) / size;
        let (idx, v) = (
            rows[r.clone()].to_vec(),
            vals[r.start * 6..r.end * 6].to_vec(),
        );
        opt.step(&[
            (0, ShardGradient::Dense(&dense[0])),
            (1, ShardGradient::Dense(&dense[1])),
            (
                2,
                ShardGradient::Sparse {
                    indices: &idx,
                    values: &v,
                },
            ),
        ])
        .unwrap();
    };
    let state = |opt: &mut ShardedRmsProp| -> Vec<Vec<u32>> {
        let mut out: Vec<Vec<u32>> = opt
            .read_variables()
            .unwrap()
            .into_iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        for slot in [Slot::Velocity, Slot::Momentum, Slot::AverageGradient] {
            for v in opt.gather_slot(slot).unwrap().into_iter().flatten() {
                out.push(v.iter().map(|x| x.to_bits()).collect());
            }
        }
        out
    };
    let mut opt = ShardedRmsProp::new(common::ctx(), config, world, &specs, options).unwrap();
    let expected = dir.join("expected.json");
    if save {
        step(&mut opt, 1);
        step(&mut opt, 2);
        opt.save_checkpoint(dir).unwrap();
        step(&mut opt, 3);
        let bits = state(&mut opt);
        if rank == 0 {
            std::fs::write(&expected, serde_json::to_string(&bits).unwrap()).unwrap();
            println!("ok re-shard: saved on {size} ranks");
        }
    } else {
        opt.load_checkpoint(dir).unwrap();
        assert_eq!(opt.iterations(), 2);
        step(&mut opt, 3);
        let bits = state(&mut opt);
        let want: Vec<Vec<u32>> =
            serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
        assert_eq!(bits, want, "re-sharded onto {size} ranks: step 3 differs");
        if rank == 0 {
            println!("ok re-shard: loaded on {size} ranks, step 3 bit for bit");
        }
    }
}

fn configs_that_differ_are_named(world: &SimpleCommunicator) {
    let rank = world.rank();
    let config = RmsPropConfig::builder()
        .rho(if rank == 1 { 0.8 } else { 0.9 })
        .build()
        .unwrap();
    let specs = vec![VariableSpec::new("w", &[8], vec![0.0; 8])];
    match ShardedRmsProp::new(
        common::ctx(),
        config,
        world,
        &specs,
        DistributedOptions::default(),
    ) {
        Err(Error::RankMismatch { field, .. }) => assert_eq!(field, "rho"),
        other => panic!("expected Error::RankMismatch on `rho`, got {other:?}"),
    }
    let config = RmsPropConfig::default();
    let shape: &[usize] = if rank == 1 { &[2, 4] } else { &[8] };
    let specs = vec![VariableSpec::new("w", shape, vec![0.0; 8])];
    match ShardedRmsProp::new(
        common::ctx(),
        config,
        world,
        &specs,
        DistributedOptions::default(),
    ) {
        Err(Error::RankMismatch { field, .. }) => assert_eq!(field, "variables[0].shape"),
        other => panic!("expected Error::RankMismatch on the shape, got {other:?}"),
    }
    if rank == 0 {
        println!(
            "ok configurations that differ: Error::RankMismatch naming `rho`, `variables[0].shape`"
        );
    }
}

/// Rank 1 (or the only rank) gives an index past the table: the job must end (MPI_Abort).
fn bad_index_on_rank_1(world: &SimpleCommunicator) {
    let specs = vec![VariableSpec::new("table", &[10, 4], vec![0.0; 40])];
    let mut opt = ShardedRmsProp::new(
        common::ctx(),
        RmsPropConfig::default(),
        world,
        &specs,
        DistributedOptions::default(),
    )
    .unwrap();
    let bad = world.rank() == 1 || world.size() == 1;
    let indices = [if bad { 10 } else { 3 }];
    let values = [1.0f32; 4];
    let _ = opt.step(&[(
        0,
        ShardGradient::Sparse {
            indices: &indices,
            values: &values,
        },
    )]);
    // Not reached: the step aborts every rank.
    std::process::exit(3);
}

fn main() {
    let universe = mpi::initialize().expect("MPI");
    let world = universe.world();
    abort_on_panic(world.rank() as usize);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bad-index-on-rank-1") {
        bad_index_on_rank_1(&world);
    }
    if let Some(i) = args
        .iter()
        .position(|a| a == "--reshard-save" || a == "--reshard-load")
    {
        let dir = std::path::PathBuf::from(args.get(i + 1).expect("a folder after the option"));
        reshard(&world, &dir, args[i] == "--reshard-save");
        return;
    }
    let b = RmsPropConfig::preset;
    // (label, configuration, reduction across ranks, a NaN on the last rank at that step)
    let cases: Vec<(&str, RmsPropConfigBuilder, Reduction, Option<usize>)> = vec![
        (
            "keras centered momentum global_clipnorm keras3 duplicates",
            b(Preset::Keras)
                .learning_rate(0.01)
                .momentum(0.9)
                .centered(true)
                .global_clipnorm(1.5)
                .duplicate_indices(DuplicateIndices::Keras3)
                .sparse_mode(SparseMode::Dense),
            Reduction::Sum,
            None,
        ),
        (
            "keras clipnorm weight decay",
            b(Preset::Keras)
                .learning_rate(0.01)
                .clipnorm(0.5)
                .weight_decay(0.01),
            Reduction::Sum,
            None,
        ),
        (
            "keras 2 lazy sparse centered momentum",
            b(Preset::KerasLegacy).momentum(0.9).centered(true),
            Reduction::Sum,
            None,
        ),
        (
            "keras lazy_exact keras3 duplicates",
            b(Preset::Keras)
                .momentum(0.5)
                .duplicate_indices(DuplicateIndices::Keras3)
                .sparse_mode(SparseMode::LazyExact),
            Reduction::Sum,
            None,
        ),
        (
            "torch dense-mode sparse, mean of ranks",
            b(Preset::Torch)
                .momentum(0.5)
                .weight_decay(0.1)
                .sparse_mode(SparseMode::Dense),
            Reduction::Mean,
            None,
        ),
        (
            "tf raw sequential duplicates, a NaN on the last rank skips step 3 everywhere",
            b(Preset::TfRaw)
                .momentum(0.9)
                .non_finite(NonFinite::SkipStep)
                .duplicate_indices(DuplicateIndices::Sequential),
            Reduction::Sum,
            Some(3),
        ),
        (
            "accumulation, ema, clipnorm, loss scale",
            RmsPropConfig::builder()
                .learning_rate(0.01)
                .gradient_accumulation_steps(2)
                .use_ema(true)
                .clipnorm(1.0)
                .loss_scale_factor(4.0),
            Reduction::Sum,
            None,
        ),
    ];
    for (label, config, reduction, nan_at) in cases {
        check(&world, label, config.build().unwrap(), reduction, nan_at);
    }
    checkpoint_resumes_bit_for_bit(&world);
    if world.size() > 1 {
        configs_that_differ_are_named(&world);
    }
}
