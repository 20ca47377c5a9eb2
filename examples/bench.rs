//! Benchmarks of the GPU step, one JSON object per line.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--sweep] [--dense N VARIANT] [--case NAME] [--reps N]
//! ```
//!
//! Each case times the GPU work to completion after warm-up and reports the median, min and max over the
//! repetitions: with timestamp queries written around the step in its encoder where the device has
//! `TIMESTAMP_QUERY_INSIDE_ENCODERS` (`"timing": "timestamp_query"`), else from encoding to the end of a
//! wait for the queue (`"submit_wait"`). `gb_s` counts the bytes RMSprop must move: 20/28/28/36 bytes per
//! element (plain/momentum/centered/centered_momentum); for sparse steps, the touched rows' state plus
//! the listed values and indices. `minimal_kernel` is a WGSL kernel with the same loads and stores and
//! trivial arithmetic (`examples/bench_minimal.wgsl`); it and the step it is compared with are timed
//! alternately, repetition by repetition, so that both see the same machine. `host` cases report the
//! time the calling thread spends per step (validate, encode, submit; not waiting) above an empty submit.
//! `dense_options` is the dense step of a variable with per-variable options (the kernels then read the
//! options table), against the minimal kernel.

use std::time::Instant;

use serde_json::{json, Value};
use wgpu_rmsprop::{GpuContext, Gradient, Indices, OptimizerOptions, RmsProp, VarId, VarOptions};

#[path = "../benches/support/mod.rs"]
mod support;
use support::{
    bytes_per_element, dense_optimizer, resident, sparse_indices, stats, variant_config, Minimal,
    Stats, Timer,
};

/// Microseconds the calling thread spends in `f` and in an empty submit, alternately (the GPU is
/// drained outside the timing), after 20 untimed rounds.
fn time_host(ctx: &GpuContext, reps: usize, mut f: impl FnMut()) -> (Stats, Stats) {
    let timed = |g: &mut dyn FnMut()| {
        let start = Instant::now();
        g();
        let us = start.elapsed().as_secs_f64() * 1e6;
        ctx.wait_idle().unwrap();
        us
    };
    let mut empty = || {
        let encoder = ctx.device().create_command_encoder(&Default::default());
        ctx.queue().submit([encoder.finish()]);
    };
    let (mut tf, mut te) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for i in 0..reps + 20 {
        let (a, b) = (timed(&mut f), timed(&mut empty));
        if i >= 20 {
            tf.push(a);
            te.push(b);
        }
    }
    (stats(tf), stats(te))
}

/// One optimizer step recorded for the timer.
fn step(
    timer: &Timer,
    ctx: &GpuContext,
    opt: &mut RmsProp,
    grads: &[(VarId, Gradient<'_>)],
) -> f64 {
    let mut recorded = None;
    let (ms, index) = timer.once_submitted(ctx, |e| recorded = Some(opt.record(e, grads).unwrap()));
    opt.submitted(recorded.unwrap(), index).unwrap();
    ms
}

/// Times each of `runs` in turn, round after round (`warmup` untimed rounds, then `reps` timed ones), so
/// that all of them see the same machine; one `Stats` per run.
fn time_alternately(
    warmup: usize,
    reps: usize,
    runs: &mut [&mut dyn FnMut() -> f64],
) -> Vec<Stats> {
    let mut times = vec![Vec::with_capacity(reps); runs.len()];
    for round in 0..warmup + reps {
        for (run, t) in runs.iter_mut().zip(&mut times) {
            let ms = run();
            if round >= warmup {
                t.push(ms);
            }
        }
    }
    times.into_iter().map(stats).collect()
}

/// The common fields of a timed row.
fn row(case: &str, variant: &str, n: usize, tensors: usize, s: &Stats, bytes: f64) -> Value {
    json!({"case": case, "variant": variant, "n": n, "tensors": tensors, "rows": null, "nnz": null,
    "ms_median": s.median, "ms_min": s.min, "ms_max": s.max, "gb_s": bytes / s.median / 1e6,
    "host_us_per_step": null})
}

fn main() {
    env_logger::init();
    let quick = std::env::args().any(|a| a == "--quick");
    let sweep = std::env::args().any(|a| a == "--sweep");
    let ctx = support::context();
    let timer = Timer::new(&ctx);
    let adapter = ctx.adapter_description();
    let args: Vec<String> = std::env::args().collect();
    let reps = match args.iter().position(|a| a == "--reps") {
        Some(i) => args[i + 1].parse().expect("--reps N"),
        None if quick => 15,
        None => 30,
    };
    let emit = |mut v: Value, dispatches: usize| {
        v["dispatches_per_step"] = json!(dispatches);
        v["adapter"] = json!(adapter);
        if v.get("timing").is_none() {
            v["timing"] = json!(timer.method());
        }
        println!("{v}");
    };
    let variants = ["plain", "momentum", "centered", "centered_momentum"];

    if sweep {
        // What the adapter rewards: invocations per workgroup, and vec4s per invocation.
        let shapes = [
            (64u32, 1u32),
            (128, 1),
            (256, 1),
            (512, 1),
            (1024, 1),
            (256, 2),
            (256, 4),
        ];
        for n in [16usize << 20, 64 << 20] {
            for variant in ["plain", "centered_momentum"] {
                for (wg, per) in shapes {
                    let options = OptimizerOptions {
                        workgroup_size: wg,
                        vec4s_per_invocation: per,
                        ..Default::default()
                    };
                    let Ok(mut opt) = RmsProp::with_options(&ctx, variant_config(variant), options)
                    else {
                        continue;
                    };
                    let init = vec![0.5f32; n];
                    let id = opt.add_variable("w", &[n], &init).unwrap();
                    opt.apply_gradients(&[(id, &init)]).unwrap();
                    let grads = resident(&[id]);
                    let s = &time_alternately(
                        2,
                        reps,
                        &mut [&mut || step(&timer, &ctx, &mut opt, &grads)],
                    )[0];
                    let bytes = bytes_per_element(variant) * n as f64;
                    let mut v = row("dense_workgroup_size", variant, n, 1, s, bytes);
                    v["workgroup_size"] = json!(wg);
                    v["vec4s_per_invocation"] = json!(per);
                    emit(v, opt.last_step_dispatches());
                }
            }
        }
        return;
    }

    // `--dense N VARIANT`: only that comparison. `--case NAME`: only that family (host, dense,
    // dense_options, scale, dense_many, sparse).
    let only = args.iter().position(|a| a == "--dense").map(|i| {
        let n: usize = args[i + 1].parse().expect("--dense N VARIANT");
        (n, args[i + 2].clone())
    });
    let case = args
        .iter()
        .position(|a| a == "--case")
        .map(|i| args[i + 1].clone());
    let wants = |name: &str| only.is_none() && case.as_deref().is_none_or(|c| c == name);

    if wants("host") {
        // Host overhead first, on a quiet machine: tiny steps whose GPU work is negligible, above an empty
        // submit, on a context as `GpuContext::new()` makes it (no timestamp queries).
        let host_ctx = GpuContext::new().expect("a GPU adapter");
        // Gradients already on the GPU (`Resident`), then uploaded from host slices each step.
        for (tensors, from_host) in [(1usize, false), (1000, false), (1, true), (1000, true)] {
            let (mut opt, ids) = dense_optimizer(&host_ctx, "plain", &vec![4; tensors]);
            let host_grads = [0.25f32; 4];
            let grads: Vec<(VarId, Gradient<'_>)> = ids
                .iter()
                .map(|&id| {
                    let g = if from_host {
                        Gradient::Dense(&host_grads)
                    } else {
                        Gradient::Resident
                    };
                    (id, g)
                })
                .collect();
            let (s, empty) = time_host(&host_ctx, 1000, || {
                opt.apply(&grads).unwrap();
            });
            let ms = Stats {
                median: s.median / 1e3,
                min: s.min / 1e3,
                max: s.max / 1e3,
            };
            let mut v = row("host", "plain", 4 * tensors, tensors, &ms, 0.0);
            v["gb_s"] = Value::Null;
            v["host_us_per_step"] = json!(s.median - empty.median);
            v["empty_submit_us"] = json!(empty.median);
            v["gradients"] = json!(if from_host { "host" } else { "resident" });
            v["timing"] = json!("host_clock");
            emit(v, opt.last_step_dispatches());
        }
    }

    // Dense steps against the minimal kernel, timed alternately.
    let sizes: &[usize] = match (&only, quick) {
        (Some((n, _)), _) => std::slice::from_ref(n),
        (None, _) if !wants("dense") => &[],
        (None, true) => &[1 << 20],
        (None, false) => &[1 << 20, 16 << 20, 64 << 20],
    };
    for &n in sizes {
        for variant in variants {
            if only.as_ref().is_some_and(|(_, v)| v != variant) {
                continue;
            }
            let (mut opt, ids) = dense_optimizer(&ctx, variant, &[n]);
            let grads = resident(&ids);
            let minimal = Minimal::new(&ctx, variant, n);
            // The ratio is what matters here: twice the repetitions where a step is short.
            let pair_reps = if n <= 16 << 20 { 2 * reps } else { reps };
            let t = time_alternately(
                2,
                pair_reps,
                &mut [&mut || step(&timer, &ctx, &mut opt, &grads), &mut || {
                    timer.once(&ctx, |e| minimal.record(e))
                }],
            );
            let (s, m) = (&t[0], &t[1]);
            let bytes = bytes_per_element(variant) * n as f64;
            emit(
                row("dense", variant, n, 1, s, bytes),
                opt.last_step_dispatches(),
            );
            emit(
                row("minimal_kernel", variant, n, 1, m, bytes),
                minimal.dispatches(),
            );
        }
    }

    if only.is_some() {
        return;
    }

    // The same dense steps with per-variable options (the kernels read the options table: VAR_OPTIONS),
    // against the minimal kernel: what a parameter group costs on top of the default path.
    let option_sizes: &[usize] = match (wants("dense_options"), quick) {
        (false, _) => &[],
        (true, true) => &[1 << 20],
        (true, false) => &[1 << 20, 16 << 20],
    };
    for &n in option_sizes {
        // A learning-rate group (the kernels read one field of the table), and options setting every
        // field (rate, rho, epsilon, momentum where the variant has it, weight decay, flags), with the
        // slots of the variant (the bytes the minimal kernel moves).
        let lr_only = VarOptions {
            lr_multiplier: 0.5,
            ..VarOptions::default()
        };
        for variant in variants {
            let every = VarOptions {
                lr_multiplier: 0.5,
                rho: Some(0.8),
                epsilon: Some(1e-6),
                momentum: variant.contains("momentum").then_some(0.5),
                weight_decay: Some(0.01),
                maximize: Some(true),
                ..VarOptions::default()
            };
            for (label, options) in [("lr", &lr_only), ("every_field", &every)] {
                let (mut opt, ids) = dense_optimizer(&ctx, variant, &[n]);
                opt.set_variable_options(ids[0], options).unwrap();
                let grads = resident(&ids);
                let minimal = Minimal::new(&ctx, variant, n);
                let t = time_alternately(
                    2,
                    2 * reps,
                    &mut [&mut || step(&timer, &ctx, &mut opt, &grads), &mut || {
                        timer.once(&ctx, |e| minimal.record(e))
                    }],
                );
                let bytes = bytes_per_element(variant) * n as f64;
                let mut v = row("dense_options", variant, n, 1, &t[0], bytes);
                v["options"] = json!(label);
                emit(v, opt.last_step_dispatches());
                let mut m = row("minimal_kernel", variant, n, 1, &t[1], bytes);
                m["options"] = json!(label);
                emit(m, minimal.dispatches());
            }
        }
    }

    // Scale: a state of several GiB (256M elements, centered + momentum: 5 GiB with the gradients).
    if !quick && wants("scale") {
        let (n, variant) = (256usize << 20, "centered_momentum");
        let (mut opt, ids) = dense_optimizer(&ctx, variant, &[n]);
        let grads = resident(&ids);
        let s = &time_alternately(1, 3, &mut [&mut || step(&timer, &ctx, &mut opt, &grads)])[0];
        let mut v = row(
            "dense",
            variant,
            n,
            1,
            s,
            bytes_per_element(variant) * n as f64,
        );
        v["state_bytes"] = json!(opt.pool_stats().pool_bytes);
        emit(v, opt.last_step_dispatches());
    }

    // 1,000 tensors of 16k against one of the same total size, timed alternately.
    let (tensors, each) = if quick {
        (1000, 1 << 12)
    } else {
        (1000, 1 << 14)
    };
    let many_variants: &[&str] = if wants("dense_many") {
        &["plain", "centered_momentum"]
    } else {
        &[]
    };
    for &variant in many_variants {
        let n = tensors * each;
        let (mut many, many_ids) = dense_optimizer(&ctx, variant, &vec![each; tensors]);
        let many_grads = resident(&many_ids);
        let (mut one, one_ids) = dense_optimizer(&ctx, variant, &[n]);
        let one_grads = resident(&one_ids);
        let t = time_alternately(
            2,
            reps,
            &mut [
                &mut || step(&timer, &ctx, &mut many, &many_grads),
                &mut || step(&timer, &ctx, &mut one, &one_grads),
            ],
        );
        let (sm, so) = (&t[0], &t[1]);
        let bytes = bytes_per_element(variant) * n as f64;
        emit(
            row("dense_many", variant, n, tensors, sm, bytes),
            many.last_step_dispatches(),
        );
        emit(
            row("dense", variant, n, 1, so, bytes),
            one.last_step_dispatches(),
        );
    }

    // 1,000 tensors with global_clipnorm (per-variable clipping state, one dense dispatch per pool
    // buffer through the segment map) against the same tensors without clipping, timed alternately;
    // then saving a checkpoint of them (one read-back, one wait).
    if wants("clip_many") {
        let sizes = vec![each; tensors];
        let clip_cfg = wgpu_rmsprop::RmsPropConfig::builder()
            .learning_rate(1e-4)
            .global_clipnorm(1.0)
            .build()
            .unwrap();
        let mut clipped = RmsProp::new(&ctx, clip_cfg).unwrap();
        let clipped_ids: Vec<VarId> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                clipped
                    .add_variable(&format!("w{k}"), &[n], &vec![0.5; n])
                    .unwrap()
            })
            .collect();
        let clipped_grads = resident(&clipped_ids);
        clipped.apply(&clipped_grads).unwrap();
        let (mut plain, plain_ids) = dense_optimizer(&ctx, "plain", &sizes);
        let plain_grads = resident(&plain_ids);
        let t = time_alternately(
            2,
            reps,
            &mut [
                &mut || step(&timer, &ctx, &mut clipped, &clipped_grads),
                &mut || step(&timer, &ctx, &mut plain, &plain_grads),
            ],
        );
        // Clipping reads every gradient once more (the norm) on top of the update's bytes.
        let n = tensors * each;
        let bytes = (bytes_per_element("plain") + 4.0) * n as f64;
        let mut v = row(
            "clip_many",
            "plain_global_clipnorm",
            n,
            tensors,
            &t[0],
            bytes,
        );
        v["baseline_ms"] = json!(t[1].median);
        emit(v, clipped.last_step_dispatches());
        let path =
            std::env::temp_dir().join(format!("bench-save-{}.safetensors", std::process::id()));
        let saves: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                clipped.save_checkpoint(&path, true).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let _ = std::fs::remove_file(&path);
        let ms = stats(saves);
        let mut v = row(
            "save_checkpoint",
            "plain_global_clipnorm",
            n,
            tensors,
            &ms,
            0.0,
        );
        v["gb_s"] = Value::Null;
        v["timing"] = json!("host_clock");
        v["read_backs"] = json!(1);
        emit(v, 0);
    }

    // Sparse: k = 16,384 indices (about 20% repeats) on 64-column tables of 100k and 1M rows, the two
    // tables timed alternately.
    let (k, cols) = (16_384usize, 64usize);
    // Both table sizes even in quick runs: their ratio is the point (O(touched rows)).
    let row_counts: &[usize] = &[100_000, 1_000_000];
    let sparse_variants: &[&str] = if wants("sparse") {
        &["plain", "centered_momentum"]
    } else {
        &[]
    };
    for &variant in sparse_variants {
        let values: Vec<f32> = (0..k * cols)
            .map(|i| ((i % 11) as f32 - 5.0) * 0.01)
            .collect();
        let mut opts = Vec::new();
        let mut lists = Vec::new();
        for &rows in row_counts {
            let mut opt = RmsProp::new(&ctx, variant_config(variant)).unwrap();
            let table = opt
                .add_variable("table", &[rows, cols], &vec![0.5; rows * cols])
                .unwrap();
            opts.push(opt);
            lists.push((table, sparse_indices(rows, k)));
        }
        let grads: Vec<[(VarId, Gradient<'_>); 1]> = lists
            .iter()
            .map(|(table, indices)| {
                [(
                    *table,
                    Gradient::Sparse {
                        indices: Indices::I64(indices),
                        values: &values,
                    },
                )]
            })
            .collect();
        let mut runs: Vec<_> = opts
            .iter_mut()
            .zip(&grads)
            .map(|(opt, g)| {
                let (timer, ctx) = (&timer, &ctx);
                move || step(timer, ctx, opt, g)
            })
            .collect();
        let mut runs: Vec<&mut dyn FnMut() -> f64> = runs
            .iter_mut()
            .map(|r| r as &mut dyn FnMut() -> f64)
            .collect();
        let times = time_alternately(2, reps, &mut runs);
        drop(runs);
        for (((&rows, opt), (_, indices)), t) in
            row_counts.iter().zip(&opts).zip(&lists).zip(&times)
        {
            let mut distinct = indices.clone();
            distinct.sort_unstable();
            distinct.dedup();
            // State of the touched rows (read + write) plus the listed values and indices.
            let state_bytes = (bytes_per_element(variant) - 4.0) * (distinct.len() * cols) as f64;
            let bytes = state_bytes + (k * cols * 4 + k * 8) as f64;
            let mut v = row("sparse", variant, rows * cols, 1, t, bytes);
            v["rows"] = json!(rows);
            v["nnz"] = json!(k);
            emit(v, opt.last_step_dispatches());
        }
    }
}
