//! Output of a case run: printable (escaped) names, file names that cannot leave the output folder,
//! results written step by step in a form that reads back.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::{invalid, parse, values, StepState};
use crate::error::Result;

fn escape(s: &str, name: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // In a name, backslash and quote are escaped so that every escaped form comes from one
            // name only; a space is escaped so that the name stays one whitespace-free token.
            '\\' if name => out.push_str("\\\\"),
            '"' if name => out.push_str("\\\""),
            ' ' if !name => out.push(' '),
            '!'..='~' => out.push(c),
            // Control characters (ESC starts terminal sequences), every other whitespace (line and
            // paragraph separators), bidi overrides, zero-width and look-alike letters: all shown as
            // code points, so what is printed is what the name is.
            _ => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    if name && out.is_empty() {
        out.push_str("\"\"");
    }
    out
}

/// A case name as printed on a result line: printable ASCII except space, `"` and `\` as is, those
/// three and everything else escaped (`\n`, `\r`, `\t`, `\\`, `\"`, `\u{1b}`, `\u{20}`, `\u{e9}`); the
/// empty name as `""`. The result is one token without whitespace, and two different names never
/// print the same.
pub fn escape_name(name: &str) -> String {
    escape(name, true)
}

/// A message for a result line: printable ASCII and spaces as is, line breaks as `\n` / `\r`, every
/// other character as `\u{..}`, so that a message quoting case content stays on its line and cannot
/// move the cursor of a terminal.
pub fn escape_text(text: &str) -> String {
    escape(text, false)
}

/// FNV-1a 64: a short, stable tag that keeps sanitized names of different cases apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Longest sanitized stem before its tag (file names stay far below the usual 255-byte limit).
const MAX_STEM: usize = 100;

/// A file stem made from a case name: ASCII letters, digits, `_`, `-` and `.` are kept, anything else
/// becomes `_`. A name that needed any change (or is empty, starts with `.` or `-`, is longer than 100
/// characters or is a reserved device name on Windows) gets `-` and 16 hex digits of a hash of the
/// original name appended, so that `a/b` and `a_b` still get different files. The result contains no
/// path separator and is never `.`, `..` or hidden.
pub fn sanitize_file_stem(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = s.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(base.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((base.starts_with("COM") || base.starts_with("LPT"))
            && base.len() == 4
            && base.as_bytes()[3].is_ascii_digit());
    let changed = s != name || s.is_empty() || s.starts_with(['.', '-']) || s.len() > MAX_STEM;
    if changed || reserved {
        // ASCII only by now, so truncating at a byte count is at a character boundary.
        s.truncate(MAX_STEM);
        if s.is_empty() || s.starts_with(['.', '-']) {
            s.insert(0, '_');
        }
        let _ = write!(s, "-{:016x}", fnv1a(name.as_bytes()));
    }
    s
}

/// The output folder of a run: hands out one file per case, named from the sanitized case name, each
/// checked to lie directly in the folder, none twice (compared without letter case, for file systems
/// that ignore it).
#[derive(Debug)]
pub struct EmitDir {
    dir: PathBuf,
    used: HashSet<String>,
}

/// The file one case's results go to. Results are written to a hidden temporary file beside it and
/// renamed over it when complete ([`EmitTarget::commit`]), so a case that fails half-way leaves no
/// partial file and a link already at the final name is replaced, not followed.
#[derive(Debug)]
pub struct EmitTarget {
    /// The final path, inside the output folder.
    pub path: PathBuf,
    /// Its file name.
    pub file_name: String,
    /// `true` when the file name is not `<case name>.json` (the name was sanitized or disambiguated).
    pub renamed: bool,
    tmp: PathBuf,
}

impl EmitDir {
    /// Creates the folder if needed and resolves it to an absolute path.
    pub fn create(dir: &Path) -> io::Result<EmitDir> {
        std::fs::create_dir_all(dir)?;
        Ok(EmitDir {
            dir: std::fs::canonicalize(dir)?,
            used: HashSet::new(),
        })
    }

    /// The folder (absolute).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file for a case named `name`: `<sanitized>.json`, or `<sanitized>-2.json`, ... when an
    /// earlier case of this run already has that file name.
    pub fn reserve(&mut self, name: &str) -> io::Result<EmitTarget> {
        let stem = sanitize_file_stem(name);
        let mut file_name = format!("{stem}.json");
        let mut k = 1u64;
        while self.used.contains(&file_name.to_lowercase()) {
            k += 1;
            file_name = format!("{stem}-{k}.json");
        }
        let path = self.dir.join(&file_name);
        // The stem cannot hold a separator, but the check is what guarantees it: exactly one normal
        // component, directly below the folder.
        let single = Path::new(&file_name)
            .components()
            .map(|c| matches!(c, Component::Normal(_)))
            .collect::<Vec<_>>()
            == [true];
        if !single || path.parent() != Some(self.dir.as_path()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file name {file_name:?} would leave {}", self.dir.display()),
            ));
        }
        self.used.insert(file_name.to_lowercase());
        let tmp = self
            .dir
            .join(format!(".{file_name}.tmp-{}", std::process::id()));
        Ok(EmitTarget {
            renamed: file_name != format!("{name}.json"),
            path,
            file_name,
            tmp,
        })
    }
}

impl EmitTarget {
    /// Opens the temporary file (created new: never an existing file or link) and writes the head of
    /// the results for case `name`.
    pub fn create(&self, name: &str) -> io::Result<ResultWriter<BufWriter<File>>> {
        // A temporary file left by a crashed run of the same process id is ours to replace.
        let _ = std::fs::remove_file(&self.tmp);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.tmp)?;
        ResultWriter::new(BufWriter::new(f), name)
    }

    /// Completes the results and moves them to [`EmitTarget::path`].
    pub fn commit(&self, writer: ResultWriter<BufWriter<File>>) -> io::Result<()> {
        let done = writer.finish().and_then(|w| {
            w.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
        });
        match done.and_then(|()| std::fs::rename(&self.tmp, &self.path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Removes the temporary file (the case did not complete).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `{"name": ..., "expected": [state, ...]}` one state at a time (what `replay --emit` writes
/// and [`read_emitted`] reads). Numbers are the shortest form that reads back to the same float32
/// (learning rates: float64); NaN and infinities are written as `"NaN"`, `"Infinity"`, `"-Infinity"`.
#[derive(Debug)]
pub struct ResultWriter<W: Write> {
    out: W,
    first: bool,
}

impl<W: Write> ResultWriter<W> {
    /// Writes the head of the object for case `name` (the name as a JSON string: any content is
    /// escaped by JSON's rules).
    pub fn new(mut out: W, name: &str) -> io::Result<Self> {
        out.write_all(b"{\"name\":")?;
        serde_json::to_writer(&mut out, name)?;
        out.write_all(b",\"expected\":[\n")?;
        Ok(ResultWriter { out, first: true })
    }

    /// Appends one step's state.
    pub fn step(&mut self, state: &StepState) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, state)?;
        Ok(())
    }

    /// Closes the object and returns the writer (flushed).
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The JSON text [`ResultWriter`] writes for `states`.
pub fn emit_json(name: &str, states: &[StepState]) -> String {
    let written = ResultWriter::new(Vec::new(), name).and_then(|mut w| {
        for s in states {
            w.step(s)?;
        }
        w.finish()
    });
    // Writing to a vector cannot fail and serde_json writes UTF-8; neither fallback is reachable.
    String::from_utf8(written.unwrap_or_default()).unwrap_or_default()
}

/// Results as `replay --emit` writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"name\": ..., \"expected\": [...]}"
)]
pub struct EmittedResults {
    /// The case's name.
    pub name: String,
    /// The state after each step.
    #[serde(deserialize_with = "values::objects")]
    pub expected: Vec<StepState>,
}

/// Reads results written by [`ResultWriter`] / [`emit_json`] (non-finite strings included), as
/// strictly as a case.
pub fn read_emitted(text: &str) -> Result<EmittedResults> {
    let mut de = serde_json::Deserializer::from_str(text);
    let values::Obj(r): values::Obj<EmittedResults> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| invalid("?", parse::describe(e)))?;
    de.end()
        .map_err(|e| invalid(&r.name, format!("after the results: {e}")))?;
    Ok(r)
}
