//! Per-variable options (parameter groups): the group golden cases of `tests/golden/cases/` (torch param
//! groups, Keras `exclude_from_weight_decay`; format in the conformance set's FORMAT.md, "Parameter
//! groups (torch)" and "Optimizer base-class features") read by a small local reader, on the GPU and
//! on the CPU twin after every step; then every option against the twin, dense and sparse, with
//! clipping, at sizes that break tiling, with 256-byte slices and split pools.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{assert_close, ctx, Rng};
use serde_json::Value;
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Error, Gradient, Indices, OptimizerOptions, Preset, RmsProp, RmsPropConfig, Schedule, Slot,
    Tensor, VarId, VarOptions,
};

// ---------------------------------------------------------------------------------------------------
// The golden cases.

/// One variable of a case: name, shape, initial values, options.
struct CaseVar {
    name: String,
    shape: Vec<usize>,
    init: Vec<f32>,
    options: VarOptions,
}

enum CaseGrad {
    Dense(Vec<f32>),
    Sparse(Vec<i64>, Vec<f32>),
}

/// The state after one step; a `None` slot entry: that variable has no such slot.
struct CaseExpected {
    learning_rate: f64,
    variables: Vec<Vec<f32>>,
    slots: BTreeMap<String, Vec<Option<Vec<f32>>>>,
}

struct GroupCase {
    name: String,
    config: RmsPropConfig,
    variables: Vec<CaseVar>,
    steps: Vec<Vec<CaseGrad>>,
    expected: Vec<CaseExpected>,
    rtol: f64,
    atol: f64,
}

fn floats(v: &Value) -> Vec<f32> {
    let a = v.as_array().expect("an array of numbers");
    a.iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn config_of(c: &Value, semantics: &str) -> RmsPropConfig {
    let preset = Preset::from_name(semantics).unwrap_or_else(|| panic!("semantics {semantics}"));
    let mut b = RmsPropConfig::preset(preset);
    b = match &c["learning_rate"] {
        Value::Object(s) => {
            assert_eq!(s["schedule"], "PiecewiseConstantDecay", "schedule");
            let nums = |k: &str| s[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap());
            b.learning_rate(Schedule::PiecewiseConstantDecay {
                boundaries: nums("boundaries").collect(),
                values: nums("values").collect(),
            })
        }
        lr => b.learning_rate(lr.as_f64().unwrap()),
    };
    let num = |k: &str| c.get(k).and_then(Value::as_f64);
    b = b
        .rho(num("rho").unwrap())
        .momentum(num("momentum").unwrap())
        .epsilon(num("epsilon").unwrap())
        .centered(c["centered"].as_bool().unwrap());
    if let Some(w) = num("weight_decay") {
        b = b.weight_decay(w);
    }
    if let Some(m) = c.get("maximize").and_then(Value::as_bool) {
        b = b.maximize(m);
    }
    if let Some(x) = num("clipnorm") {
        b = b.clipnorm(x);
    }
    if let Some(x) = num("clipvalue") {
        b = b.clipvalue(x);
    }
    if let Some(x) = num("global_clipnorm") {
        b = b.global_clipnorm(x);
    }
    b.build().unwrap()
}

/// A variable's `overrides` (torch param groups) and `exclude_from_weight_decay` (Keras).
fn options_of(v: &Value) -> VarOptions {
    let mut o = VarOptions::default();
    if let Some(over) = v.get("overrides").and_then(Value::as_object) {
        for (k, x) in over {
            match k.as_str() {
                "learning_rate" => o.learning_rate = x.as_f64(),
                "rho" => o.rho = x.as_f64(),
                "momentum" => o.momentum = x.as_f64(),
                "epsilon" => o.epsilon = x.as_f64(),
                "centered" => o.centered = x.as_bool(),
                "weight_decay" => o.weight_decay = x.as_f64(),
                "maximize" => o.maximize = x.as_bool(),
                other => panic!("unknown override {other}"),
            }
        }
    }
    o.exclude_from_weight_decay = v
        .get("exclude_from_weight_decay")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    o
}

fn read_case(path: &std::path::Path) -> GroupCase {
    let text = std::fs::read_to_string(path).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["format"], "rmsprop-case/1");
    assert_eq!(j["dtype"], "float32");
    let variables: Vec<CaseVar> = j["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| CaseVar {
            name: v["name"].as_str().unwrap().to_string(),
            shape: v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            init: floats(&v["init"]),
            options: options_of(v),
        })
        .collect();
    let steps = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let grads = s["grads"].as_array().unwrap();
            assert_eq!(grads.len(), variables.len());
            grads
                .iter()
                .map(|g| match g["kind"].as_str().unwrap() {
                    "dense" => CaseGrad::Dense(floats(&g["values"])),
                    "sparse" => CaseGrad::Sparse(
                        g["indices"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|i| i.as_i64().unwrap())
                            .collect(),
                        floats(&g["values"]),
                    ),
                    k => panic!("gradient kind {k}"),
                })
                .collect()
        })
        .collect();
    let expected = j["expected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| CaseExpected {
            learning_rate: e["learning_rate"].as_f64().unwrap(),
            variables: e["variables"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect(),
            slots: e["slots"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, per)| {
                    let per = per.as_array().unwrap();
                    let values = per.iter().map(|x| (!x.is_null()).then(|| floats(x)));
                    (k.clone(), values.collect())
                })
                .collect(),
        })
        .collect();
    GroupCase {
        name: j["name"].as_str().unwrap().to_string(),
        config: config_of(&j["config"], j["semantics"].as_str().unwrap()),
        variables,
        steps,
        expected,
        rtol: j["tolerance"]["rtol"].as_f64().unwrap(),
        atol: j["tolerance"]["atol"].as_f64().unwrap(),
    }
}

fn cases() -> Vec<GroupCase> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases");
    let group = |p: &PathBuf| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("torch_groups_") || name.starts_with("keras_wd_exclude_")
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(group)
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 4, "the four group cases in {}", dir.display());
    paths.iter().map(|p| read_case(p)).collect()
}

/// Compares one quantity with the case's tolerance.
fn judge(case: &GroupCase, label: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{}: {label} length",
        case.name
    );
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (f64::from(a), f64::from(e));
        assert!(
            (a - e).abs() <= case.atol + case.rtol * e.abs(),
            "{}: {label}[{i}] = {a}, expected {e}",
            case.name
        );
    }
}

/// The slot a case names.
fn slot_named(name: &str) -> Slot {
    match name {
        "velocity" => Slot::Velocity,
        "momentum" => Slot::Momentum,
        "average_gradient" => Slot::AverageGradient,
        "ema" => Slot::Ema,
        other => panic!("slot {other}"),
    }
}

/// Runs a case on the GPU and on the twin and checks every variable and every slot after every step
/// (a `null` entry: the variable must not have the slot, on either). `by_name`: Keras's exclusions are
/// given by name ([`RmsProp::exclude_from_weight_decay_names`]) instead of in the options.
fn run_case(case: &GroupCase, by_name: bool) {
    let mut opt = RmsProp::new(ctx(), case.config.clone()).unwrap();
    let mut r = Reference::new(case.config.clone());
    let mut ids = Vec::new();
    let mut excluded = Vec::new();
    for v in &case.variables {
        let mut o = v.options.clone();
        if by_name && o.exclude_from_weight_decay {
            o.exclude_from_weight_decay = false;
            excluded.push(v.name.as_str());
        }
        ids.push(
            opt.add_variable_with(&v.name, &v.shape, &v.init, &o)
                .unwrap(),
        );
        r.add_variable_with(&v.shape, &v.init, &v.options).unwrap();
    }
    if by_name {
        opt.exclude_from_weight_decay_names(&excluded).unwrap();
    }
    for (t, (step, e)) in case.steps.iter().zip(&case.expected).enumerate() {
        let grads: Vec<(VarId, Gradient)> = ids
            .iter()
            .zip(step)
            .map(|(&id, g)| match g {
                CaseGrad::Dense(v) => (id, Gradient::Dense(v)),
                CaseGrad::Sparse(i, v) => (
                    id,
                    Gradient::Sparse {
                        indices: Indices::I64(i),
                        values: v,
                    },
                ),
            })
            .collect();
        opt.apply(&grads).unwrap();
        let rows: Vec<Vec<usize>> = step
            .iter()
            .map(|g| match g {
                CaseGrad::Sparse(i, _) => i.iter().map(|&k| k as usize).collect(),
                CaseGrad::Dense(_) => Vec::new(),
            })
            .collect();
        let ref_grads: Vec<Option<RefGradient>> = step
            .iter()
            .zip(&rows)
            .map(|(g, rows)| {
                Some(match g {
                    CaseGrad::Dense(v) => RefGradient::Dense(v),
                    CaseGrad::Sparse(_, v) => RefGradient::Sparse {
                        indices: rows,
                        values: v,
                    },
                })
            })
            .collect();
        r.step(&ref_grads).unwrap();
        let lr = f64::from(opt.last_learning_rate().unwrap());
        assert!(
            (lr - e.learning_rate).abs() <= 1e-6 * e.learning_rate,
            "{}",
            case.name
        );
        for (k, &id) in ids.iter().enumerate() {
            let at = format!("step {} {}", t + 1, case.variables[k].name);
            judge(
                case,
                &format!("{at} gpu x"),
                &opt.read_variable(id).unwrap(),
                &e.variables[k],
            );
            judge(case, &format!("{at} twin x"), &r.vars[k].x, &e.variables[k]);
            for (name, per) in &e.slots {
                let slot = slot_named(name);
                let twin = match slot {
                    Slot::Velocity => Some(&r.vars[k].v),
                    Slot::Momentum => r.vars[k].m.as_ref(),
                    Slot::AverageGradient => r.vars[k].a.as_ref(),
                    Slot::Ema => r.vars[k].ema.as_ref(),
                };
                match &per[k] {
                    Some(expected) => {
                        let gpu = opt.read_slot(id, slot).unwrap();
                        judge(case, &format!("{at} gpu {name}"), &gpu, expected);
                        judge(case, &format!("{at} twin {name}"), twin.unwrap(), expected);
                    }
                    None => {
                        assert!(
                            matches!(opt.read_slot(id, slot), Err(Error::SlotNotPresent { .. })),
                            "{at}: {name} must not exist on the GPU"
                        );
                        assert!(twin.is_none(), "{at}: {name} must not exist in the twin");
                    }
                }
            }
        }
    }
}

#[test]
fn the_group_cases_pass_on_the_gpu_and_the_twin_after_every_step() {
    let all = cases();
    for case in &all {
        run_case(case, false);
    }
    // The features are all there: torch groups with their own lr, weight decay, momentum and centered
    // (and null slot entries), Keras exclusions with momentum, a schedule and centered.
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "keras_wd_exclude_momentum",
            "keras_wd_exclude_sched_centered",
            "torch_groups_lr_wd",
            "torch_groups_momentum_centered"
        ]
    );
}

#[test]
fn keras_exclusions_by_name_pass_the_same_cases() {
    for case in cases().iter().filter(|c| c.name.starts_with("keras")) {
        run_case(case, true);
    }
}

// ---------------------------------------------------------------------------------------------------
// Every option against the twin.

/// Every option on its own (and all at once), for `config`: those `config` refuses are left out.
fn option_sets(config: &RmsPropConfig) -> Vec<(&'static str, VarOptions)> {
    let d = VarOptions::default;
    let all = vec![
        (
            "all",
            VarOptions {
                momentum: Some(0.3),
                centered: Some(true),
                weight_decay: Some(0.2),
                maximize: Some(true),
                epsilon: Some(1e-3),
                rho: Some(0.7),
                lr_multiplier: 0.5,
                ..d()
            },
        ),
        ("default", d()),
        (
            "lr_multiplier",
            VarOptions {
                lr_multiplier: 2.5,
                ..d()
            },
        ),
        (
            "learning_rate",
            VarOptions {
                learning_rate: Some(0.003),
                ..d()
            },
        ),
        (
            "learning_rate_and_multiplier",
            VarOptions {
                learning_rate: Some(0.03),
                lr_multiplier: 0.5,
                ..d()
            },
        ),
        (
            "weight_decay",
            VarOptions {
                weight_decay: Some(0.3),
                ..d()
            },
        ),
        (
            "exclude_from_weight_decay",
            VarOptions {
                exclude_from_weight_decay: true,
                ..d()
            },
        ),
        (
            "momentum_0",
            VarOptions {
                momentum: Some(0.0),
                ..d()
            },
        ),
        (
            "momentum_0.8",
            VarOptions {
                momentum: Some(0.8),
                ..d()
            },
        ),
        (
            "centered",
            VarOptions {
                centered: Some(true),
                ..d()
            },
        ),
        (
            "not_centered",
            VarOptions {
                centered: Some(false),
                ..d()
            },
        ),
        (
            "epsilon",
            VarOptions {
                epsilon: Some(1e-2),
                ..d()
            },
        ),
        (
            "rho",
            VarOptions {
                rho: Some(0.5),
                ..d()
            },
        ),
        (
            "maximize",
            VarOptions {
                maximize: Some(true),
                ..d()
            },
        ),
        (
            "frozen",
            VarOptions {
                frozen: true,
                ..d()
            },
        ),
    ];
    all.into_iter()
        .filter(|(_, o)| o.validate("v", config).is_ok())
        .collect()
}

/// The sizes of the variables (elements) and their shapes (rows along axis 0).
const SIZES: [(usize, &[usize]); 4] = [(1, &[1]), (3, &[3]), (63, &[21, 3]), (257, &[257])];

/// Compares every variable and every slot with the twin (one read-back), and checks that the slots a
/// variable lacks in the twin are `SlotNotPresent` on the GPU.
fn check_all(opt: &mut RmsProp, ids: &[VarId], r: &Reference, label: &str) {
    let mut items = Vec::new();
    let mut expected: Vec<(String, &[f32])> = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        let s = &r.vars[k];
        let mut want = vec![Slot::Velocity];
        for (slot, values) in [
            (Slot::Velocity, Some(&s.v)),
            (Slot::Momentum, s.m.as_ref()),
            (Slot::AverageGradient, s.a.as_ref()),
        ] {
            match values {
                Some(values) => {
                    items.push((id, Tensor::Slot(slot)));
                    expected.push((format!("{label} var {k} {}", slot.name()), values));
                    if slot != Slot::Velocity {
                        want.push(slot);
                    }
                }
                None => assert!(
                    matches!(opt.read_slot(id, slot), Err(Error::SlotNotPresent { .. })),
                    "{label} var {k}: {} must not exist",
                    slot.name()
                ),
            }
        }
        assert_eq!(opt.variable_slots(id).unwrap(), want, "{label} var {k}");
        items.push((id, Tensor::Variable));
        expected.push((format!("{label} var {k} x"), &s.x));
    }
    let got = opt.read_many(&items).unwrap();
    for ((what, e), g) in expected.iter().zip(&got) {
        assert_close(what, g, e);
    }
}

/// How each size takes part in step `t`: 0 absent, 1 dense, 2 sparse.
fn part(t: usize, size_index: usize) -> u8 {
    match t {
        1 | 4 => 1,
        2 => 2,
        _ => [2, 0, 2, 1][size_index],
    }
}

/// Every option set at every size in one optimizer with `options`; several steps of dense, sparse and
/// absent gradients (the same gradients for every variable of a size, so that each option's effect can
/// be told from a variable without options); everything compared with the twin after every step.
fn every_option(label: &str, config: RmsPropConfig, options: OptimizerOptions) {
    let sets = option_sets(&config);
    let mut opt = RmsProp::with_options(ctx(), config.clone(), options).unwrap();
    let mut r = Reference::new(config.clone());
    let mut rng = Rng::new(7);
    let inits: Vec<Vec<f32>> = SIZES.iter().map(|&(n, _)| rng.vec(n, 1.0, 5)).collect();
    let mut ids = Vec::new();
    // (option set, size index) of each variable.
    let mut which = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        for (zi, &(_, shape)) in SIZES.iter().enumerate() {
            let name = format!("{}/{}", set.0, shape.iter().product::<usize>());
            ids.push(
                opt.add_variable_with(&name, shape, &inits[zi], &set.1)
                    .unwrap(),
            );
            r.add_variable_with(shape, &inits[zi], &set.1).unwrap();
            which.push((si, zi));
        }
    }
    check_all(&mut opt, &ids, &r, &format!("{label} init"));
    for t in 1..=4 {
        // One gradient per size: dense values, or sparse rows with repeats.
        let dense: Vec<Vec<f32>> = SIZES.iter().map(|&(n, _)| rng.vec(n, 2.0, 7)).collect();
        let rows: Vec<Vec<usize>> = SIZES
            .iter()
            .map(|&(_, shape)| {
                let k = shape[0].min(5) + 1;
                (0..k)
                    .map(|j| ((rng.next_f32().abs() * shape[0] as f32) as usize + j) % shape[0])
                    .collect()
            })
            .collect();
        let rows64: Vec<Vec<i64>> = rows
            .iter()
            .map(|r| r.iter().map(|&x| x as i64).collect())
            .collect();
        let values: Vec<Vec<f32>> = SIZES
            .iter()
            .zip(&rows)
            .map(|(&(n, shape), rows)| rng.vec(rows.len() * n / shape[0], 2.0, 0))
            .collect();
        let mut grads = Vec::new();
        let mut ref_grads = Vec::new();
        for (&id, &(_, zi)) in ids.iter().zip(&which) {
            match part(t, zi) {
                0 => ref_grads.push(None),
                1 => {
                    grads.push((id, Gradient::Dense(&dense[zi])));
                    ref_grads.push(Some(RefGradient::Dense(&dense[zi])));
                }
                _ => {
                    grads.push((
                        id,
                        Gradient::Sparse {
                            indices: Indices::I64(&rows64[zi]),
                            values: &values[zi],
                        },
                    ));
                    ref_grads.push(Some(RefGradient::Sparse {
                        indices: &rows[zi],
                        values: &values[zi],
                    }));
                }
            }
        }
        opt.apply(&grads).unwrap();
        r.step(&ref_grads).unwrap();
        check_all(&mut opt, &ids, &r, &format!("{label} step {t}"));
    }
    // Each option has its effect: a variable whose values differ from the configuration's ends
    // elsewhere than the variable of the same size without options; a frozen one where it started.
    let default = VarOptions::default().hyper(&config);
    for (k, &(si, zi)) in which.iter().enumerate() {
        let x = &r.vars[k].x;
        let control = &r.vars[SIZES.len() + zi].x; // "default" is the second set
        let (name, o) = &sets[si];
        if o.frozen {
            assert_eq!(x, &inits[zi], "{label}: {name} moved");
        } else if opt.variable_hyper(ids[k]).unwrap() != default && SIZES[zi].0 > 1 {
            assert_ne!(
                x, control,
                "{label}: option {name} had no effect at size {}",
                SIZES[zi].0
            );
        }
    }
}

#[test]
fn every_option_matches_the_twin_keras_lazy_with_momentum_decay_and_clipnorm() {
    let config = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.5)
        .weight_decay(0.05)
        .clipnorm(0.7)
        .build()
        .unwrap();
    let options = OptimizerOptions {
        slice_alignment: Some(256),
        max_chunk_bytes: Some(1024),
        ..OptimizerOptions::default()
    };
    every_option("keras clipnorm", config, options);
}

#[test]
fn every_option_matches_the_twin_keras_plain_with_global_clipnorm() {
    // No momentum, not centered, no decay in the configuration: options add each (pools and pipelines
    // grow as variables are added).
    let config = RmsPropConfig::builder()
        .learning_rate(0.02)
        .global_clipnorm(1.5)
        .build()
        .unwrap();
    let options = OptimizerOptions {
        max_chunk_bytes: Some(2048),
        ..OptimizerOptions::default()
    };
    every_option("keras global_clipnorm", config, options);
}

#[test]
fn every_option_matches_the_twin_torch_dense_sparse_with_clipvalue() {
    let config = RmsPropConfig::preset(Preset::Torch)
        .centered(true)
        .clipvalue(0.5)
        .build()
        .unwrap();
    let options = OptimizerOptions {
        slice_alignment: Some(256),
        max_chunk_bytes: Some(4096),
        ..OptimizerOptions::default()
    };
    every_option("torch clipvalue", config, options);
}

#[test]
fn every_option_matches_the_twin_optax_tf_raw_and_keras_legacy() {
    let optax = RmsPropConfig::preset(Preset::Optax)
        .momentum(0.9)
        .nesterov(true)
        .build()
        .unwrap();
    every_option("optax nesterov", optax, OptimizerOptions::default());
    let tf = RmsPropConfig::preset(Preset::TfRaw)
        .learning_rate(0.01)
        .build()
        .unwrap();
    let split = OptimizerOptions {
        max_chunk_bytes: Some(1024),
        ..OptimizerOptions::default()
    };
    every_option("tf_raw", tf, split);
    let legacy = RmsPropConfig::preset(Preset::KerasLegacy)
        .learning_rate(0.01)
        .momentum(0.4)
        .build()
        .unwrap();
    every_option("keras_legacy", legacy, OptimizerOptions::default());
}

/// Each option alone next to a variable without options: the kernels then read only that option's
/// fields of the table (the `VAR_OPTIONS` mask), dense and sparse.
#[test]
fn each_option_alone_matches_the_twin() {
    let configs = [
        RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.5)
            .weight_decay(0.05)
            .build()
            .unwrap(),
        RmsPropConfig::preset(Preset::Torch).build().unwrap(),
    ];
    for config in configs {
        for (name, options) in option_sets(&config) {
            let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
            let mut r = Reference::new(config.clone());
            let mut rng = Rng::new(13);
            let init = rng.vec(63, 1.0, 0);
            let ids = [
                opt.add_variable("plain", &[21, 3], &init).unwrap(),
                opt.add_variable_with("with", &[21, 3], &init, &options)
                    .unwrap(),
            ];
            r.add_variable(&[21, 3], &init);
            r.add_variable_with(&[21, 3], &init, &options).unwrap();
            for t in 0..3 {
                let g = rng.vec(63, 2.0, 7);
                let rows = [4usize, 0, 4];
                let rows64 = [4i64, 0, 4];
                let values = rng.vec(9, 2.0, 0);
                let sparse = t == 1;
                let grad = |id| match sparse {
                    true => (
                        id,
                        Gradient::Sparse {
                            indices: Indices::I64(&rows64),
                            values: &values,
                        },
                    ),
                    false => (id, Gradient::Dense(&g)),
                };
                opt.apply(&[grad(ids[0]), grad(ids[1])]).unwrap();
                let rg = match sparse {
                    true => RefGradient::Sparse {
                        indices: &rows,
                        values: &values,
                    },
                    false => RefGradient::Dense(&g),
                };
                r.step(&[Some(rg), Some(rg)]).unwrap();
                check_all(&mut opt, &ids, &r, &format!("{name} alone, step {t}"));
            }
        }
    }
}
