//! Golden cases on the sharded optimizer (`replay --distributed`): each rank gives its part of every
//! step's gradients (a contiguous block of a dense gradient's elements, of a sparse gradient's listed
//! rows; zeros elsewhere), the parts are summed across ranks, and every rank judges its own copy of the
//! variables and the slots gathered from all ranks against the case.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::case::{Case, CaseGradient, CaseReport, Outcome, StepState, Verdict};

/// What every rank agrees on after a case: the verdict of the worst rank.
pub type DistributedVerdict = CaseReport;

/// Rank `rank`'s block of `len` items out of `world`.
fn block(len: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    len * rank / world..len * (rank + 1) / world
}

/// This rank's part of one gradient.
enum Part {
    Dense(Vec<f32>),
    Sparse(Vec<i64>, Vec<f32>),
}

/// Runs the case at `path` on the sharded optimizer over `world` (a collective call) and returns, on
/// every rank, one report: PASS only when every rank's variables and the gathered slots pass at every
/// step; the largest errors over the ranks. With `resume_at = Some(k)`, the optimizer is checkpointed
/// into `checkpoints` after step `k`, dropped, rebuilt and restored (the results must not change).
pub fn replay_case(
    path: &Path,
    ctx: &GpuContext,
    world: &SimpleCommunicator,
    resume_at: Option<usize>,
    checkpoints: &Path,
) -> DistributedVerdict {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "?".into());
    let report = |name: &str, outcome| CaseReport {
        name: name.to_string(),
        outcome,
        emitted: None,
        notes: vec![format!(
            "ranks={}",
            mpi::topology::Communicator::size(world)
        )],
    };
    let case = match Case::from_path(path) {
        Ok(c) => c,
        Err(e) => return report(&stem, Outcome::Error(e.to_string())),
    };
    if let Some(what) = case.unsupported() {
        return report(&case.name, Outcome::Unsupported(what));
    }
    let local = run(&case, ctx, world, resume_at, checkpoints).map(|states| case.judge(&states));
    // Agree: the worst rank decides (an error anywhere, then a failure anywhere).
    let mut comm = Comm::new(world);
    let (code, abs, rel) = match &local {
        Err(_) => (2u64, 0.0f64, 0.0f64),
        Ok(None) => (0, 0.0, 0.0),
        Ok(Some(v)) => (u64::from(!v.pass), v.max_abs, v.max_rel),
    };
    let (_, max) = comm.min_max_u64(&[code, abs.to_bits(), rel.to_bits()]);
    let (abs, rel) = (f64::from_bits(max[1]), f64::from_bits(max[2]));
    let outcome = match (local, max[0]) {
        (Err(e), _) => Outcome::Error(e.to_string()),
        (Ok(_), 2) => Outcome::Error("another rank failed to run the case".into()),
        (Ok(None), _) => Outcome::Ran,
        (Ok(Some(v)), 0) => Outcome::Pass(Verdict {
            max_abs: abs,
            max_rel: rel,
            ..v
        }),
        (Ok(Some(v)), _) => Outcome::Fail(Verdict {
            pass: false,
            max_abs: abs,
            max_rel: rel,
            worst: v
                .worst
                .or_else(|| Some("another rank's values are out of tolerance".into())),
        }),
    };
    report(&case.name, outcome)
}

fn build(case: &Case, ctx: &GpuContext, world: &SimpleCommunicator) -> Result<ShardedRmsProp> {
    let specs: Vec<VariableSpec> = case
        .variables
        .iter()
        .map(|v| VariableSpec {
            name: v.name.clone(),
            shape: v.shape.clone(),
            init: v.init.clone(),
            options: v.options(),
        })
        .collect();
    let options = DistributedOptions {
        reduction: Reduction::Sum,
        ..DistributedOptions::default()
    };
    ShardedRmsProp::new(ctx, case.optimizer_config()?, world, &specs, options)
}

fn run(
    case: &Case,
    ctx: &GpuContext,
    world: &SimpleCommunicator,
    resume_at: Option<usize>,
    checkpoints: &Path,
) -> Result<Vec<StepState>> {
    case.check_supported()?;
    let mut opt = build(case, ctx, world)?;
    let (rank, size) = (opt.rank(), opt.world_size());
    let mut states = Vec::with_capacity(case.steps.len());
    for (t, step) in case.steps.iter().enumerate() {
        let parts: Vec<Part> = step
            .grads
            .iter()
            .zip(&case.variables)
            .map(|(g, var)| match g {
                CaseGradient::Dense { values } => {
                    let mut mine = vec![0.0f32; values.len()];
                    let r = block(values.len(), rank, size);
                    mine[r.clone()].copy_from_slice(&values[r]);
                    Part::Dense(mine)
                }
                CaseGradient::Sparse { indices, values } => {
                    let row_len: usize = var.shape.iter().skip(1).product();
                    let r = block(indices.len(), rank, size);
                    Part::Sparse(
                        indices[r.clone()].to_vec(),
                        values[r.start * row_len..r.end * row_len].to_vec(),
                    )
                }
            })
            .collect();
        let grads: Vec<(usize, ShardGradient<'_>)> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let g = match p {
                    Part::Dense(v) => ShardGradient::Dense(v),
                    Part::Sparse(indices, values) => ShardGradient::Sparse { indices, values },
                };
                (i, g)
            })
            .collect();
        let n = opt.step(&grads)?;
        let variables = opt.read_variables()?;
        let mut slots: BTreeMap<String, Vec<Option<Vec<f32>>>> = BTreeMap::new();
        for s in opt.slots() {
            slots.insert(s.name().to_string(), opt.gather_slot(s)?);
        }
        states.push(StepState {
            step: n,
            learning_rate: Some(f64::from(opt.last_learning_rate().unwrap_or(f32::NAN))),
            variables,
            slots,
        });
        if resume_at == Some(t + 1) {
            let dir = checkpoints.join(&case.name);
            opt.save_checkpoint(&dir)?;
            drop(opt);
            opt = build(case, ctx, world)?;
            opt.load_checkpoint(&dir)?;
        }
    }
    Ok(states)
}
