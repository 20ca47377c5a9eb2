//! Loading a distributed checkpoint written by another number of ranks: each rank rebuilds its shard
//! optimizer's checkpoint from the old ranks' files (every piece's stored bytes copied by variable
//! coordinates, 16-bit values bit for bit), with the old step counts, and loads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use super::*;
use crate::checkpoint::{from_st_dtype, Contents, Tensor};

/// A piece's variable name in a shard optimizer: the variable's own name when the piece is all of it.
pub(super) fn piece_name(v: &FlatVar, p: &Piece) -> String {
    if p.len == v.len {
        v.name.clone()
    } else {
        format!("{}[{}..{}]", v.name, p.start, p.start + p.len)
    }
}

/// The layout a manifest describes (`None` when it is not one).
pub(super) fn manifest_layout(m: &serde_json::Value) -> Option<ShardLayout> {
    let vars = m["variables"]
        .as_array()?
        .iter()
        .map(|v| {
            let shape: Vec<usize> = v["shape"]
                .as_array()?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()?;
            let row_len = if shape.len() <= 1 {
                1
            } else {
                shape[1..].iter().product()
            };
            Some(FlatVar {
                name: v["name"].as_str()?.to_string(),
                offset: v["offset"].as_u64()? as usize,
                len: v["len"].as_u64()? as usize,
                shape,
                row_len,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ShardLayout {
        vars,
        world: m["world_size"].as_u64()? as usize,
        shard: m["shard_elements"].as_u64()? as usize,
        used: m["used_elements"].as_u64()? as usize,
    })
}

/// `slots/<slot>/` or `variables/`, and the rest (a piece's name, which may itself hold `/`).
fn split_tensor_name(name: &str) -> Option<(String, &str)> {
    if let Some(rest) = name.strip_prefix("variables/") {
        return Some(("variables/".into(), rest));
    }
    let rest = name.strip_prefix("slots/")?;
    let (slot, piece) = rest.split_once('/')?;
    Some((format!("slots/{slot}/"), piece))
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl ShardedRmsProp {
    /// This rank's part of a checkpoint written by `old.world` ranks (same variables), loaded into its
    /// shard optimizer.
    pub(super) fn load_resharded(&mut self, dir: &Path, old: &ShardLayout) -> Result<()> {
        let rank = self.rank();
        let old_file = |t: usize| dir.join(format!("rank-{t}-of-{}.safetensors", old.world));
        // This shard's own checkpoint is the template: tensor names, types, shapes, metadata.
        let template = dir.join(format!(".reshard-template-{rank}.safetensors"));
        self.shard.save_checkpoint(&template, true)?;
        let bytes = std::fs::read(&template).map_err(|e| bad(&template, e.to_string()));
        let _ = std::fs::remove_file(&template);
        let bytes = bytes?;
        let (_, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(&template, e.to_string()))?;
        let mut metadata = meta.metadata().clone().unwrap_or_default();
        let mine = SafeTensors::deserialize(&bytes).map_err(|e| bad(&template, e.to_string()))?;
        let mut files: HashMap<usize, (PathBuf, Vec<u8>)> = HashMap::new();
        let load = |files: &mut HashMap<usize, (PathBuf, Vec<u8>)>, t: usize| -> Result<()> {
            if let std::collections::hash_map::Entry::Vacant(e) = files.entry(t) {
                let path = old_file(t);
                let data = std::fs::read(&path).map_err(|err| bad(&path, err.to_string()))?;
                e.insert((path, data));
            }
            Ok(())
        };
        // The configuration, step counts and loss scale of the old rank 0.
        load(&mut files, 0)?;
        {
            let (path, data) = &files[&0];
            let (_, m0) = SafeTensors::read_metadata(data).map_err(|e| bad(path, e.to_string()))?;
            let m0 = m0.metadata().clone().unwrap_or_default();
            if m0.get("config") != metadata.get("config") {
                return Err(bad(path, "written with another configuration"));
            }
            for key in ["iterations", "skipped_steps", "loss_scale_factor"] {
                match m0.get(key) {
                    Some(v) => metadata.insert(key.to_string(), v.clone()),
                    None => metadata.remove(key),
                };
            }
        }
        metadata.remove("checksum");
        let names: HashMap<String, usize> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(k, p)| (piece_name(&self.layout.vars[p.var], p), k))
            .collect();
        let old_pieces: Vec<Vec<Piece>> = (0..old.world).map(|r| old.pieces(r)).collect();
        let mut tensors = Vec::new();
        for (name, view) in mine.tensors() {
            let (prefix, rest) =
                split_tensor_name(&name).ok_or_else(|| bad(&template, format!("tensor {name}")))?;
            let p = names
                .get(rest)
                .map(|&k| &self.pieces[k])
                .ok_or_else(|| bad(&template, format!("tensor {name}: no such piece")))?;
            let size = view.data().len() / p.len.max(1);
            let mut out = vec![0u8; view.data().len()];
            let mut filled = 0;
            for (t, pieces) in old_pieces.iter().enumerate() {
                for q in pieces.iter().filter(|q| q.var == p.var) {
                    let (a, b) = (p.start.max(q.start), (p.start + p.len).min(q.start + q.len));
                    if a >= b {
                        continue;
                    }
                    load(&mut files, t)?;
                    let (path, data) = &files[&t];
                    let st =
                        SafeTensors::deserialize(data).map_err(|e| bad(path, e.to_string()))?;
                    let old_name = format!("{prefix}{}", piece_name(&old.vars[q.var], q));
                    let ov = st
                        .tensor(&old_name)
                        .map_err(|e| bad(path, format!("tensor {old_name}: {e}")))?;
                    if ov.dtype() != view.dtype() || ov.data().len() != q.len * size {
                        return Err(bad(
                            path,
                            format!("tensor {old_name}: another type or size"),
                        ));
                    }
                    out[(a - p.start) * size..(b - p.start) * size]
                        .copy_from_slice(&ov.data()[(a - q.start) * size..(b - q.start) * size]);
                    filled += b - a;
                }
            }
            if filled != p.len {
                let path = old_file(0);
                return Err(bad(
                    &path,
                    format!("{name}: {filled} of {} elements found", p.len),
                ));
            }
            let dtype = from_st_dtype(view.dtype())
                .ok_or_else(|| bad(&template, format!("tensor {name}: type {:?}", view.dtype())))?;
            tensors.push(Tensor {
                name: name.clone(),
                shape: view.shape().to_vec(),
                dtype,
                bytes: out,
            });
        }
        let target = dir.join(format!(
            ".resharded-{rank}-of-{}.safetensors",
            self.world_size()
        ));
        crate::checkpoint::write(&target, Contents { metadata, tensors })?;
        let result = self.shard.load_checkpoint(&target);
        let _ = std::fs::remove_file(&target);
        result
    }
}
