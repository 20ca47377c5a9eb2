//! Conformance runner for golden cases (`rmsprop-case/1`).
//!
//! ```text
//! cargo run --release --example replay -- [--emit DIR] [--resume-at K] CASE.json [CASE.json ...]
//! ```
//!
//! Runs each case on the GPU and prints one line per case: `PASS <name> max_abs=<x> max_rel=<y>`,
//! `FAIL <name> ...`, `RAN <name>` (no expected values to judge), `UNSUPPORTED <name>: <what>` or
//! `ERROR <name>: <message>`. With `--emit DIR`, writes `DIR/<name>.json` with the computed states.
//! With `--resume-at K`, each case is checkpointed after step K, dropped, restored from the file into a
//! new optimizer and finished (the results must be the same as without). Exits 0 only when every case
//! passed or ran.

use std::path::PathBuf;
use std::process::ExitCode;

use wgpu_rmsprop::case::{emit_json, Case};
use wgpu_rmsprop::{Error, GpuContext};

fn main() -> ExitCode {
    env_logger::init();
    let mut emit: Option<PathBuf> = None;
    let mut resume_at: Option<usize> = None;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--emit" => match args.next() {
                Some(dir) => emit = Some(dir.into()),
                None => {
                    eprintln!("--emit needs a directory");
                    return ExitCode::from(2);
                }
            },
            "--resume-at" => match args.next().and_then(|k| k.parse().ok()) {
                Some(k) => resume_at = Some(k),
                None => {
                    eprintln!("--resume-at needs a step number");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: replay [--emit DIR] [--resume-at K] CASE.json [CASE.json ...]");
                return ExitCode::SUCCESS;
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        eprintln!("usage: replay [--emit DIR] [--resume-at K] CASE.json [CASE.json ...]");
        return ExitCode::from(2);
    }
    if let Some(dir) = &emit {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no GPU: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("adapter: {}", ctx.adapter_description());
    let mut all_ok = true;
    for path in &paths {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let case = match Case::from_path(path) {
            Ok(c) => c,
            Err(e) => {
                println!("ERROR {stem}: {e}");
                all_ok = false;
                continue;
            }
        };
        let file = std::env::temp_dir().join(format!(
            "replay-{}-{}.safetensors",
            std::process::id(),
            case.name
        ));
        let result = case.run_gpu_resumed(&ctx, resume_at.map(|k| (k, file.as_path())));
        let _ = std::fs::remove_file(&file);
        let states = match result {
            Ok(s) => s,
            Err(Error::Unsupported { what, .. }) => {
                println!("UNSUPPORTED {}: {what}", case.name);
                all_ok = false;
                continue;
            }
            Err(e) => {
                println!("ERROR {}: {e}", case.name);
                all_ok = false;
                continue;
            }
        };
        if let Some(dir) = &emit {
            let file = dir.join(format!("{}.json", case.name));
            if let Err(e) = std::fs::write(&file, emit_json(&case.name, &states)) {
                println!("ERROR {}: cannot write {}: {e}", case.name, file.display());
                all_ok = false;
                continue;
            }
        }
        match case.judge(&states) {
            None => println!("RAN {}", case.name),
            Some(v) if v.pass => println!(
                "PASS {} max_abs={:.3e} max_rel={:.3e}",
                case.name, v.max_abs, v.max_rel
            ),
            Some(v) => {
                all_ok = false;
                println!(
                    "FAIL {} max_abs={:.3e} max_rel={:.3e} first: {}",
                    case.name,
                    v.max_abs,
                    v.max_rel,
                    v.worst.unwrap_or_default()
                );
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
