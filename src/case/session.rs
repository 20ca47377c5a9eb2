//! A conformance run over many cases (the engine of the `replay` example): one report line per case,
//! results streamed to the output folder, one bad case never stopping the others.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    escape_name, escape_text, Case, EmitDir, Judge, Limits, Verdict, DEFAULT_MEMORY_BUDGET,
};
use crate::context::GpuContext;
use crate::error::Error;

/// Longest message printed on a result line; the rest is counted, not printed (a hostile case can
/// make a message quote megabytes of its content).
const MAX_MESSAGE_CHARS: usize = 400;

/// What a [`Replay`] does with each case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Write each case's computed states to this folder (`replay --emit DIR`).
    pub emit: Option<PathBuf>,
    /// Checkpoint after this step, restore into a new optimizer and finish (`replay --resume-at K`).
    pub resume_at: Option<usize>,
    /// Memory budget of one case (`replay --memory-budget BYTES`).
    pub limits: Limits,
    /// Cases in sparse mode dense run with [`crate::SparseMode::LazyExact`] (`replay --sparse-mode
    /// lazy-exact`): the same numbers are expected.
    pub lazy_exact: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            emit: None,
            resume_at: None,
            limits: Limits::new(DEFAULT_MEMORY_BUDGET),
            lazy_exact: false,
        }
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Computed and within tolerance everywhere.
    Pass(Verdict),
    /// Computed, and something differs from the case's expectation.
    Fail(Verdict),
    /// Computed; the case has nothing to judge against.
    Ran,
    /// The case needs features the crate does not have (named).
    Unsupported(String),
    /// The case could not be read or run.
    Error(String),
}

/// The result of one case of a [`Replay`].
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    /// The case's name as read (untrusted: [`CaseReport::line`] escapes it); the file stem or `?` when
    /// the name could not be read.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Where its computed states were written, if anywhere.
    pub emitted: Option<PathBuf>,
    /// Remarks printed on the line (`emitted=FILE` when the file is not `<name>.json`, a resume that
    /// did not happen).
    pub notes: Vec<String>,
}

fn clip(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => escape_text(message),
        Some((cut, _)) => format!(
            "{}... ({} more characters)",
            escape_text(&message[..cut]),
            message[cut..].chars().count()
        ),
    }
}

impl CaseReport {
    /// Passed or ran: what lets `replay` exit 0.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Pass(_) | Outcome::Ran)
    }

    /// The printed line: `PASS <name> max_abs=.. max_rel=..`, `FAIL <name> max_abs=.. max_rel=..
    /// first: ..`, `RAN <name>`, `UNSUPPORTED <name>: ..` or `ERROR <name>: ..`, with the name escaped
    /// by [`escape_name`] and messages by [`escape_text`]: always exactly one line.
    pub fn line(&self) -> String {
        let name = escape_name(&self.name);
        let notes: String = self
            .notes
            .iter()
            .map(|n| format!(" {}", escape_text(n)))
            .collect();
        match &self.outcome {
            Outcome::Pass(v) => format!(
                "PASS {name} max_abs={:.3e} max_rel={:.3e}{notes}",
                v.max_abs, v.max_rel
            ),
            Outcome::Fail(v) => format!(
                "FAIL {name} max_abs={:.3e} max_rel={:.3e}{notes} first: {}",
                v.max_abs,
                v.max_rel,
                clip(v.worst.as_deref().unwrap_or(""))
            ),
            Outcome::Ran => format!("RAN {name}{notes}"),
            Outcome::Unsupported(what) => format!("UNSUPPORTED {name}: {}", clip(what)),
            Outcome::Error(message) => format!("ERROR {name}{notes}: {}", clip(message)),
        }
    }
}

/// Runs cases on the GPU one after another (see the `replay` example). Case names are unique within a
/// run: a second case with a name already seen is an error and is not run, so no case's results can
/// replace another's. Checkpoints for `resume_at` go to a private folder made for the run (named by
/// a counter, never by the case) and are removed after each case.
#[derive(Debug)]
pub struct Replay<'a> {
    ctx: &'a GpuContext,
    options: ReplayOptions,
    emit: Option<EmitDir>,
    names: HashSet<String>,
    checkpoints: Option<PathBuf>,
    count: u64,
}

fn report(name: &str, outcome: Outcome) -> CaseReport {
    CaseReport {
        name: name.to_string(),
        outcome,
        emitted: None,
        notes: Vec::new(),
    }
}

fn outcome_of(e: Error) -> Outcome {
    match e {
        Error::Unsupported { what, .. } => Outcome::Unsupported(what),
        e => Outcome::Error(e.to_string()),
    }
}

impl<'a> Replay<'a> {
    /// A run on `ctx`; creates the output folder when `options.emit` is set.
    pub fn new(ctx: &'a GpuContext, options: ReplayOptions) -> io::Result<Replay<'a>> {
        let emit = options.emit.as_deref().map(EmitDir::create).transpose()?;
        Ok(Replay {
            ctx,
            options,
            emit,
            names: HashSet::new(),
            checkpoints: None,
            count: 0,
        })
    }

    /// The output folder, resolved, when results are emitted.
    pub fn emit_dir(&self) -> Option<&Path> {
        self.emit.as_ref().map(EmitDir::path)
    }

    /// Reads the case at `path` (within the budget) and runs it.
    pub fn run_path(&mut self, path: &Path) -> CaseReport {
        match Case::from_path_limited(path, &self.options.limits) {
            Ok(mut case) => {
                // Only cases with sparse steps (the others have no rows to leave behind).
                let sparse = case
                    .steps
                    .iter()
                    .flat_map(|s| &s.grads)
                    .any(|g| matches!(g, crate::case::CaseGradient::Sparse { .. }));
                case.config.lazy_exact = self.options.lazy_exact && sparse;
                self.run_case(&case)
            }
            Err(Error::InvalidCase { name, message }) => report(&name, Outcome::Error(message)),
            Err(e) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "?".into());
                report(&stem, outcome_of(e))
            }
        }
    }

    /// Runs one case: on the GPU, each step judged and written out as soon as it is read back.
    pub fn run_case(&mut self, case: &Case) -> CaseReport {
        self.count += 1;
        if !self.names.insert(case.name.clone()) {
            return report(
                &case.name,
                Outcome::Error(
                    "duplicate name: an earlier case of this run has the same name (its results \
                     stand; this one is not run)"
                        .into(),
                ),
            );
        }
        if let Some(what) = case.unsupported() {
            return report(&case.name, Outcome::Unsupported(what));
        }
        if let Err(e) = case.check_budget(&self.options.limits, false) {
            return report(&case.name, outcome_of(e));
        }
        let mut rep = report(&case.name, Outcome::Ran);
        let target = match self
            .emit
            .as_mut()
            .map(|d| d.reserve(&case.name))
            .transpose()
        {
            Ok(t) => t,
            Err(e) => {
                rep.outcome = Outcome::Error(format!("cannot name the output file: {e}"));
                return rep;
            }
        };
        if let Some(t) = target.as_ref().filter(|t| t.renamed) {
            rep.notes.push(format!("emitted={}", t.file_name));
        }
        let checkpoint = match self.options.resume_at {
            Some(k) if (1..=case.steps.len()).contains(&k) => match self.checkpoint_dir() {
                Ok(dir) => Some((k, dir.join(format!("case-{}.safetensors", self.count)))),
                Err(e) => {
                    rep.outcome =
                        Outcome::Error(format!("cannot make a folder for checkpoints: {e}"));
                    return rep;
                }
            },
            Some(k) => {
                rep.notes.push(format!(
                    "not-resumed(resume-at {k}, the case has {} steps)",
                    case.steps.len()
                ));
                None
            }
            None => None,
        };
        let mut writer = match target.as_ref().map(|t| t.create(&case.name)).transpose() {
            Ok(w) => w,
            Err(e) => {
                rep.outcome = Outcome::Error(format!("cannot write the results: {e}"));
                return rep;
            }
        };
        let mut judge = Judge::new(case);
        let result = case.run_gpu_streaming(
            self.ctx,
            checkpoint.as_ref().map(|(k, f)| (*k, f.as_path())),
            &self.options.limits,
            &mut |state| {
                if let Some(j) = judge.as_mut() {
                    j.step(&state);
                }
                if let Some(w) = writer.as_mut() {
                    w.step(&state).map_err(|e| Error::InvalidCase {
                        name: case.name.clone(),
                        message: format!("cannot write the results: {e}"),
                    })?;
                }
                Ok(())
            },
        );
        if let Some((_, file)) = &checkpoint {
            let _ = std::fs::remove_file(file);
        }
        if let Err(e) = result {
            if let Some(t) = &target {
                t.discard();
            }
            // Nothing was written and the resume did not matter: no remarks about either.
            rep.notes.clear();
            rep.outcome = outcome_of(e);
            return rep;
        }
        if let (Some(t), Some(w)) = (&target, writer) {
            if let Err(e) = t.commit(w) {
                rep.notes.clear();
                rep.outcome = Outcome::Error(format!("cannot write the results: {e}"));
                return rep;
            }
            rep.emitted = Some(t.path.clone());
        }
        rep.outcome = match judge.map(Judge::finish) {
            None => Outcome::Ran,
            Some(v) if v.pass => Outcome::Pass(v),
            Some(v) => Outcome::Fail(v),
        };
        rep
    }

    /// The run's private checkpoint folder, made on first use: a new folder (never an existing one,
    /// which someone else could have prepared) under the system's temporary folder.
    fn checkpoint_dir(&mut self) -> io::Result<PathBuf> {
        if let Some(d) = &self.checkpoints {
            return Ok(d.clone());
        }
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for attempt in 0..16u32 {
            let dir = base.join(format!(
                "wgpu-rmsprop-replay-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    self.checkpoints = Some(dir.clone());
                    return Ok(dir);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no attempt made")))
    }
}

impl Drop for Replay<'_> {
    fn drop(&mut self) {
        if let Some(d) = &self.checkpoints {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
