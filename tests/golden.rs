//! The public golden cases (copied from the conformance set into tests/golden/cases): every case whose
//! features the crate has must pass on the GPU and on the CPU reference; the rest must say what is
//! missing (UNSUPPORTED), never fail silently.

mod common;

use std::path::PathBuf;

use wgpu_rmsprop::case::{Case, CaseGradient};

fn cases() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let all: Vec<Case> = paths.iter().map(|p| Case::from_path(p).unwrap()).collect();
    // The 77 float32 public cases and the 15 float16/bfloat16 ones.
    assert_eq!(
        all.iter().filter(|c| c.dtype == "float32").count(),
        77,
        "the 77 float32 public cases are in {}",
        dir.display()
    );
    assert_eq!(
        all.iter().filter(|c| c.dtype != "float32").count(),
        15,
        "the 15 float16/bfloat16 public cases are in {}",
        dir.display()
    );
    all
}

#[test]
fn every_case_passes_on_the_gpu_and_the_reference() {
    let ctx = common::ctx();
    let all = cases();
    for case in &all {
        assert_eq!(case.unsupported(), None, "{} must be supported", case.name);
        let gpu = case.run_gpu(ctx).unwrap();
        let v = case.judge(&gpu).unwrap();
        assert!(v.pass, "{} on the GPU: {:?}", case.name, v);
        let cpu = case.run_reference().unwrap();
        let v = case.judge(&cpu).unwrap();
        assert!(v.pass, "{} on the reference: {:?}", case.name, v);
        // The learning rate reported for every step matches the case's (schedules included).
        for (a, e) in gpu.iter().zip(case.expected.as_ref().unwrap()) {
            let (a, e) = (a.learning_rate.unwrap(), e.learning_rate.unwrap());
            assert!(
                (a - e).abs() <= 1e-6 * e.abs(),
                "{} step lr {a} vs {e}",
                case.name
            );
        }
    }
    // Every semantics and both gradient kinds are covered.
    for sem in ["keras", "keras_legacy", "tf_raw", "tf1", "torch", "optax"] {
        assert!(all.iter().any(|c| c.semantics == sem), "{sem}");
    }
    let sparse = |c: &Case| {
        c.steps
            .iter()
            .flat_map(|s| &s.grads)
            .any(|g| matches!(g, CaseGradient::Sparse { .. }))
    };
    assert!(all.iter().filter(|c| sparse(c)).count() >= 17);
}

/// The float16/bfloat16 cases (FORMAT.md, "Reduced precision") in `tests/golden/cases`.
fn reduced_precision_cases() -> Vec<Case> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut paths: Vec<_> = ["cases"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let all: Vec<Case> = paths.iter().map(|p| Case::from_path(p).unwrap()).collect();
    all.into_iter().filter(|c| c.dtype != "float32").collect()
}

#[test]
fn the_twin_meets_every_reduced_precision_case() {
    let all = reduced_precision_cases();
    assert_eq!(all.len(), 15, "the 15 float16/bfloat16 public cases");
    for case in &all {
        assert_eq!(case.unsupported(), None, "{} must be supported", case.name);
        let states = case.run_reference().unwrap();
        let v = case.judge(&states).unwrap();
        assert!(v.pass, "{} on the reference: {:?}", case.name, v);
        // Every stored value is a value of the type.
        let d = case.element_type();
        for s in &states {
            let slots = s.slots.values().flatten().flatten();
            for x in s.variables.iter().chain(slots).flatten() {
                assert_eq!(d.round(*x).to_bits(), x.to_bits(), "{}", case.name);
            }
        }
    }
    for dtype in ["float16", "bfloat16"] {
        assert!(all.iter().any(|c| c.dtype == dtype), "{dtype}");
    }
}

#[test]
fn the_judge_catches_an_error_just_past_tolerance() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "keras_centered_momentum")
        .unwrap();
    let mut states = case.run_reference().unwrap();
    assert!(case.judge(&states).unwrap().pass);
    let e = case.expected.as_ref().unwrap()[4].slots["momentum"][0]
        .as_ref()
        .unwrap()[0];
    let allowed = case.tolerance.atol + case.tolerance.rtol * f64::from(e).abs();
    states[4].slots.get_mut("momentum").unwrap()[0]
        .as_mut()
        .unwrap()[0] = (f64::from(e) + 1.5 * allowed) as f32;
    let v = case.judge(&states).unwrap();
    assert!(!v.pass, "{v:?}");
    assert!(v.worst.unwrap().contains("step 5 momentum"));
}

#[test]
fn malformed_cases_are_errors_not_panics() {
    let good = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/cases/keras_seed_example_1step.json"),
    )
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["variables"][0]["init"] = serde_json::json!([1.0, 2.0]);
    let err = Case::from_json(&v.to_string()).unwrap_err().to_string();
    assert!(err.contains("init has 2"), "{err}");
    assert!(Case::from_json("{").is_err());
    // Invalid cases: each is an error that names what is wrong (replay prints it as ERROR and goes on).
    let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        v.to_string()
    };
    let bad: Vec<(String, &str)> = vec![
        (
            mutate(&|v| v["semantics"] = "caffe".into()),
            "unknown semantics",
        ),
        (
            mutate(&|v| v["config"]["rho"] = 1.5.into()),
            "`rho` must be in [0, 1)",
        ),
        (
            mutate(&|v| v["config"]["learning_rate"] = serde_json::json!({"schedule": "Wobbly"})),
            "unknown schedule",
        ),
        (
            mutate(&|v| v["steps"][0]["grads"] = serde_json::json!([])),
            "0 gradients for 1 variables",
        ),
        (
            mutate(&|v| {
                v["variables"][0]["shape"] = serde_json::json!([1]);
                v["steps"][0]["grads"][0] =
                    serde_json::json!({"kind": "sparse", "indices": [-1], "values": [1.0]});
            }),
            "index -1",
        ),
        (
            mutate(&|v| {
                v["steps"][0]["grads"][0] =
                    serde_json::json!({"kind": "dense", "values": [1.0, 2.0]})
            }),
            "has 2 values",
        ),
        (
            mutate(&|v| v["config"]["sparse_mode"] = "eager".into()),
            "unknown sparse_mode",
        ),
        (mutate(&|v| v["format"] = "rmsprop-case/9".into()), "format"),
    ];
    // A 16-bit case with a Keras base-class feature is reported as unsupported (replay: UNSUPPORTED),
    // not run.
    let f16 = Case::from_json(&mutate(&|v| {
        v["dtype"] = "float16".into();
        v["config"]["loss_scale_factor"] = 2.0.into();
    }))
    .unwrap();
    assert!(f16.unsupported().unwrap().contains("float16"));
    assert!(matches!(
        f16.run_reference(),
        Err(wgpu_rmsprop::Error::Unsupported { .. })
    ));
    for (text, needle) in bad {
        let err = Case::from_json(&text).and_then(|c| c.optimizer_config().map(|_| ()));
        let msg = err.expect_err(needle).to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    assert!(Case::from_json(&good[..good.len() / 2]).is_err());
}

#[test]
fn dense_mode_sparse_cases_pass_with_lazy_exact_rows() {
    // `replay --sparse-mode lazy-exact`: the cases recorded in sparse mode dense, run with lazy rows
    // caught up in closed form, on the GPU and the twin, judged against the same expected values.
    let ctx = common::ctx();
    let mut count = 0;
    for mut case in cases() {
        let sparse = case
            .steps
            .iter()
            .flat_map(|s| &s.grads)
            .any(|g| matches!(g, CaseGradient::Sparse { .. }));
        let dense_mode = case
            .optimizer_config()
            .is_ok_and(|c| c.sparse_mode() == wgpu_rmsprop::SparseMode::Dense);
        if !(sparse && dense_mode) {
            continue;
        }
        case.config.lazy_exact = true;
        let c = case.optimizer_config().unwrap();
        assert_eq!(c.sparse_mode(), wgpu_rmsprop::SparseMode::LazyExact);
        let v = case.judge(&case.run_gpu(ctx).unwrap()).unwrap();
        assert!(v.pass, "{} on the GPU: {:?}", case.name, v);
        let v = case.judge(&case.run_reference().unwrap()).unwrap();
        assert!(v.pass, "{} on the reference: {:?}", case.name, v);
        count += 1;
    }
    assert_eq!(count, 12, "the dense-mode sparse cases");
}
