//! Precision study of 16-bit storage: which is closer to exact arithmetic, the frameworks (which round
//! after every operation in the reduced type) or this crate's rule (compute in f32, round each stored
//! value once)? CPU only, no GPU.
//!
//! ```text
//! cargo run --release --example precision -- [DIR ...]
//! ```
//!
//! Reads the float16/bfloat16 golden cases (by default from `tests/golden/cases`). For every case and every step `t`, each model starts
//! from the framework's stored state after step `t - 1` (`expected[t-2]`, or the initial state) and
//! computes step `t`:
//! - **CR** (correctly rounded): the step in float64, each stored value rounded once to the type at
//!   the end (a `sequential` sparse pair is a complete update, so it is stored before the next pair);
//! - **framework**: the case's `expected[t-1]` (TensorFlow / Keras 3 / torch, rounding every
//!   operation);
//! - **round-once f32**: the crate's CPU twin ([`Reference`]), f32 arithmetic, each stored value rounded
//!   once (what the GPU kernels do).
//!
//! Each stored element (variables and every listed slot) is compared with CR: the share that differs
//! and the largest difference in ulps of the type (representable values between them). One step at a
//! time, so the errors do not compound and every model answers the same question.
//!
//! The float64 model covers what FORMAT.md's semantics need for these cases (every preset, clipping,
//! weight decay, the sparse modes and duplicate rules, parameter-group overrides); the Keras
//! base-class features (EMA, accumulation, loss scaling) are float32 only and not modelled. In the
//! float64 model a merged sparse row stays exact, where the crate stores it in the gradient's type.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wgpu_rmsprop::case::{Case, CaseGradient, CaseLearningRate};
use wgpu_rmsprop::config::{
    AverageForm, DuplicateIndices, EpsilonPlacement, MomentumForm, RmsPropConfig, SparseMode,
    WeightDecay,
};
use wgpu_rmsprop::reference::{group_rows, RefGradient, Reference};
use wgpu_rmsprop::{Dtype, Result};

/// One element's state in float64.
#[derive(Debug, Clone, Copy)]
struct S64 {
    x: f64,
    v: f64,
    m: f64,
    a: f64,
}

/// The step's hyper-parameters in float64 (as written in the case: all exact in the type).
struct P64 {
    lr: f64,
    rho: f64,
    one_minus_rho: f64,
    momentum: f64,
    epsilon: f64,
    weight_decay: f64,
    bias_correction: f64,
}

/// `reference::rmsprop` in float64 (exact up to float64's own rounding, far below a 16-bit ulp).
fn rmsprop64(c: &RmsPropConfig, p: &P64, s_in: S64, g_in: f64, q: f64, use_q: bool) -> S64 {
    let mut s = s_in;
    let mut g = g_in;
    if c.maximize() {
        g = -g;
    }
    if matches!(c.weight_decay(), WeightDecay::L2(_)) {
        g += p.weight_decay * s.x;
    }
    if matches!(c.weight_decay(), WeightDecay::Decoupled(_)) {
        s.x -= s.x * p.weight_decay * p.lr;
    }
    let g2 = if use_q { q } else { g * g };
    s.v = p.rho * s.v + p.one_minus_rho * g2;
    let vh = s.v / p.bias_correction;
    let eps_outside = c.epsilon_placement() == EpsilonPlacement::OutsideSqrt;
    let d = if c.centered() {
        // torch's lerp and the moving average are the same number in exact arithmetic.
        s.a = match c.average_form() {
            AverageForm::Lerp => s.a + p.one_minus_rho * (g - s.a),
            AverageForm::Ema => p.rho * s.a + p.one_minus_rho * g,
        };
        let ah = s.a / p.bias_correction;
        let var_est = vh - ah * ah;
        if eps_outside {
            var_est.max(0.0).sqrt() + p.epsilon
        } else {
            let t = var_est + p.epsilon;
            (if t < 0.0 { p.epsilon } else { t }).sqrt()
        }
    } else if eps_outside {
        vh.sqrt() + p.epsilon
    } else {
        (vh + p.epsilon).sqrt()
    };
    let has_m = c.has_momentum();
    match c.momentum_form() {
        MomentumForm::LrAfter => {
            if has_m {
                s.m = p.momentum * s.m + g / d;
                s.x -= p.lr * s.m;
            } else {
                s.x -= p.lr * g / d;
            }
        }
        form => {
            let inc = p.lr * g / d;
            if !has_m {
                s.x -= inc;
            } else if form == MomentumForm::NegatedTrace {
                s.m = -inc + p.momentum * s.m;
                s.x += if c.nesterov() {
                    -inc + p.momentum * s.m
                } else {
                    s.m
                };
            } else {
                s.m = p.momentum * s.m + inc;
                s.x -= if c.nesterov() {
                    inc + p.momentum * s.m
                } else {
                    s.m
                };
            }
        }
    }
    s
}

/// One variable's stored state (f32 values of the type).
#[derive(Debug, Clone)]
struct Stored {
    x: Vec<f32>,
    v: Vec<f32>,
    m: Option<Vec<f32>>,
    a: Option<Vec<f32>>,
}

impl Stored {
    fn get(&self, i: usize) -> S64 {
        S64 {
            x: f64::from(self.x[i]),
            v: f64::from(self.v[i]),
            m: self.m.as_ref().map_or(0.0, |m| f64::from(m[i])),
            a: self.a.as_ref().map_or(0.0, |a| f64::from(a[i])),
        }
    }

    /// Stores `s`, rounded once from float64 to the type.
    fn set(&mut self, i: usize, s: S64, d: Dtype) {
        let r = |y: f64| round64(d, y);
        self.x[i] = r(s.x);
        self.v[i] = r(s.v);
        if let Some(m) = self.m.as_mut() {
            m[i] = r(s.m);
        }
        if let Some(a) = self.a.as_mut() {
            a[i] = r(s.a);
        }
    }
}

/// `y` rounded to nearest even in the type, directly from float64 (no intermediate float32).
fn round64(d: Dtype, y: f64) -> f32 {
    match d {
        Dtype::F32 | Dtype::Q8 => y as f32,
        Dtype::F16 => half::f16::from_f64(y).to_f32(),
        Dtype::Bf16 => half::bf16::from_f64(y).to_f32(),
    }
}

/// The framework's stored state after step `t - 1` (1-based; `t = 1`: the initial state as the
/// crate's reference creates it).
fn state_before(case: &Case, r: &Reference, t: usize) -> Vec<Stored> {
    (0..case.variables.len())
        .map(|k| {
            let fresh = &r.vars[k];
            let mut s = Stored {
                x: fresh.x.clone(),
                v: fresh.v.clone(),
                m: fresh.m.clone(),
                a: fresh.a.clone(),
            };
            if t > 1 {
                let e = &case.expected.as_ref().expect("expected values")[t - 2];
                s.x = e.variables[k].clone();
                let slot = |name: &str| e.slots.get(name).and_then(|l| l[k].clone());
                s.v = slot("velocity").expect("velocity");
                if s.m.is_some() {
                    s.m = slot("momentum");
                }
                if s.a.is_some() {
                    s.a = slot("average_gradient");
                }
            }
            s
        })
        .collect()
}

/// The learning rate of step `t` as written in the case (float64).
fn learning_rate(case: &Case, t: usize) -> f64 {
    match &case.config.learning_rate {
        CaseLearningRate::Constant(x) => *x,
        CaseLearningRate::Schedule(s) => s.at(t as u64 - 1),
    }
}

/// Step `t` in float64 from `before`, every stored value rounded once (the correctly rounded state).
fn correctly_rounded(case: &Case, before: &[Stored], t: usize) -> Result<Vec<Stored>> {
    let config = case.optimizer_config()?;
    let d = case.element_type();
    let step = &case.steps[t - 1];
    let lr = learning_rate(case, t);
    let clipvalue = config.clipvalue().unwrap_or(f64::INFINITY);
    let values = |g: &CaseGradient| -> Vec<f64> {
        let v = match g {
            CaseGradient::Dense { values } | CaseGradient::Sparse { values, .. } => values,
        };
        v.iter()
            .map(|&x| f64::from(x).clamp(-clipvalue, clipvalue))
            .collect()
    };
    let grads: Vec<Vec<f64>> = step.grads.iter().map(values).collect();
    // Clipping by norm over the listed values, exactly.
    let sumsq: Vec<f64> = grads
        .iter()
        .map(|g| g.iter().map(|x| x * x).sum())
        .collect();
    let total: f64 = sumsq.iter().sum();
    let scale: Vec<f64> = sumsq
        .iter()
        .map(|&s| {
            if let Some(c) = config.clipnorm() {
                c / s.sqrt().max(c)
            } else if let Some(c) = config.global_clipnorm() {
                let n = total.sqrt();
                if n > 0.0 {
                    c * (1.0 / n).min(1.0 / c)
                } else {
                    1.0
                }
            } else {
                1.0
            }
        })
        .collect();
    let mut out = before.to_vec();
    for (k, var) in case.variables.iter().enumerate() {
        let o = var.options();
        let c = o.effective_config(&config);
        let rho = c.rho();
        let p = P64 {
            lr: o.learning_rate.unwrap_or(lr) * o.lr_multiplier,
            rho,
            one_minus_rho: 1.0 - rho,
            momentum: c.momentum(),
            epsilon: c.epsilon(),
            weight_decay: match c.weight_decay() {
                WeightDecay::None => 0.0,
                WeightDecay::Decoupled(w) | WeightDecay::L2(w) => w,
            },
            bias_correction: if c.bias_correction() {
                1.0 - rho.powi(t as i32)
            } else {
                1.0
            },
        };
        let g: Vec<f64> = grads[k].iter().map(|x| x * scale[k]).collect();
        let s = &mut out[k];
        match &step.grads[k] {
            CaseGradient::Dense { .. } => {
                for (i, &gi) in g.iter().enumerate() {
                    let next = rmsprop64(&c, &p, s.get(i), gi, 0.0, false);
                    s.set(i, next, d);
                }
            }
            CaseGradient::Sparse { indices, .. } => {
                let row_len: usize = var.shape.iter().skip(1).product();
                let indices: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
                let rows = group_rows(&indices);
                match c.sparse_mode() {
                    // (The study's cases are never lazy-exact: run as lazy.)
                    SparseMode::Lazy | SparseMode::LazyExact => {
                        for (row, ks) in &rows {
                            for col in 0..row_len {
                                let i = row * row_len + col;
                                let listed = |k: usize| g[k * row_len + col];
                                if c.duplicate_indices() == DuplicateIndices::Sequential {
                                    for &kk in ks {
                                        let next =
                                            rmsprop64(&c, &p, s.get(i), listed(kk), 0.0, false);
                                        s.set(i, next, d);
                                    }
                                } else {
                                    let sum: f64 = ks.iter().map(|&kk| listed(kk)).sum();
                                    let next = rmsprop64(&c, &p, s.get(i), sum, 0.0, false);
                                    s.set(i, next, d);
                                }
                            }
                        }
                    }
                    SparseMode::Dense => {
                        let n = s.x.len();
                        let (mut gsum, mut q) = (vec![0.0f64; n], vec![0.0f64; n]);
                        for (row, ks) in &rows {
                            for col in 0..row_len {
                                let i = row * row_len + col;
                                for &kk in ks {
                                    let gk = g[kk * row_len + col];
                                    gsum[i] += gk;
                                    q[i] += gk * gk;
                                }
                            }
                        }
                        let use_q = c.duplicate_indices() == DuplicateIndices::Keras3
                            && c.global_clipnorm().is_none();
                        for i in 0..n {
                            let next = rmsprop64(&c, &p, s.get(i), gsum[i], q[i], use_q);
                            s.set(i, next, d);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Step `t` on the crate's CPU twin from `before` (f32 arithmetic, rounded once when stored).
fn round_once_f32(case: &Case, before: &[Stored], t: usize) -> Result<Vec<Stored>> {
    let mut r = Reference::new(case.optimizer_config()?);
    for v in &case.variables {
        r.add_variable_with(&v.shape, &v.init, &v.options())?;
    }
    for (var, s) in r.vars.iter_mut().zip(before) {
        var.x.clone_from(&s.x);
        var.v.clone_from(&s.v);
        var.m.clone_from(&s.m);
        var.a.clone_from(&s.a);
    }
    r.iterations = t as u64 - 1;
    let step = &case.steps[t - 1];
    let indices: Vec<Vec<usize>> = step
        .grads
        .iter()
        .map(|g| match g {
            CaseGradient::Sparse { indices, .. } => indices.iter().map(|&i| i as usize).collect(),
            CaseGradient::Dense { .. } => Vec::new(),
        })
        .collect();
    let grads: Vec<Option<RefGradient>> = step
        .grads
        .iter()
        .zip(&indices)
        .map(|(g, idx)| {
            Some(match g {
                CaseGradient::Dense { values } => RefGradient::Dense(values),
                CaseGradient::Sparse { values, .. } => RefGradient::Sparse {
                    indices: idx,
                    values,
                },
            })
        })
        .collect();
    r.step(&grads)?;
    Ok(r.vars
        .iter()
        .map(|v| Stored {
            x: v.x.clone(),
            v: v.v.clone(),
            m: v.m.clone(),
            a: v.a.clone(),
        })
        .collect())
}

/// The position of `x` among the type's values (sign-magnitude to a monotone integer; ±0 are 0):
/// the difference of two is their distance in ulps.
fn ordinal(d: Dtype, x: f32) -> i64 {
    let b = i64::from(d.to_bits16(x));
    if b & 0x8000 != 0 {
        -(b & 0x7fff)
    } else {
        b
    }
}

/// Differences from the correctly rounded values.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    elements: u64,
    differ: u64,
    max_ulps: i64,
    sum_ulps: i64,
}

impl Tally {
    fn add(&mut self, d: Dtype, cr: f32, other: f32) {
        let ulps = (ordinal(d, cr) - ordinal(d, other)).abs();
        self.elements += 1;
        self.differ += u64::from(ulps != 0);
        self.max_ulps = self.max_ulps.max(ulps);
        self.sum_ulps += ulps;
    }

    fn merge(&mut self, o: &Tally) {
        self.elements += o.elements;
        self.differ += o.differ;
        self.max_ulps = self.max_ulps.max(o.max_ulps);
        self.sum_ulps += o.sum_ulps;
    }

    fn share(&self) -> f64 {
        100.0 * self.differ as f64 / self.elements.max(1) as f64
    }

    fn mean(&self) -> f64 {
        self.sum_ulps as f64 / self.elements.max(1) as f64
    }
}

/// (framework vs CR, round-once f32 vs CR) over every step of `case`.
fn study(case: &Case) -> Result<(Tally, Tally)> {
    let d = case.element_type();
    let expected = case.expected.as_ref().expect("expected values");
    let mut fresh = Reference::new(case.optimizer_config()?);
    for v in &case.variables {
        fresh.add_variable_with(&v.shape, &v.init, &v.options())?;
    }
    let (mut fw, mut once) = (Tally::default(), Tally::default());
    for t in 1..=case.steps.len() {
        let before = state_before(case, &fresh, t);
        let cr = correctly_rounded(case, &before, t)?;
        let twin = round_once_f32(case, &before, t)?;
        let e = &expected[t - 1];
        for (k, (c, w)) in cr.iter().zip(&twin).enumerate() {
            let mut quantities: Vec<(&[f32], &[f32], &[f32])> = vec![(&c.x, &w.x, &e.variables[k])];
            for (name, cs, ws) in [
                ("velocity", Some(&c.v), Some(&w.v)),
                ("momentum", c.m.as_ref(), w.m.as_ref()),
                ("average_gradient", c.a.as_ref(), w.a.as_ref()),
            ] {
                let listed = e.slots.get(name).and_then(|l| l[k].as_ref());
                if let (Some(cs), Some(ws), Some(es)) = (cs, ws, listed) {
                    quantities.push((cs, ws, es));
                }
            }
            for (cs, ws, es) in quantities {
                for ((&cv, &wv), &ev) in cs.iter().zip(ws).zip(es) {
                    fw.add(d, cv, ev);
                    once.add(d, cv, wv);
                }
            }
        }
    }
    Ok((fw, once))
}

fn case_paths(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
}

fn main() -> ExitCode {
    let mut dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        dirs = vec![root.join("cases")];
    }
    let mut cases = Vec::new();
    for p in case_paths(&dirs) {
        match Case::from_path(&p) {
            Ok(c) if c.dtype != "float32" && c.expected.is_some() => cases.push(c),
            Ok(_) => {}
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if cases.is_empty() {
        eprintln!("no float16/bfloat16 cases with expected values in {dirs:?}");
        return ExitCode::FAILURE;
    }
    println!(
        "Stored elements that differ from the correctly rounded step (float64, rounded once), one step \
         at a time from the framework's state; ulps of the case's type."
    );
    println!(
        "{:<42} {:>7}  {:>9} {:>9} {:>8}  {:>9} {:>9} {:>8}",
        "case", "elems", "fw diff%", "fw mean", "fw max", "f32 diff%", "f32 mean", "f32 max"
    );
    let mut totals: [(Tally, Tally); 2] = Default::default();
    for case in &cases {
        let (fw, once) = match study(case) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e}", case.name);
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{:<42} {:>7}  {:>8.2}% {:>9.3} {:>8}  {:>8.2}% {:>9.3} {:>8}",
            case.name,
            fw.elements,
            fw.share(),
            fw.mean(),
            fw.max_ulps,
            once.share(),
            once.mean(),
            once.max_ulps
        );
        let slot = usize::from(case.element_type() == Dtype::Bf16);
        totals[slot].0.merge(&fw);
        totals[slot].1.merge(&once);
    }
    for (label, (fw, once)) in ["all float16", "all bfloat16"].iter().zip(&totals) {
        if fw.elements == 0 {
            continue;
        }
        println!(
            "{:<42} {:>7}  {:>8.2}% {:>9.3} {:>8}  {:>8.2}% {:>9.3} {:>8}",
            label,
            fw.elements,
            fw.share(),
            fw.mean(),
            fw.max_ulps,
            once.share(),
            once.mean(),
            once.max_ulps
        );
    }
    ExitCode::SUCCESS
}
