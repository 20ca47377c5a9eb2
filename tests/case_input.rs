//! Case files are untrusted input (issue 18): one hostile file per class in `tests/hostile/` (written
//! by `tests/hostile/make.py`), the unsupported public cases in `tests/golden/unsupported/`, and what
//! the reader, the judge, the emitter and the `Replay` session do with each.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use wgpu_rmsprop::case::{
    emit_json, escape_name, read_emitted, sanitize_file_stem, Case, CaseReport, EmitDir, Limits,
    Outcome, Replay, ReplayOptions, StepState,
};
use wgpu_rmsprop::Error;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hostile(file: &str) -> PathBuf {
    root().join("tests/hostile").join(file)
}

fn seed() -> Value {
    let text =
        std::fs::read_to_string(root().join("tests/golden/cases/keras_seed_example_1step.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The seed case changed by `f`, as text.
fn mutated(f: impl FnOnce(&mut Value)) -> String {
    let mut v = seed();
    f(&mut v);
    v.to_string()
}

fn read_error(text: &str) -> String {
    match Case::from_json(text) {
        Ok(c) => panic!("{} was accepted", c.name),
        Err(Error::InvalidCase { message, .. }) => message,
        Err(e) => panic!("not an InvalidCase: {e:?}"),
    }
}

/// A fresh, empty folder for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpu-rmsprop-case-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every file below `dir`, relative to it, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_its_path() {
    let msg = read_error(&std::fs::read_to_string(hostile("wrong_type.json")).unwrap());
    assert!(
        msg.starts_with(r#"config.rho: expected a number, got string "0.5""#),
        "{msg}"
    );
    let schedule = json!({"schedule": "ExponentialDecay", "initial_learning_rate": 0.1,
                          "decay_steps": 10, "decay_rate": 0.5, "staircase": "true"});
    // One per kind of field: number, nullable number, boolean, enum string, schedule argument,
    // string, shape, float32 array element, index, step number, learning rate, tolerance, object.
    let cases: Vec<(String, &str)> = vec![
        (
            mutated(|v| v["config"]["momentum"] = json!(true)),
            "config.momentum: expected a number, got boolean `true`",
        ),
        (
            mutated(|v| v["config"]["epsilon"] = json!("1e-7")),
            r#"config.epsilon: expected a number, got string "1e-7""#,
        ),
        (
            mutated(|v| v["config"]["clipnorm"] = json!("1.0")),
            r#"config.clipnorm: expected a number or null, got string "1.0""#,
        ),
        (
            mutated(|v| v["config"]["weight_decay"] = json!([0.1])),
            "config.weight_decay: expected a number or null, got sequence",
        ),
        (
            mutated(|v| v["config"]["centered"] = json!("false")),
            r#"config.centered: expected a boolean, got string "false""#,
        ),
        (
            mutated(|v| v["config"]["maximize"] = json!(1)),
            "config.maximize: expected a boolean, got integer `1`",
        ),
        (
            mutated(|v| v["config"]["sparse_mode"] = json!(["lazy"])),
            "config.sparse_mode: expected a string, got sequence",
        ),
        (
            mutated(|v| v["config"]["learning_rate"] = json!("0.1")),
            r#"config.learning_rate: expected a number or a schedule object, got string "0.1""#,
        ),
        (
            mutated(|v| v["config"]["learning_rate"] = schedule),
            r#"config.learning_rate.staircase: expected a boolean, got string "true""#,
        ),
        (
            mutated(|v| v["name"] = json!(5)),
            "name: expected a string, got integer `5`",
        ),
        (
            mutated(|v| v["variables"][0]["shape"] = json!("[]")),
            "variables[0].shape: expected a list of non-negative integers, got string",
        ),
        (
            mutated(|v| v["variables"][0]["shape"] = json!([-1])),
            "variables[0].shape[0]: expected a non-negative integer, got integer `-1`",
        ),
        (
            mutated(|v| v["variables"][0]["init"] = json!(["10"])),
            r#"variables[0].init[0]: expected a number, "NaN", "Infinity" or "-Infinity", got string "10""#,
        ),
        (
            mutated(|v| v["variables"][0]["init"] = json!([1e39])),
            "variables[0].init[0]: expected a number within the float32 range",
        ),
        (
            mutated(|v| v["steps"][0]["grads"][0]["values"] = json!([true])),
            "steps[0].grads[0].values[0]: expected a number",
        ),
        (
            mutated(|v| {
                v["variables"][0] = json!({"name": "t", "shape": [2], "init": [0, 0]});
                v["steps"][0]["grads"][0] =
                    json!({"kind": "sparse", "indices": [0.5], "values": [1, 1]});
                v.as_object_mut().unwrap().remove("expected");
            }),
            "steps[0].grads[0].indices[0]: expected an integer, got floating point `0.5`",
        ),
        (
            mutated(|v| v["expected"][0]["step"] = json!("1")),
            r#"expected[0].step: expected a non-negative integer, got string "1""#,
        ),
        (
            mutated(|v| v["expected"][0]["learning_rate"] = json!(false)),
            "expected[0].learning_rate: expected a number",
        ),
        (
            mutated(|v| v["tolerance"]["rtol"] = json!("1e-5")),
            r#"tolerance.rtol: expected a number, got string "1e-5""#,
        ),
        (
            mutated(|v| v["variables"][0] = json!(["w0", [], [10]])),
            "variables[0]: expected an object, got sequence",
        ),
        (
            mutated(|v| v["steps"][0]["grads"][0]["kind"] = json!("diagonal")),
            "steps[0].grads[0]: unknown gradient kind \"diagonal\"",
        ),
    ];
    for (text, needle) in cases {
        let msg = read_error(&text);
        assert!(msg.starts_with(needle), "wanted {needle:?}, got {msg:?}");
    }
}

#[test]
fn null_or_missing_where_a_value_is_required_is_an_error() {
    let cases: Vec<(String, &str)> = vec![
        (
            mutated(|v| v["config"]["learning_rate"] = Value::Null),
            "config.learning_rate: expected a number or a schedule object, got null",
        ),
        (
            mutated(|v| v["config"]["rho"] = Value::Null),
            "config.rho: expected a number, got null",
        ),
        (
            mutated(|v| v["config"]["centered"] = Value::Null),
            "config.centered: expected a boolean, got null",
        ),
        (
            mutated(|v| v["config"]["sparse_mode"] = Value::Null),
            "config.sparse_mode: expected a string, got null",
        ),
        (
            mutated(|v| v["expected"] = Value::Null),
            "expected: expected a sequence, got null",
        ),
        (
            mutated(|v| {
                v["config"].as_object_mut().unwrap().remove("clipnorm");
            }),
            "config.clipnorm: missing (required)",
        ),
        (
            mutated(|v| {
                v.as_object_mut().unwrap().remove("format");
            }),
            "format: missing (required)",
        ),
        (
            mutated(|v| {
                v.as_object_mut().unwrap().remove("dtype");
            }),
            "dtype: missing (required)",
        ),
        (
            mutated(|v| v["dtype"] = json!("float64")),
            "dtype: unknown type \"float64\"",
        ),
        (
            mutated(|v| {
                v["variables"][0] = json!({"name": "t", "shape": [2], "init": [0, 0]});
                v["steps"][0]["grads"][0] =
                    json!({"kind": "sparse", "indices": [1], "values": [1]});
                v["config"]["sparse_mode"] = json!("lazy");
                v.as_object_mut().unwrap().remove("expected");
            }),
            "config.duplicate_indices: missing (required with sparse steps)",
        ),
    ];
    for (text, needle) in cases {
        let msg = read_error(&text);
        assert!(msg.starts_with(needle), "wanted {needle:?}, got {msg:?}");
    }
}

#[test]
fn an_unknown_key_at_any_level_is_an_error() {
    let msg = read_error(&std::fs::read_to_string(hostile("unknown_key.json")).unwrap());
    assert!(
        msg.starts_with("config.rho_typo: unknown key (known keys: `learning_rate`"),
        "{msg}"
    );
    let cases: Vec<(String, &str)> =
        vec![
        (mutated(|v| v["comment"] = json!("hi")), "comment: unknown key"),
        (
            mutated(|v| {
                v["config"]["learning_rate"] = json!({"schedule": "ExponentialDecay",
                    "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5,
                    "name": "ExponentialDecay"})
            }),
            "config.learning_rate.name: unknown key",
        ),
        (
            mutated(|v| {
                v["config"]["learning_rate"] = json!({"schedule": "ExponentialDecay",
                    "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5,
                    "cycle": true})
            }),
            "config.learning_rate: schedule ExponentialDecay: `cycle` is not one of its arguments",
        ),
        (
            mutated(|v| v["variables"][0]["trainable"] = json!(true)),
            "variables[0].trainable: unknown key",
        ),
        (
            mutated(|v| v["variables"][0]["overrides"] = json!({"lr": 0.1})),
            "variables[0].overrides.lr: unknown key",
        ),
        (
            mutated(|v| v["steps"][0]["loss"] = json!(1.0)),
            "steps[0].loss: unknown key",
        ),
        (
            mutated(|v| v["steps"][0]["grads"][0]["scale"] = json!(1.0)),
            "steps[0].grads[0].scale: unknown key",
        ),
        (
            mutated(|v| v["expected"][0]["loss"] = json!(1.0)),
            "expected[0].loss: unknown key",
        ),
        (
            mutated(|v| v["expected"][0]["slots"]["rms"] = json!([[1.0]])),
            "expected[0].slots: unknown slot \"rms\"",
        ),
        (
            mutated(|v| v["tolerance"]["ulps"] = json!(4)),
            "tolerance.ulps: unknown key",
        ),
        (
            mutated(|v| v["tolerance"]["variables"] = json!({"rtol": 0, "atol": 0, "x": 1})),
            "tolerance.variables.x: unknown key",
        ),
    ];
    for (text, needle) in cases {
        let msg = read_error(&text);
        assert!(msg.starts_with(needle), "wanted {needle:?}, got {msg:?}");
    }
    // The per-quantity tolerance and null slot entries of FORMAT.md's Additions are known keys.
    let text = mutated(|v| {
        v["tolerance"]["variables"] = json!({"rtol": 1e-5, "atol": 1e-7});
        v["tolerance"]["slots"] = json!({"velocity": {"rtol": 1e-5, "atol": 1e-7}});
    });
    let case = Case::from_json(&text).unwrap();
    assert_eq!(case.tolerance.for_slot("velocity").atol, 1e-7);
    assert_eq!(
        case.tolerance.for_slot("momentum").atol,
        case.tolerance.atol
    );
}

#[test]
fn reduced_precision_cases_are_supported_except_with_the_keras_base_features() {
    // The 15 float16/bfloat16 public cases are supported (tests/golden.rs runs them on the GPU and judges
    // the CPU reference on them).
    let mut n = 0;
    for dir in ["tests/golden/cases"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let case = Case::from_path(&path).unwrap_or_else(|e| panic!("{stem}: {e}"));
            if case.dtype == "float32" {
                continue;
            }
            assert!(
                stem.starts_with("f16_") || stem.starts_with("bf16_"),
                "{stem}: no rule"
            );
            assert_eq!(case.unsupported(), None, "{stem}");
            n += 1;
        }
    }
    assert_eq!(n, 15, "the 15 reduced-precision public cases");
    // What is left unsupported: a 16-bit case with a Keras base-class feature, named by its keys.
    let case = Case::from_path(&hostile("unsupported_feature.json")).unwrap();
    assert_eq!(
        case.unsupported().unwrap(),
        "dtype \"float16\" with use_ema (the Keras base-class features are float32 only)"
    );
    assert!(matches!(
        case.run_reference(),
        Err(Error::Unsupported { .. })
    ));
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(hostile("unsupported_feature.json")).unwrap(),
    )
    .unwrap();
    v["config"]["use_ema"] = json!(false);
    v["config"]["gradient_accumulation_steps"] = json!(2);
    v["config"]["loss_scale_factor"] = json!(4.0);
    let what = Case::from_json(&v.to_string())
        .unwrap()
        .unsupported()
        .unwrap();
    assert!(
        what.contains("with gradient_accumulation_steps, loss_scale_factor"),
        "{what}"
    );
    // Values are rounded to the type when read; one beyond its range is an error.
    let obj = v["config"].as_object_mut().unwrap();
    obj.remove("gradient_accumulation_steps");
    obj.remove("loss_scale_factor");
    v["variables"][0]["init"] = json!([0.1]);
    let case = Case::from_json(&v.to_string()).unwrap();
    assert_eq!(case.variables[0].init, vec![0.099975586]);
    assert_eq!(case.unsupported(), None);
    v["variables"][0]["init"] = json!([70000.0]);
    let msg = Case::from_json(&v.to_string()).unwrap_err().to_string();
    assert!(
        msg.contains("variables[0].init[0]: 70000 is beyond the range of float16"),
        "{msg}"
    );
    // Reading them is still strict: a wrong type inside an unsupported feature is an error.
    let msg = read_error(&mutated(|v| v["config"]["use_ema"] = json!("yes")));
    assert!(
        msg.starts_with("config.use_ema: expected a boolean"),
        "{msg}"
    );
}

#[test]
fn file_names_are_sanitized_unique_and_inside_the_folder() {
    let long = "x".repeat(300);
    let names = [
        "../../escaped/outside",
        "/etc/passwd",
        "",
        ".",
        "..",
        ".hidden",
        "-rf",
        "a\0b",
        "a/b",
        "a_b",
        "A_B",
        "con",
        "caf\u{e9}",
        long.as_str(),
        "keras_plain",
    ];
    let dir = temp_dir("names");
    let mut emit = EmitDir::create(&dir.join("out")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let stem = sanitize_file_stem(name);
        assert!(
            !stem.is_empty()
                && stem.len() <= 120
                && !stem.starts_with(['.', '-'])
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
            "{name:?} -> {stem:?}"
        );
        let t = emit.reserve(name).unwrap();
        assert_eq!(t.path.parent(), Some(emit.path()), "{name:?}");
        assert!(
            seen.insert(t.file_name.to_lowercase()),
            "{name:?} -> {}",
            t.file_name
        );
        // Kept as they are: plain names not taken before (`A_B` collides with `a_b` on a file system
        // that ignores case).
        assert_eq!(
            t.renamed,
            !["a_b", "keras_plain"].contains(&name),
            "{name:?}"
        );
    }
    assert_eq!(sanitize_file_stem("keras_plain"), "keras_plain");
    // The same sanitized stem twice in one run is disambiguated, not overwritten.
    let again = emit.reserve("keras_plain").unwrap();
    assert_eq!(again.file_name, "keras_plain-2.json");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn printed_names_are_escaped_to_one_token() {
    assert_eq!(escape_name("keras_plain"), "keras_plain");
    assert_eq!(escape_name(""), "\"\"");
    assert_eq!(
        escape_name("a\nPASS b\r\u{1b}[32m\\\"\u{202e}"),
        "a\\nPASS\\u{20}b\\r\\u{1b}[32m\\\\\\\"\\u{202e}"
    );
    let case = Case::from_path(&hostile("forged_name.json")).unwrap();
    let rep = CaseReport {
        name: case.name.clone(),
        outcome: Outcome::Error("bad\nPASS x\u{1b}[0m".into()),
        emitted: None,
        notes: Vec::new(),
    };
    let line = rep.line();
    assert!(!line.contains(['\n', '\r', '\u{1b}']), "{line:?}");
    assert!(
        line.starts_with("ERROR real\\nPASS\\u{20}forged\\u{20}max_abs=0.000e0"),
        "{line}"
    );
    assert!(line.ends_with(": bad\\nPASS x\\u{1b}[0m"), "{line}");
}

#[test]
fn a_case_over_the_memory_budget_is_an_error_before_it_is_allocated() {
    let path = hostile("huge_steps.json");
    let size = std::fs::metadata(&path).unwrap().len();
    // The text alone: a budget whose parse allowance is below the file's size refuses to read it.
    let small = Limits::new(size * 16 - 16);
    let msg = Case::from_path_limited(&path, &small)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("memory budget"), "{msg}");
    // Read under a budget that allows it: keeping every step's state (1000 steps of a 256 x 16 table
    // with momentum, about 49 MB) is over 8 MiB, a streaming run is far below.
    let budget = Limits::new(8 << 20);
    let case = Case::from_path_limited(&path, &budget).unwrap();
    assert!(case.memory_estimate(true) > budget.memory_bytes);
    assert!(case.memory_estimate(false) < budget.memory_bytes / 8);
    let msg = case.check_budget(&budget, true).unwrap_err().to_string();
    assert!(
        msg.contains("over the memory budget of 8388608 bytes"),
        "{msg}"
    );
    let mut steps = 0;
    case.run_reference_streaming(&budget, &mut |s| {
        steps += 1;
        assert_eq!(s.step, steps);
        Ok(())
    })
    .unwrap();
    assert_eq!(steps, 1000);
    // A case whose state alone is over the budget: refused before the optimizer exists.
    let big = mutated(|v| {
        let n = 60_000;
        v["config"]["momentum"] = json!(0.9);
        v["config"]["centered"] = json!(true);
        v["config"]["sparse_mode"] = json!("dense");
        v["config"]["duplicate_indices"] = json!("keras3");
        v["variables"][0] = json!({"name": "w", "shape": [n], "init": vec![0; n]});
        v["steps"][0]["grads"][0] = json!({"kind": "sparse", "indices": [], "values": []});
        v.as_object_mut().unwrap().remove("expected");
    });
    let budget = Limits::new(2 << 20);
    let case = Case::from_json_limited(&big, &budget).unwrap();
    let msg = case
        .run_reference_streaming(&budget, &mut |_| panic!("must not run"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("over the memory budget"), "{msg}");
    // Shapes whose element count overflows are errors, not panics.
    let msg = read_error(&mutated(|v| {
        v["variables"][0]["shape"] = json!([u64::MAX, 3]);
    }));
    assert!(
        msg.contains("more elements than this machine can index"),
        "{msg}"
    );
}

fn same_bits(a: &[StepState], b: &[StepState]) -> bool {
    let bits = |s: &[StepState]| -> Vec<Vec<u32>> {
        s.iter()
            .flat_map(|s| {
                s.variables
                    .iter()
                    .chain(s.slots.values().flatten().flatten())
            })
            .map(|v| {
                v.iter()
                    // NaN payloads need not survive a round trip; NaN-ness must.
                    .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
                    .collect()
            })
            .collect()
    };
    bits(a) == bits(b)
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.step == y.step && x.learning_rate == y.learning_rate)
}

#[test]
fn non_finite_numbers_are_written_as_strings_and_read_back() {
    let case = Case::from_path(&hostile("nonfinite.json")).unwrap();
    assert!(case.variables[0].init[2] == f32::NEG_INFINITY);
    let states = case.run_reference().unwrap();
    let x = &states[0].variables[0];
    assert!(
        x[0].is_nan() && x[2] == f32::NEG_INFINITY && x[3].is_nan(),
        "{x:?}"
    );
    assert_eq!(
        states[0].slots["velocity"][0].as_ref().unwrap()[3],
        f32::INFINITY
    );
    // The expected state holds the same non-finite values: they match.
    let v = case.judge(&states).unwrap();
    assert!(v.pass, "{v:?}");
    let text = emit_json(&case.name, &states);
    for s in ["\"NaN\"", "\"Infinity\"", "\"-Infinity\""] {
        assert!(text.contains(s), "{s} in {text}");
    }
    assert!(!text.contains("null"), "{text}");
    let back = read_emitted(&text).unwrap();
    assert_eq!(back.name, case.name);
    assert!(same_bits(&back.expected, &states));
    // A finite expectation is not met by a non-finite result, nor the other way round.
    let mut wrong = states.clone();
    wrong[0].variables[0][1] = f32::NAN;
    assert!(!case.judge(&wrong).unwrap().pass);
    let mut wrong = states.clone();
    wrong[0].variables[0][2] = f32::INFINITY;
    assert!(!case.judge(&wrong).unwrap().pass);
    // Results from before (non-finite written as null) are refused, not read as numbers.
    let old = text.replacen("\"NaN\"", "null", 1);
    assert!(read_emitted(&old).is_err());
}

#[test]
fn expected_step_and_learning_rate_are_compared() {
    let judge = |file: &str| {
        let case = Case::from_path(&hostile(file)).unwrap();
        let states = case.run_reference().unwrap();
        case.judge(&states).unwrap()
    };
    let v = judge("step_mismatch.json");
    assert!(!v.pass);
    assert_eq!(
        v.worst.as_deref(),
        Some("expected[0].step is 2, the optimizer reports step 1")
    );
    let v = judge("lr_mismatch.json");
    assert!(!v.pass);
    assert!(
        v.worst
            .as_deref()
            .unwrap()
            .starts_with("step 1 learning_rate: expected 0.1001"),
        "{v:?}"
    );
    // A null slot entry: accepted, nothing compared (no momentum is kept here).
    let v = judge("null_slot.json");
    assert!(v.pass, "{v:?}");
    let case = Case::from_path(&hostile("null_slot.json")).unwrap();
    assert_eq!(
        case.expected.as_ref().unwrap()[0].slots["momentum"],
        vec![None]
    );
}

#[test]
fn a_tiny_epsilon_survives_the_checkpoint_round_trip() {
    let case = Case::from_path(&hostile("epsilon_tiny.json")).unwrap();
    assert_eq!(case.config.epsilon, 1e-30);
    let straight = case.run_gpu(common::ctx()).unwrap();
    let dir = temp_dir("eps");
    let file = dir.join("ckpt.safetensors");
    let resumed = case
        .run_gpu_resumed(common::ctx(), Some((3, &file)))
        .unwrap();
    assert!(same_bits(&straight, &resumed));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One `Replay` over every hostile class, with `--emit` and `--resume-at` (issue 18's check): nothing
/// written outside the folder, one escaped line per case, the right outcome for each, good cases
/// after bad ones still pass.
#[test]
fn a_replay_over_hostile_cases_stays_in_its_folder_and_reports_each() {
    let top = temp_dir("replay");
    let inputs = top.join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    // Name variants of the path-escape class, written next to the hostile files.
    let abs = top.join("absolute").display().to_string();
    let variants = [
        ("escape_absolute", abs.clone()),
        ("escape_empty", String::new()),
        ("escape_nul", "a\0b".to_string()),
        ("escape_long", "y".repeat(300)),
        ("escape_dots", "..".to_string()),
    ];
    let mut paths: Vec<PathBuf> = Vec::new();
    for (file, name) in &variants {
        let p = inputs.join(format!("{file}.json"));
        std::fs::write(&p, mutated(|v| v["name"] = json!(name))).unwrap();
        paths.push(p);
    }
    for f in [
        "path_escape.json",
        "wrong_type.json",
        "unknown_key.json",
        "unsupported_feature.json",
        "forged_name.json",
        "duplicate_a.json",
        "duplicate_b.json",
        "epsilon_tiny.json",
        "nonfinite.json",
        "step_mismatch.json",
        "lr_mismatch.json",
        "null_slot.json",
    ] {
        paths.push(hostile(f));
    }
    paths.push(root().join("tests/golden/cases/keras_centered_momentum.json"));
    let out = top.join("out");
    let options = ReplayOptions {
        emit: Some(out.clone()),
        resume_at: Some(1),
        limits: Limits::default(),
        ..ReplayOptions::default()
    };
    let mut replay = Replay::new(common::ctx(), options).unwrap();
    let reports: Vec<CaseReport> = paths.iter().map(|p| replay.run_path(p)).collect();
    drop(replay);
    let lines: Vec<String> = reports.iter().map(CaseReport::line).collect();
    for l in &lines {
        assert!(!l.contains(['\n', '\r', '\u{1b}']), "{l:?}");
    }
    let status = |i: usize| lines[i].split(' ').next().unwrap().to_string();
    let want = [
        "PASS",
        "PASS",
        "PASS",
        "PASS",
        "PASS", // the name variants (seed case, correct)
        "PASS",
        "ERROR",
        "ERROR",
        "UNSUPPORTED",
        "FAIL",
        "PASS",
        "ERROR",
        "RAN",
        "PASS",
        "FAIL",
        "FAIL",
        "PASS",
        "PASS",
    ];
    let got: Vec<String> = (0..lines.len()).map(status).collect();
    assert_eq!(got, want, "{lines:#?}");
    assert!(lines[11].contains("duplicate name"), "{}", lines[11]);
    assert!(
        lines[17].starts_with("PASS keras_centered_momentum "),
        "{}",
        lines[17]
    );
    // Only the inputs and the emitted files exist; every emitted file is directly in `out`.
    let mut expected_files: Vec<String> = variants
        .iter()
        .map(|(f, _)| format!("in/{f}.json"))
        .collect();
    for r in &reports {
        if let Some(p) = &r.emitted {
            assert_eq!(p.parent().unwrap(), out.canonicalize().unwrap());
            expected_files.push(format!("out/{}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    expected_files.sort();
    assert_eq!(files_below(&top), expected_files);
    assert!(!Path::new(&abs).exists());
    // Sanitized names are shown on the line; plain names are not.
    assert!(lines[0].contains(" emitted=_"), "{}", lines[0]);
    assert!(!lines[17].contains("emitted="), "{}", lines[17]);
    // The first of the two same-named cases keeps its file, with its own results.
    let dup =
        read_emitted(&std::fs::read_to_string(out.join("duplicate_name.json")).unwrap()).unwrap();
    let first = Case::from_path(&hostile("duplicate_a.json")).unwrap();
    assert!(same_bits(&dup.expected, &first.run_reference().unwrap()));
    // The emitted non-finite results read back; a case that errored left no file.
    let nf = read_emitted(&std::fs::read_to_string(out.join("nonfinite.json")).unwrap()).unwrap();
    assert!(nf.expected[0].variables[0][0].is_nan());
    assert!(!out.join("wrong_type.json").exists());
    std::fs::remove_dir_all(&top).unwrap();
}

#[test]
fn many_steps_stream_through_a_small_budget() {
    let dir = temp_dir("stream");
    let options = ReplayOptions {
        emit: Some(dir.clone()),
        resume_at: None,
        limits: Limits::new(8 << 20),
        ..ReplayOptions::default()
    };
    let mut replay = Replay::new(common::ctx(), options).unwrap();
    let rep = replay.run_path(&hostile("huge_steps.json"));
    assert_eq!(rep.line(), "RAN huge_steps");
    let good = replay.run_path(&root().join("tests/golden/cases/keras_seed_example_1step.json"));
    assert!(good.line().starts_with("PASS "), "{}", good.line());
    drop(replay);
    let back =
        read_emitted(&std::fs::read_to_string(dir.join("huge_steps.json")).unwrap()).unwrap();
    assert_eq!(back.expected.len(), 1000);
    assert_eq!(back.expected[999].step, 1000);
    // Under a budget too small for the case, it is an error and the next case still runs.
    let options = ReplayOptions {
        limits: Limits::new(256 << 10),
        ..ReplayOptions::default()
    };
    let mut replay = Replay::new(common::ctx(), options).unwrap();
    let rep = replay.run_path(&hostile("huge_steps.json"));
    assert!(
        rep.line().starts_with("ERROR huge_steps: "),
        "{}",
        rep.line()
    );
    assert!(rep.line().contains("memory budget"), "{}", rep.line());
    let good = replay.run_path(&root().join("tests/golden/cases/keras_seed_example_1step.json"));
    assert!(good.line().starts_with("PASS "), "{}", good.line());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `replay` example itself, as issue 18 checks it: flags, exit status, one line per case on
/// stdout, files only in the `--emit` folder.
#[test]
fn the_replay_example_prints_one_line_per_case_and_writes_only_in_its_folder() {
    let top = temp_dir("example");
    let out = top.join("out");
    let files = [
        "forged_name.json",
        "path_escape.json",
        "wrong_type.json",
        "huge_steps.json",
        "duplicate_a.json",
        "duplicate_b.json",
        "epsilon_tiny.json",
    ];
    let mut paths: Vec<PathBuf> = files.iter().map(|f| hostile(f)).collect();
    // A good case after the bad ones, small enough for the budget, resumed after step 2.
    paths.push(root().join("tests/golden/cases/keras_seed_example_20steps.json"));
    let run = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", "replay", "--"])
        .arg("--emit")
        .arg(&out)
        .args(["--resume-at", "2", "--memory-budget", "512K"])
        .args(&paths)
        .current_dir(root())
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8(run.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), paths.len(), "{stdout}");
    let status: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        status,
        ["FAIL", "PASS", "ERROR", "ERROR", "PASS", "ERROR", "RAN", "PASS"],
        "{stdout}"
    );
    assert!(
        lines[0].starts_with("FAIL real\\nPASS\\u{20}forged"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("emitted=_.._.._escaped_outside-"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("not-resumed(resume-at 2, the case has 1 steps)"),
        "{}",
        lines[1]
    );
    assert!(
        lines[3].contains("memory budget of 524288 bytes"),
        "{}",
        lines[3]
    );
    assert!(lines[5].contains("duplicate name"), "{}", lines[5]);
    assert_eq!(lines[6], "RAN epsilon_tiny");
    assert!(
        lines[7].starts_with("PASS keras_seed_example_20steps max_abs="),
        "{}",
        lines[7]
    );
    let mut written = files_below(&top);
    written.retain(|f| !f.starts_with("out/"));
    assert!(written.is_empty(), "outside the folder: {written:?}");
    let emitted = files_below(&out);
    assert_eq!(emitted.len(), 5, "{emitted:?}");
    assert!(emitted.contains(&"epsilon_tiny.json".to_string()));
    std::fs::remove_dir_all(&top).unwrap();
}
