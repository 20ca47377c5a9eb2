//! The examples run end to end and learn: the `train` MLP's loss falls over a few epochs and its plot is
//! written; the `embeddings` factorization's loss falls with lazy sparse updates; the `precision` study
//! (CPU only) finds round-once storage closer to exact arithmetic than the frameworks; `--dtype` reaches
//! the final line; unknown options and malformed values exit with status 2.

use std::process::Command;

fn run_example(name: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn train_example_loss_falls_and_plot_is_written() {
    let plot = std::env::temp_dir().join(format!("train-{}.png", std::process::id()));
    let out = run_example(
        "train",
        &["--epochs", "4", "--plot", plot.to_str().unwrap()],
    );
    let losses: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 4, "{out}");
    assert!(
        losses[3] < losses[0] * 0.6,
        "train loss must fall: {losses:?}"
    );
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("final: epochs=4 "), "{last}");
    assert!(field(last, "test_accuracy") > 0.8, "{last}");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::remove_file(&plot).unwrap();
}

#[test]
fn train_example_evaluates_the_moving_average_of_the_weights() {
    let plot = std::env::temp_dir().join(format!("train-ema-{}.png", std::process::id()));
    let out = run_example(
        "train",
        &[
            "--epochs",
            "4",
            "--ema",
            "0.99",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("final: epochs=4 "), "{last}");
    assert!(field(last, "test_accuracy") > 0.8, "{last}");
    let ema = field(last, "ema_test_accuracy");
    assert!(ema > 0.5 && ema <= 1.0, "{last}");
    std::fs::remove_file(&plot).unwrap();
}

#[test]
fn embeddings_example_loss_falls_with_lazy_sparse_updates() {
    let out = run_example(
        "embeddings",
        &["--steps", "600", "--users", "500", "--items", "100"],
    );
    let last = out.lines().last().unwrap();
    let (first, final_loss) = (field(last, "first_loss"), field(last, "last_loss"));
    assert!(final_loss < first * 0.1, "loss must fall: {last}");
}

#[test]
fn embeddings_example_with_a_rowwise_velocity_learns_with_16x_less_velocity() {
    let args = ["--steps", "600", "--users", "500", "--items", "100"];
    let element = run_example("embeddings", &args);
    let rowwise = run_example("embeddings", &[&args[..], &["--rowwise"]].concat());
    let (a, b) = (
        element.lines().last().unwrap(),
        rowwise.lines().last().unwrap(),
    );
    assert!(a.contains(" velocity=element "), "{a}");
    assert!(b.contains(" velocity=rowwise "), "{b}");
    // One velocity per 16-element row (the element-wise pool rounds up to 64 KiB, the row buffer to
    // its doubling).
    assert!(
        field(b, "state_bytes") * 15.0 <= field(a, "state_bytes"),
        "{a}\n{b}"
    );
    assert!(
        field(b, "last_loss") < field(b, "first_loss") * 0.1,
        "loss must fall: {b}"
    );
}

#[test]
fn embeddings_example_with_q8_state_ends_within_5_percent_of_f32() {
    // 1,000 x 16 users and 300 x 16 items: q8 state updated lazily by blocks.
    let args = ["--steps", "800", "--users", "1000", "--items", "300"];
    let f32_run = run_example("embeddings", &args);
    let q8_run = run_example("embeddings", &[&args[..], &["--state", "q8"]].concat());
    let (a, b) = (
        f32_run.lines().last().unwrap(),
        q8_run.lines().last().unwrap(),
    );
    assert!(b.contains(" state=q8 "), "{b}");
    assert!(
        field(b, "state_bytes") <= field(a, "state_bytes") * 0.26,
        "{a}\n{b}"
    );
    let (want, got) = (field(a, "last_loss"), field(b, "last_loss"));
    assert!(got < field(b, "first_loss") * 0.1, "loss must fall: {b}");
    assert!((got - want).abs() <= 0.05 * want, "{a}\n{b}");
}

#[test]
fn precision_study_round_once_is_closer_to_exact_than_the_frameworks() {
    let out = run_example("precision", &[]);
    for label in ["all float16", "all bfloat16"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label} in {out}"));
        // elems, fw diff%, fw mean, fw max, f32 diff%, f32 mean, f32 max
        let cols: Vec<f64> = line[label.len()..]
            .split_whitespace()
            .map(|c| c.trim_end_matches('%').parse().unwrap())
            .collect();
        assert_eq!(cols.len(), 7, "{line}");
        assert!(cols[4] < 0.1 && cols[4] * 10.0 < cols[1], "{line}");
    }
    assert_eq!(out.lines().count(), 2 + 15 + 2, "{out}");
}

#[test]
fn train_example_names_its_storage_types_on_the_final_line() {
    let plot = std::env::temp_dir().join(format!("train-bf16-{}.png", std::process::id()));
    let out = run_example(
        "train",
        &[
            "--epochs",
            "1",
            "--dtype",
            "bf16",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.contains(" dtype=bf16 state=bf16 state_bytes="),
        "{last}"
    );
    assert!(field(last, "state_bytes") > 0.0, "{last}");
    std::fs::remove_file(&plot).unwrap();
}

#[test]
fn the_examples_reject_unknown_options_and_malformed_values_with_status_2() {
    for (name, args) in [
        ("train", &["--dtype", "f64"][..]),
        ("train", &["--bogus"]),
        ("train", &["--epochs", "x"]),
        ("embeddings", &["--users", "0"]),
        ("bench", &["--dense", "1024", "fancy"]),
        ("bench", &["--storage", "var=bf16,weights=f32"]),
        ("replay", &["--bogus", "case.json"]),
    ] {
        let out = Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--example", name, "--"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
        let line = stderr.lines().last().unwrap_or_default();
        assert!(line.contains("usage: "), "{name} {args:?}: {stderr}");
    }
}
