//! Benchmark of the sharded optimizer (`--features distributed`): time per step, bytes each rank hands
//! to MPI per step, and optimizer state bytes per rank, for 16M parameters (four 2048 x 2048 f32
//! matrices, Keras RMSprop with momentum: velocity and momentum slots).
//!
//! ```text
//! cargo build --release --features distributed --example bench_sharded
//! mpirun -n 1 target/release/examples/bench_sharded [--steps N] [--side N]
//! mpirun -n 2 target/release/examples/bench_sharded
//! ```
//!
//! Rank 0 prints one JSON line: `ranks`, `params`, `steps`, `ms_per_step` (median, host gradients),
//! `ms_per_step_resident` (gradients already in the GPU buffer), `mpi_ms_per_step` (of those, inside MPI
//! collectives, host gradients, the slowest rank), `bytes_sent_per_step` (what one rank sends to the others per step, as a ring algorithm does:
//! `(N - 1) / N` of the gradients for the reduce-scatter, as much for the all-gather),
//! `state_bytes_per_rank` (the largest over the ranks), `state_bytes_one_process` (an unsharded
//! `RmsProp` of the same variables), their ratio, and `ms_per_step_one_process` (that `RmsProp`'s step
//! with host gradients, read back).

use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::traits::*;
use wgpu_rmsprop::distributed::{
    abort_on_panic, DistributedOptions, ShardGradient, ShardedRmsProp, VariableSpec,
};
use wgpu_rmsprop::{GpuContext, RmsProp, RmsPropConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = mpi::initialize().ok_or("MPI could not be initialized")?;
    let world = universe.world();
    let rank = world.rank() as usize;
    abort_on_panic(rank);
    let mut args = std::env::args().skip(1);
    let (mut steps, mut side) = (5usize, 2048usize);
    while let Some(a) = args.next() {
        let mut value = || -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.next().ok_or("a value is needed")?.parse()?)
        };
        match a.as_str() {
            "--steps" => steps = value()?.max(1),
            "--side" => side = value()?.max(1),
            _ => {
                return Err(format!(
                    "unknown option {a}; usage: bench_sharded [--steps N] [--side N]"
                )
                .into())
            }
        }
    }
    let ctx = GpuContext::new()?;
    let config = RmsPropConfig::builder()
        .learning_rate(1e-3)
        .momentum(0.9)
        .build()?;
    let specs: Vec<VariableSpec> = (0..4)
        .map(|i| VariableSpec::new(&format!("w{i}"), &[side, side], vec![0.01; side * side]))
        .collect();
    let params: usize = specs.iter().map(|s| s.init.len()).sum();
    // One process's state bytes and step time (host gradients) for the same variables (rank 0 only).
    let (one_process, one_process_ms) = if rank == 0 {
        let mut opt = RmsProp::new(&ctx, config.clone())?;
        let mut ids = Vec::new();
        for s in &specs {
            ids.push(opt.add_variable(&s.name, &s.shape, &s.init)?);
        }
        let g = vec![1e-3f32; side * side];
        let grads: Vec<_> = ids.iter().map(|&id| (id, g.as_slice())).collect();
        opt.apply_gradients(&grads)?;
        let mut ms = Vec::new();
        for _ in 0..steps {
            let t = Instant::now();
            opt.apply_gradients(&grads)?;
            opt.read_variable(ids[0])?; // to completion
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        (opt.pool_stats().state_bytes, median(ms))
    } else {
        (0, 0.0)
    };
    let mut opt = ShardedRmsProp::new(&ctx, config, &world, &specs, DistributedOptions::default())?;
    let grad: Vec<f32> = (0..side * side)
        .map(|i| ((i * 7 + rank) % 13) as f32 * 1e-3 - 6e-3)
        .collect();
    let host: Vec<(usize, ShardGradient)> =
        (0..4).map(|i| (i, ShardGradient::Dense(&grad))).collect();
    let resident: Vec<(usize, ShardGradient)> =
        (0..4).map(|i| (i, ShardGradient::Resident)).collect();
    let time = |opt: &mut ShardedRmsProp, grads: &[(usize, ShardGradient)]| {
        let mut ms = Vec::new();
        let (before, mpi) = (opt.bytes_sent(), opt.mpi_seconds());
        for _ in 0..steps {
            let t = Instant::now();
            opt.step(grads)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mpi_ms = (opt.mpi_seconds() - mpi) * 1e3 / steps as f64;
        Ok::<_, wgpu_rmsprop::Error>((
            median(ms),
            (opt.bytes_sent() - before) / steps as u64,
            mpi_ms,
        ))
    };
    opt.step(&host)?; // warm-up
    let (ms_host, bytes, mpi_ms) = time(&mut opt, &host)?;
    let (ms_resident, _, _) = time(&mut opt, &resident)?;
    let mut state = 0u64;
    world.all_reduce_into(&opt.state_bytes(), &mut state, SystemOperation::max());
    let mut slowest = [0f64; 3];
    world.all_reduce_into(
        &[ms_host, ms_resident, mpi_ms][..],
        &mut slowest[..],
        SystemOperation::max(),
    );
    if rank == 0 {
        println!(
            "{{\"ranks\":{},\"params\":{params},\"steps\":{steps},\"ms_per_step\":{:.1},\
             \"ms_per_step_resident\":{:.1},\"mpi_ms_per_step\":{:.1},\"bytes_sent_per_step\":{bytes},\
             \"state_bytes_per_rank\":{state},\"state_bytes_one_process\":{one_process},\
             \"state_ratio\":{:.4},\"ms_per_step_one_process\":{one_process_ms:.1},\"adapter\":\"{}\"}}",
            opt.world_size(),
            slowest[0],
            slowest[1],
            slowest[2],
            state as f64 / one_process as f64,
            ctx.adapter_description().replace('"', "'"),
        );
    }
    Ok(())
}
