//! Conformance runner for golden cases (`rmsprop-case/1`).
//!
//! ```text
//! cargo run --release --example replay -- [--emit DIR] [--resume-at K] [--memory-budget BYTES]
//!     [--sparse-mode lazy-exact] CASE.json [CASE.json ...]
//! mpirun -n N replay --distributed [--resume-at K] CASE.json [CASE.json ...]   # --features distributed
//! ```
//!
//! Runs each case on the GPU and prints exactly one line per case: `PASS <name> max_abs=<x> max_rel=<y>`,
//! `FAIL <name> ... first: <what>`, `RAN <name>` (no expected values to judge), `UNSUPPORTED <name>:
//! <features>` or `ERROR <name>: <message>`. Names are escaped (`\n`, `\u{1b}`, `\u{20}`, ...), so a
//! name cannot forge a line. With `--emit DIR`, writes each case's computed states to
//! `DIR/<name>.json` (a sanitized file name when the case name is not a plain one, shown on the line
//! as `emitted=FILE`); nothing is written outside DIR. With `--resume-at K`, each case is checkpointed
//! after step K, dropped, restored from the file into a new optimizer and finished (the results must
//! be the same as without). `--memory-budget` (default 4 GiB; suffixes K, M, G) bounds what one case
//! may take: a case that would exceed it is an ERROR before it is read or run. A repeated case name
//! is an ERROR for the later case. Exits 0 only when every case passed or ran. An unknown option, a
//! missing or malformed value or no case at all exits 2 with the usage on stderr; after `--` every
//! argument is a case path.
//!
//! With `--distributed` (built with `--features distributed`, run under `mpirun`), each case runs on
//! the sharded optimizer (`wgpu_rmsprop::distributed`): every rank gives its part of each step's
//! gradients, the parts are summed across ranks, every rank judges its own copy of the variables and
//! the slots gathered from all ranks, and rank 0 prints one line per case for all of them (with
//! `ranks=N`). `--emit` and `--memory-budget` are single-process options.

use std::path::PathBuf;
use std::process::ExitCode;

use wgpu_rmsprop::case::{escape_name, escape_text, Limits, Replay, ReplayOptions};
use wgpu_rmsprop::GpuContext;

const USAGE: &str =
    "usage: replay [--emit DIR] [--resume-at K] [--memory-budget BYTES] [--sparse-mode lazy-exact] \
     [--distributed] CASE.json [CASE.json ...]";

/// `123`, `64K`, `512M`, `4G` (binary units).
fn parse_bytes(s: &str) -> Option<u64> {
    let (digits, shift) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 10),
        'M' => (&s[..s.len() - 1], 20),
        'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A usage error: what is wrong and the usage, on one line of stderr; exit status 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}; {USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    env_logger::init();
    let mut options = ReplayOptions::default();
    let mut paths = Vec::new();
    let mut args = std::env::args_os().skip(1);
    let mut only_paths = false;
    let mut distributed = false;
    while let Some(a) = args.next() {
        if only_paths {
            paths.push(PathBuf::from(a));
            continue;
        }
        match a.to_str() {
            Some("--emit") => match args.next() {
                Some(dir) => options.emit = Some(dir.into()),
                None => return usage_error("--emit needs a directory"),
            },
            Some("--resume-at") => {
                match args
                    .next()
                    .and_then(|k| k.to_str()?.parse::<usize>().ok())
                    .filter(|&k| k >= 1)
                {
                    Some(k) => options.resume_at = Some(k),
                    None => return usage_error("--resume-at needs a step number >= 1"),
                }
            }
            Some("--memory-budget") => match args.next().and_then(|b| parse_bytes(b.to_str()?)) {
                Some(b) => options.limits = Limits::new(b),
                None => return usage_error("--memory-budget needs a byte count (e.g. 4G, 512M)"),
            },
            Some("--sparse-mode") => match args.next().as_deref().and_then(|m| m.to_str()) {
                Some("lazy-exact") => options.lazy_exact = true,
                Some("as-recorded") => options.lazy_exact = false,
                _ => return usage_error("--sparse-mode needs lazy-exact or as-recorded"),
            },
            Some("--distributed") => distributed = true,
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("--") => only_paths = true,
            _ if a.to_string_lossy().starts_with('-') && a.len() > 1 => {
                return usage_error(&format!(
                    "unknown option `{}`",
                    escape_text(&a.to_string_lossy())
                ));
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        return usage_error("no CASE.json given");
    }
    if distributed {
        return run_distributed(&paths, options.resume_at);
    }
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no GPU: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("adapter: {}", ctx.adapter_description());
    let mut replay = match Replay::new(&ctx, options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot create the output folder: {e}");
            return ExitCode::from(2);
        }
    };
    let mut all_ok = true;
    for path in &paths {
        // The library does not panic on any input; this is the last line of defence that keeps one
        // case (a panic inside a dependency) from ending the run for the cases after it.
        let rep = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replay.run_path(path)));
        match rep {
            Ok(rep) => {
                all_ok &= rep.ok();
                println!("{}", rep.line());
            }
            Err(panic) => {
                all_ok = false;
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "?".into());
                println!(
                    "ERROR {}: internal panic: {}",
                    escape_name(&stem),
                    escape_text(&what)
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

/// `--distributed`: every case on the sharded optimizer over MPI's world; rank 0 prints the lines.
#[cfg(feature = "distributed")]
fn run_distributed(paths: &[PathBuf], resume_at: Option<usize>) -> ExitCode {
    use wgpu_rmsprop::distributed::{abort_on_panic, abort_world, replay_case};
    let Some(universe) = mpi::initialize() else {
        eprintln!("error: MPI could not be initialized");
        return ExitCode::from(2);
    };
    let world = universe.world();
    let rank = mpi::topology::Communicator::rank(&world) as usize;
    abort_on_panic(rank);
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => abort_world(rank, &format!("no GPU: {e}")),
    };
    if rank == 0 {
        eprintln!("adapter: {}", ctx.adapter_description());
    }
    let checkpoints = std::env::temp_dir().join(format!(
        "wgpu-rmsprop-replay-{}",
        std::env::var("OMPI_MCA_orte_ess_jobid")
            .or_else(|_| std::env::var("PMIX_NAMESPACE"))
            .unwrap_or_else(|_| "job".into())
            .replace(['/', '\\', '.'], "_")
    ));
    let mut all_ok = true;
    for path in paths {
        let rep = replay_case(path, &ctx, &world, resume_at, &checkpoints);
        all_ok &= rep.ok();
        if rank == 0 {
            println!("{}", rep.line());
        }
    }
    if rank == 0 {
        let _ = std::fs::remove_dir_all(&checkpoints);
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(not(feature = "distributed"))]
fn run_distributed(_: &[PathBuf], _: Option<usize>) -> ExitCode {
    usage_error("--distributed needs the crate built with `--features distributed`")
}
