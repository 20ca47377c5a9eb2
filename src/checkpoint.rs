//! Checkpoints: the complete optimizer state (every slot, the step count, the skipped-step count, the
//! configuration and preset, and optionally the variables) in the safetensors format, so that Python
//! users can open it (`safetensors.numpy.load_file`).
//!
//! Tensors are named `slots/<slot>/<variable>` and `variables/<variable>` (f32, the variable's shape).
//! The metadata holds `format`, `preset`, `config` (JSON), `iterations`, `skipped_steps`, `variables`
//! (JSON list of names and shapes), `var_options` (JSON list, per variable, of its options as they
//! resolve: see [`var_options_json`]) and `checksum` (FNV-1a 64 of the tensors' names and bytes). A
//! variable's slot tensors are those it keeps (with per-variable options, not every variable has every
//! slot). Writing
//! is atomic: a temporary file beside the target is written,
//! flushed to disk and renamed over it, so a crash mid-save leaves the previous checkpoint intact.
//! Restoring reads and checks everything (format, preset, configuration, names, shapes, dtypes, sizes)
//! before it writes anything to the GPU: a truncated, corrupted or mismatched file (per-variable options
//! included; a file without `var_options` holds variables without options) is an [`Error::Checkpoint`]
//! and the optimizer is left exactly as it was.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};

use crate::config::{LearningRate, RmsPropConfig, WeightDecay};
use crate::error::{Error, Result};
use crate::var_options::VarHyper;

/// FNV-1a (64-bit) over the tensors' names and bytes in name order: safetensors has no checksum, and a
/// flipped bit in the data would otherwise restore silently.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<(&str, &[u8])> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, data) in sorted {
        for &b in name.as_bytes().iter().chain(data) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The `format` metadata value this crate writes and reads.
pub const FORMAT: &str = "wgpu-rmsprop-checkpoint/1";

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The configuration as JSON, every knob that changes the numbers (closures as `"closure"`).
pub fn config_json(c: &RmsPropConfig) -> Value {
    let lr = match c.learning_rate() {
        LearningRate::Constant(x) => json!(x),
        LearningRate::Schedule(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        LearningRate::FnOfStep(_) | LearningRate::Callable(_) => json!("closure"),
    };
    let (wd_mode, wd) = match c.weight_decay() {
        WeightDecay::None => ("none", 0.0),
        WeightDecay::Decoupled(x) => ("decoupled", x),
        WeightDecay::L2(x) => ("l2", x),
    };
    let mut v = json!({
        "learning_rate": lr,
        "rho": c.rho(),
        "momentum": c.momentum(),
        "epsilon": c.epsilon(),
        "centered": c.centered(),
        "epsilon_placement": format!("{:?}", c.epsilon_placement()),
        "momentum_form": format!("{:?}", c.momentum_form()),
        "average_form": format!("{:?}", c.average_form()),
        "momentum_slot": c.has_momentum(),
        "initial_accumulator_value": c.initial_accumulator_value(),
        "bias_correction": c.bias_correction(),
        "nesterov": c.nesterov(),
        "maximize": c.maximize(),
        "weight_decay_mode": wd_mode,
        "weight_decay": wd,
        "clipvalue": c.clipvalue(),
        "clipnorm": c.clipnorm(),
        "global_clipnorm": c.global_clipnorm(),
        "sparse_mode": format!("{:?}", c.sparse_mode()),
        "duplicate_indices": format!("{:?}", c.duplicate_indices()),
        "non_finite": format!("{:?}", c.non_finite()),
    });
    // Present only when set, so that checkpoints written before the key existed still match. The loss
    // scale is not part of it: dynamic loss scaling changes it between steps.
    if let (Some(n), Some(map)) = (c.gradient_accumulation_steps(), v.as_object_mut()) {
        map.insert("gradient_accumulation_steps".into(), json!(n));
    }
    if let (true, Some(map)) = (c.use_ema(), v.as_object_mut()) {
        map.insert("use_ema".into(), json!(true));
        map.insert("ema_momentum".into(), json!(c.ema_momentum()));
        map.insert(
            "ema_overwrite_frequency".into(),
            json!(c.ema_overwrite_frequency()),
        );
    }
    v
}

/// One variable's options as they resolve (what the kernels read, and whether it is frozen), as JSON:
/// two option sets that give the same numbers give the same JSON.
pub fn var_options_json(h: &VarHyper, frozen: bool) -> Value {
    json!({
        "lr_multiplier": h.lr_multiplier,
        "lr_addend": h.lr_addend,
        "rho": h.rho,
        "momentum": h.momentum,
        "epsilon": h.epsilon,
        "weight_decay": if h.decay { json!(h.weight_decay) } else { Value::Null },
        "momentum_slot": h.momentum_slot,
        "centered": h.centered,
        "maximize": h.maximize,
        "frozen": frozen,
    })
}

/// What [`crate::RmsProp::save_checkpoint`] gathers: metadata and named f32 tensors.
pub(crate) struct Contents {
    pub metadata: HashMap<String, String>,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Writes `contents` to `path` atomically (temporary file, flush, rename, directory sync).
pub(crate) fn write(path: &Path, mut contents: Contents) -> Result<()> {
    let sum = checksum(
        contents
            .tensors
            .iter()
            .map(|(name, _, data)| (name.as_str(), bytemuck::cast_slice::<f32, u8>(data))),
    );
    contents.metadata.insert("checksum".into(), sum);
    let views: Vec<(String, TensorView)> = contents
        .tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map(|v| (name.clone(), v))
                .map_err(|e| fail(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(contents.metadata))
        .map_err(|e| fail(path, e.to_string()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(path, "not a file path"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| fail(path, e.to_string());
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A checkpoint read and checked against an optimizer's configuration and variables.
pub(crate) struct Restored {
    pub iterations: u64,
    pub skipped: u64,
    /// The loss scale factor when saved (it changes with dynamic loss scaling).
    pub loss_scale_factor: Option<f64>,
    /// Per variable (in the optimizer's order): its values if saved, then each kept slot's values.
    pub variables: Vec<Option<Vec<f32>>>,
    pub slots: Vec<Vec<Vec<f32>>>,
}

/// What a checkpoint must match.
pub(crate) struct Expected<'a> {
    pub config: &'a RmsPropConfig,
    /// `(name, shape)` of every variable.
    pub variables: &'a [(String, Vec<usize>)],
    /// The slot names of each variable.
    pub slots: &'a [Vec<&'a str>],
    /// Every variable's [`var_options_json`], as an array.
    pub var_options: Value,
    /// The same with default options, what a file without `var_options` holds.
    pub default_options: Value,
}

/// Reads `path` and checks it against what `expected` lists.
pub(crate) fn read(path: &Path, expected: &Expected<'_>) -> Result<Restored> {
    let (config, variables) = (expected.config, expected.variables);
    let bytes = std::fs::read(path).map_err(|e| fail(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| fail(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(path, e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| fail(path, format!("metadata `{k}` is missing")))
    };
    if get("format")? != FORMAT {
        return Err(fail(
            path,
            format!("format {:?}, expected {FORMAT:?}", get("format")?),
        ));
    }
    let preset = get("preset")?;
    if preset != config.preset_kind().name() {
        return Err(fail(
            path,
            format!(
                "preset {preset:?} in the checkpoint, {:?} here",
                config.preset_kind().name()
            ),
        ));
    }
    let names = st.names();
    let sum = checksum(
        names
            .iter()
            .filter_map(|&n| st.tensor(n).ok().map(|t| (n, t.data()))),
    );
    if get("checksum")? != &sum {
        return Err(fail(
            path,
            "checksum mismatch: the tensor data is corrupted",
        ));
    }
    let saved: Value =
        serde_json::from_str(get("config")?).map_err(|e| fail(path, format!("config: {e}")))?;
    let here = config_json(config);
    if let (Value::Object(saved), Value::Object(here)) = (&saved, &here) {
        for (k, v) in here {
            let s = saved.get(k).unwrap_or(&Value::Null);
            let closure = *v == json!("closure") || *s == json!("closure");
            if s != v && !closure {
                return Err(fail(
                    path,
                    format!("config `{k}` is {s} in the checkpoint, {v} here"),
                ));
            }
        }
        // Keys written only when set (gradient_accumulation_steps) must not be dropped either.
        if let Some((k, s)) = saved.iter().find(|(k, _)| !here.contains_key(*k)) {
            return Err(fail(
                path,
                format!("config `{k}` is {s} in the checkpoint, not set here"),
            ));
        }
    } else {
        return Err(fail(path, "config is not a JSON object"));
    }
    let number = |k: &str| -> Result<u64> {
        get(k)?
            .parse::<u64>()
            .map_err(|e| fail(path, format!("metadata `{k}`: {e}")))
    };
    let saved_options: Value = match meta.get("var_options") {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| fail(path, format!("var_options: {e}")))?
        }
        None => expected.default_options.clone(),
    };
    if let (Value::Array(saved), Value::Array(here)) = (&saved_options, &expected.var_options) {
        for (i, (s, h)) in saved.iter().zip(here).enumerate() {
            if s != h {
                let name = variables.get(i).map_or("?", |v| v.0.as_str());
                return Err(fail(
                    path,
                    format!(
                        "variable {name:?} has options {s} in the checkpoint, {h} here (set them \
                         after loading to change them)"
                    ),
                ));
            }
        }
    } else {
        return Err(fail(path, "var_options is not a JSON array"));
    }
    let iterations = number("iterations")?;
    let skipped = number("skipped_steps")?;
    let loss_scale_factor = match meta.get("loss_scale_factor") {
        None => None,
        Some(text) => {
            let f = text
                .parse::<f64>()
                .map_err(|e| fail(path, format!("metadata `loss_scale_factor`: {e}")))?;
            crate::config::check_loss_scale(f).map_err(|e| fail(path, e.to_string()))?;
            Some(f)
        }
    };
    let listed: Vec<(String, Vec<usize>)> = serde_json::from_str(get("variables")?)
        .map_err(|e| fail(path, format!("variables: {e}")))?;
    if listed != variables {
        return Err(fail(
            path,
            format!("variables {listed:?} in the checkpoint, {variables:?} here"),
        ));
    }
    let tensor = |name: &str, shape: &[usize], required: bool| -> Result<Option<Vec<f32>>> {
        match st.tensor(name) {
            Ok(t) => {
                if t.dtype() != Dtype::F32 {
                    return Err(fail(
                        path,
                        format!("tensor {name} is {:?}, expected F32", t.dtype()),
                    ));
                }
                if t.shape() != shape {
                    return Err(fail(
                        path,
                        format!(
                            "tensor {name} has shape {:?}, expected {shape:?}",
                            t.shape()
                        ),
                    ));
                }
                let data = t.data();
                let values = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Ok(Some(values))
            }
            Err(_) if !required => Ok(None),
            Err(e) => Err(fail(path, format!("tensor {name}: {e}"))),
        }
    };
    let mut out = Restored {
        iterations,
        skipped,
        loss_scale_factor,
        variables: Vec::new(),
        slots: Vec::new(),
    };
    for ((name, shape), slots) in variables.iter().zip(expected.slots) {
        out.variables
            .push(tensor(&format!("variables/{name}"), shape, false)?);
        let mut per = Vec::new();
        for slot in slots {
            per.push(tensor(&format!("slots/{slot}/{name}"), shape, true)?.unwrap_or_default());
        }
        out.slots.push(per);
    }
    Ok(out)
}
