//! Reading a case: strict deserialization with field paths in the errors, the consistency checks that
//! need more than one field, and what a case needs that the crate does not have (`config` itself is
//! read in `config.rs`).

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::values::{self, F32s, IndexList};
use super::{invalid, Case, CaseGradient, Limits, TolerancePair};
use crate::config::Preset;
use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// The format tag this reader accepts.
const FORMAT_TAG: &str = "rmsprop-case/1";

/// Slot names a case may list (`ema` belongs to the unsupported EMA feature but is a known name).
const SLOT_NAMES: [&str; 4] = ["velocity", "momentum", "average_gradient", "ema"];

impl<'de> Deserialize<'de> for CaseGradient {
    // By hand rather than `#[serde(tag = "kind")]`: serde buffers internally tagged enums into an
    // untyped tree (many times the text's size for number arrays, and field paths are lost inside
    // it); this reads the values straight into their vectors, in any key order.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CaseGradient;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a gradient object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CaseGradient, A::Error> {
                const KEYS: &[&str] = &["kind", "indices", "values"];
                let (mut kind, mut indices, mut vals) = (None::<String>, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "kind" if kind.is_none() => kind = Some(map.next_value()?),
                        "indices" if indices.is_none() => {
                            indices = Some(map.next_value::<IndexList>()?.0)
                        }
                        "values" if vals.is_none() => vals = Some(map.next_value::<F32s>()?.0),
                        "kind" | "indices" | "values" => {
                            return Err(de::Error::duplicate_field(match key.as_str() {
                                "kind" => "kind",
                                "indices" => "indices",
                                _ => "values",
                            }))
                        }
                        _ => return Err(de::Error::unknown_field(&key, KEYS)),
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                let values = vals.ok_or_else(|| de::Error::missing_field("values"))?;
                match kind.as_str() {
                    "dense" if indices.is_some() => Err(de::Error::custom(
                        "a dense gradient has no `indices` (sparse ones have \"kind\": \"sparse\")",
                    )),
                    "dense" => Ok(CaseGradient::Dense { values }),
                    "sparse" => Ok(CaseGradient::Sparse {
                        indices: indices.ok_or_else(|| de::Error::missing_field("indices"))?,
                        values,
                    }),
                    other => Err(de::Error::custom(format_args!(
                        "unknown gradient kind {other:?} (expected \"dense\" or \"sparse\")"
                    ))),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// Just the name, for naming a case whose full reading failed; everything else is skipped without
/// being stored.
#[derive(Deserialize)]
struct NameProbe {
    name: Option<String>,
}

fn probe_name(text: &str) -> Option<String> {
    serde_json::from_str::<NameProbe>(text).ok()?.name
}

/// `serde`'s message, reworded to start from the field path: `config.rho: expected a number, got
/// string "0.5" (line 9, column 16)`.
pub(super) fn describe(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let mut msg = inner.to_string();
    let mut at = String::new();
    if inner.line() != 0 {
        let suffix = format!(" at line {} column {}", inner.line(), inner.column());
        if let Some(m) = msg.strip_suffix(&suffix) {
            msg = m.to_string();
            at = format!(" (line {}, column {})", inner.line(), inner.column());
        }
    }
    // serde_path_to_error writes "." for the top level.
    let mut path = if path == "." { String::new() } else { path };
    // Whether the key is already the last segment depends on where the error was raised (while
    // reading the key, or by a visitor after it): add it only when it is not.
    let key_path = |path: &str, key: &str| {
        if path.is_empty() || path == key {
            key.to_string()
        } else if path.ends_with(&format!(".{key}")) {
            path.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let reworded = if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    {
        rest.rsplit_once(", expected ")
            .map(|(got, want)| format!("expected {want}, got {got}"))
    } else if let Some(rest) = msg.strip_prefix("unknown field `") {
        rest.split_once('`').map(|(key, known)| {
            path = key_path(&path, key);
            let known = known
                .strip_prefix(", expected one of ")
                .or_else(|| known.strip_prefix(", expected "))
                .unwrap_or("none");
            format!("unknown key (known keys: {known})")
        })
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        rest.strip_suffix('`').map(|key| {
            path = key_path(&path, key);
            "missing (required)".to_string()
        })
    } else if let Some(rest) = msg.strip_prefix("duplicate field `") {
        rest.strip_suffix('`').map(|key| {
            path = key_path(&path, key);
            "given twice".to_string()
        })
    } else {
        None
    };
    let msg = reworded.unwrap_or(msg);
    if path.is_empty() {
        format!("{msg}{at}")
    } else {
        format!("{path}: {msg}{at}")
    }
}

/// `a * b * ...` or `None` on overflow.
fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Case {
    /// Parses and validates a case from JSON text, under the default [`Limits`].
    pub fn from_json(text: &str) -> Result<Case> {
        Case::from_json_limited(text, &Limits::default())
    }

    /// Parses and validates a case from JSON text. A text longer than [`Limits::max_text_bytes`] is
    /// refused before it is parsed.
    pub fn from_json_limited(text: &str, limits: &Limits) -> Result<Case> {
        let name = || probe_name(text).unwrap_or_else(|| "?".into());
        if text.len() as u64 > limits.max_text_bytes() {
            return Err(invalid(
                &name(),
                format!(
                    "the case text is {} bytes; reading it could take up to {}x that, over the \
                     memory budget of {} bytes",
                    text.len(),
                    super::PARSE_EXPANSION,
                    limits.memory_bytes
                ),
            ));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let values::Obj(case): values::Obj<Case> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| invalid(&name(), describe(e)))?;
        de.end()
            .map_err(|e| invalid(&case.name, format!("after the case: {e}")))?;
        let mut case = case;
        case.validate()?;
        case.round_to_dtype()?;
        Ok(case)
    }

    /// Reads a case from a file, under the default [`Limits`].
    pub fn from_path(path: &Path) -> Result<Case> {
        Case::from_path_limited(path, &Limits::default())
    }

    /// Reads a case from a file. At most [`Limits::max_text_bytes`] are read (a larger file, or an
    /// endless one such as a device, is refused). Errors before the case's name is known are named
    /// after the file's stem.
    pub fn from_path_limited(path: &Path, limits: &Limits) -> Result<Case> {
        let stem = || {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "?".into())
        };
        let io = |e: std::io::Error| invalid(&stem(), format!("{}: {e}", path.display()));
        let max = limits.max_text_bytes();
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        // One byte past the limit tells "exactly at the limit" from "over it".
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > max {
            return Err(invalid(
                &stem(),
                format!(
                    "{}: longer than {max} bytes, the most the memory budget of {} bytes reads",
                    path.display(),
                    limits.memory_bytes
                ),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| invalid(&stem(), format!("{}: not UTF-8: {e}", path.display())))?;
        Case::from_json_limited(&text, limits)
    }

    fn validate(&self) -> Result<()> {
        let n = &self.name;
        let err = |m: String| Err(invalid(n, m));
        if self.format != FORMAT_TAG {
            return err(format!(
                "format: {:?}, expected \"{FORMAT_TAG}\"",
                self.format
            ));
        }
        if !["float32", "float16", "bfloat16"].contains(&self.dtype.as_str()) {
            return err(format!(
                "dtype: unknown type {:?} (expected \"float32\", \"float16\" or \"bfloat16\")",
                self.dtype
            ));
        }
        if Preset::from_name(&self.semantics).is_none() {
            return err(format!(
                "semantics: unknown semantics {:?} (expected keras, keras_legacy, tf_raw, tf1, \
                 torch or optax)",
                self.semantics
            ));
        }
        let mut lens = Vec::with_capacity(self.variables.len());
        for (i, v) in self.variables.iter().enumerate() {
            let Some(len) = product(&v.shape) else {
                return err(format!(
                    "variables[{i}].shape: {:?} has more elements than this machine can index",
                    v.shape
                ));
            };
            if v.init.len() != len {
                return err(format!(
                    "variable {:?}: shape {:?} needs {len} values, init has {}",
                    v.name,
                    v.shape,
                    v.init.len()
                ));
            }
            if self.variables[..i].iter().any(|w| w.name == v.name) {
                return err(format!("variables[{i}]: name {:?} used twice", v.name));
            }
            lens.push(len);
        }
        for (t, step) in self.steps.iter().enumerate() {
            if step.grads.len() != self.variables.len() {
                return err(format!(
                    "step {}: {} gradients for {} variables",
                    t + 1,
                    step.grads.len(),
                    self.variables.len()
                ));
            }
            for ((g, v), &len) in step.grads.iter().zip(&self.variables).zip(&lens) {
                match g {
                    CaseGradient::Dense { values } if values.len() != len => {
                        return err(format!(
                            "step {}: dense gradient of {:?} has {} values, shape {:?} needs {len}",
                            t + 1,
                            v.name,
                            values.len(),
                            v.shape
                        ))
                    }
                    CaseGradient::Dense { .. } => {}
                    CaseGradient::Sparse { indices, values } => {
                        let Some((&rows, rest)) = v.shape.split_first() else {
                            return err(format!(
                                "step {}: sparse gradient of scalar {:?}",
                                t + 1,
                                v.name
                            ));
                        };
                        // No overflow: a row is part of a variable whose size fits.
                        let row_len = product(rest).unwrap_or(usize::MAX);
                        if let Some(&bad) =
                            indices.iter().find(|&&i| i < 0 || i as u64 >= rows as u64)
                        {
                            return err(format!(
                                "step {}: index {bad} of {:?} is outside [0, {rows})",
                                t + 1,
                                v.name
                            ));
                        }
                        if indices.len().checked_mul(row_len) != Some(values.len()) {
                            return err(format!(
                                "step {}: sparse gradient of {:?} has {} values, {} indices x row \
                                 length {row_len} need {}",
                                t + 1,
                                v.name,
                                values.len(),
                                indices.len(),
                                indices.len() as u128 * row_len as u128
                            ));
                        }
                    }
                }
            }
        }
        if let Some(expected) = &self.expected {
            if expected.len() != self.steps.len() {
                return err(format!(
                    "{} expected entries for {} steps",
                    expected.len(),
                    self.steps.len()
                ));
            }
            for (t, e) in expected.iter().enumerate() {
                let at = format!("expected[{t}]");
                if e.variables.len() != lens.len() {
                    return err(format!(
                        "{at}.variables: {} arrays for {} variables",
                        e.variables.len(),
                        lens.len()
                    ));
                }
                for (k, (a, &len)) in e.variables.iter().zip(&lens).enumerate() {
                    if a.len() != len {
                        return err(format!(
                            "{at}.variables[{k}]: {} values, the variable has {len}",
                            a.len()
                        ));
                    }
                }
                for (slot, arrays) in &e.slots {
                    if !SLOT_NAMES.contains(&slot.as_str()) {
                        return err(format!(
                            "{at}.slots: unknown slot {slot:?} (known: {})",
                            SLOT_NAMES.join(", ")
                        ));
                    }
                    if arrays.len() != lens.len() {
                        return err(format!(
                            "{at}.slots.{slot}: {} entries for {} variables",
                            arrays.len(),
                            lens.len()
                        ));
                    }
                    for (k, (a, &len)) in arrays.iter().zip(&lens).enumerate() {
                        if let Some(a) = a.as_ref().filter(|a| a.len() != len) {
                            return err(format!(
                                "{at}.slots.{slot}[{k}]: {} values, the variable has {len}",
                                a.len()
                            ));
                        }
                    }
                }
            }
        }
        let tol = &self.tolerance;
        let pairs = std::iter::once((
            "tolerance".to_string(),
            TolerancePair {
                rtol: tol.rtol,
                atol: tol.atol,
            },
        ))
        .chain(
            tol.variables
                .map(|p| ("tolerance.variables".to_string(), p)),
        )
        .chain(
            tol.slots
                .iter()
                .map(|(s, &p)| (format!("tolerance.slots.{s}"), p)),
        );
        for (at, p) in pairs {
            // A NaN would make every comparison pass; JSON cannot write one, but a negative or
            // infinite bound is just as meaningless.
            if !(p.rtol.is_finite() && p.rtol >= 0.0 && p.atol.is_finite() && p.atol >= 0.0) {
                return err(format!(
                    "{at}: rtol {} and atol {} must be finite and >= 0",
                    p.rtol, p.atol
                ));
            }
        }
        if let Some(s) = tol.slots.keys().find(|s| !SLOT_NAMES.contains(&s.as_str())) {
            return err(format!("tolerance.slots: unknown slot {s:?}"));
        }
        // FORMAT.md has both keys in every case with sparse steps; a preset's own rule could differ from
        // the framework the case records, so a missing one is an error, not a default.
        let sparse = self
            .steps
            .iter()
            .flat_map(|s| &s.grads)
            .any(|g| matches!(g, CaseGradient::Sparse { .. }));
        if sparse {
            if self.config.sparse_lazy.is_none() {
                return err("config.sparse_mode: missing (required with sparse steps)".into());
            }
            if self.config.duplicate_indices.is_none() {
                return err(
                    "config.duplicate_indices: missing (required with sparse steps)".into(),
                );
            }
        }
        if let Some(k) = self.config.gradient_accumulation_steps.filter(|&k| k < 2) {
            return err(format!(
                "config.gradient_accumulation_steps: {k}, must be an integer >= 2"
            ));
        }
        if self.unsupported().is_some() {
            // Read, then reported UNSUPPORTED (the optimizer refuses what it names).
            return Ok(());
        }
        self.optimizer_config().map(|_| ())
    }

    /// The type everything in the case is stored in (`dtype`; validation accepts only the three).
    pub fn element_type(&self) -> Dtype {
        Dtype::parse(&self.dtype).unwrap_or_default()
    }

    /// Rounds every stored value of the case (initial values, gradients, expected variables and slots)
    /// to [`Case::element_type`], to nearest even: FORMAT.md writes float16/bfloat16 values as short
    /// decimals within 1/16 ulp of them, so this gives their exact bits. (They are read as float32 first;
    /// rounding a value that close to one of the type twice gives the same result.) A finite value beyond
    /// the type's range is an error, as one beyond float32's is. The learning rates are not stored
    /// values and stay as written.
    fn round_to_dtype(&mut self) -> Result<()> {
        let d = self.element_type();
        if d == Dtype::F32 {
            return Ok(());
        }
        let name = self.name.clone();
        let round = |at: &dyn Fn() -> String, xs: &mut [f32]| -> Result<()> {
            for (i, x) in xs.iter_mut().enumerate() {
                let r = d.round(*x);
                if x.is_finite() && !r.is_finite() {
                    return Err(invalid(
                        &name,
                        format!("{}[{i}]: {x} is beyond the range of {}", at(), self.dtype),
                    ));
                }
                *x = r;
            }
            Ok(())
        };
        for (k, v) in self.variables.iter_mut().enumerate() {
            round(&|| format!("variables[{k}].init"), &mut v.init)?;
        }
        for (t, step) in self.steps.iter_mut().enumerate() {
            for (k, g) in step.grads.iter_mut().enumerate() {
                let values = match g {
                    CaseGradient::Dense { values } | CaseGradient::Sparse { values, .. } => values,
                };
                round(&|| format!("steps[{t}].grads[{k}].values"), values)?;
            }
        }
        for (t, e) in self.expected.iter_mut().flatten().enumerate() {
            for (k, a) in e.variables.iter_mut().enumerate() {
                round(&|| format!("expected[{t}].variables[{k}]"), a)?;
            }
            for (slot, arrays) in e.slots.iter_mut() {
                for (k, a) in arrays.iter_mut().enumerate() {
                    if let Some(a) = a {
                        round(&|| format!("expected[{t}].slots.{slot}[{k}]"), a)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What this crate cannot run in the case, naming each key (`dtype "float16" with use_ema (...)`),
    /// or `None` when it can run it. Every key of FORMAT.md is implemented; what is missing is the Keras
    /// base-class features (EMA, gradient accumulation, loss scaling) with a 16-bit `dtype`.
    pub fn unsupported(&self) -> Option<String> {
        let mut missing = Vec::new();
        if self.element_type() != Dtype::F32 {
            let c = &self.config;
            let keys: Vec<&str> = [
                ("use_ema", c.use_ema == Some(true)),
                (
                    "gradient_accumulation_steps",
                    c.gradient_accumulation_steps.is_some(),
                ),
                ("loss_scale_factor", c.loss_scale_factor.is_some()),
            ]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .collect();
            if !keys.is_empty() {
                missing.push(format!(
                    "dtype {:?} with {} (the Keras base-class features are float32 only)",
                    self.dtype,
                    keys.join(", ")
                ));
            }
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// [`Error::Unsupported`] when [`Case::unsupported`] names something.
    pub fn check_supported(&self) -> Result<()> {
        match self.unsupported() {
            Some(what) => Err(Error::Unsupported {
                name: self.name.clone(),
                what,
            }),
            None => Ok(()),
        }
    }
}
