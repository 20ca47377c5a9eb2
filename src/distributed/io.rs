//! Reads (this rank's full variables; slots gathered from every rank) and checkpoints (each rank its
//! shard, rank 0 a manifest).

use std::path::{Path, PathBuf};

use super::step::read_buffer;
use super::*;
use crate::step::types::Tensor;

/// Format tag of a distributed checkpoint's `manifest.json`.
pub const MANIFEST_FORMAT: &str = "wgpu-rmsprop-sharded/1";

impl ShardedRmsProp {
    /// Variable `var` as this rank holds it (read from its GPU buffer [`ShardedRmsProp::params`]).
    pub fn read_variable(&self, var: usize) -> Result<Vec<f32>> {
        let f = self
            .layout
            .vars
            .get(var)
            .ok_or_else(|| Error::UnknownVariable(format!("index {var}")))?;
        let all = read_buffer(&self.ctx, &self.params, self.layout.used)?;
        Ok(all[f.offset..f.offset + f.len].to_vec())
    }

    /// Every variable as this rank holds it, in one read.
    pub fn read_variables(&self) -> Result<Vec<Vec<f32>>> {
        let all = read_buffer(&self.ctx, &self.params, self.layout.used)?;
        Ok(self
            .layout
            .vars
            .iter()
            .map(|f| all[f.offset..f.offset + f.len].to_vec())
            .collect())
    }

    /// One slot of every variable, gathered from every rank (a collective call); `None` for a variable
    /// that does not keep it.
    pub fn gather_slot(&mut self, slot: Slot) -> Result<Vec<Option<Vec<f32>>>> {
        let bit = ALL_SLOTS.iter().position(|&s| s == slot).unwrap_or(0);
        let items: Vec<(VarId, Tensor)> = (0..self.pieces.len())
            .filter(|&k| self.kept[self.pieces[k].var] & (1 << bit) != 0)
            .map(|k| (self.ids[k], Tensor::Slot(slot)))
            .collect();
        let mut all = vec![0.0; self.layout.total()];
        if let Err(e) = self.gather_pieces(&items, &mut all) {
            self.fail(&e);
        }
        Ok(self
            .layout
            .vars
            .iter()
            .zip(&self.kept)
            .map(|(f, kept)| {
                (kept & (1 << bit) != 0).then(|| all[f.offset..f.offset + f.len].to_vec())
            })
            .collect())
    }

    fn shard_file(dir: &Path, rank: usize, world: usize) -> PathBuf {
        dir.join(format!("rank-{rank}-of-{world}.safetensors"))
    }

    /// Saves a checkpoint into folder `dir` (a collective call): every rank writes its shard
    /// optimizer's checkpoint (`rank-R-of-N.safetensors`, the crate's format with the rank's pieces as
    /// variables) and rank 0 writes `manifest.json` (world size, shard size, the variables and their
    /// offsets). All ranks need to see the same folder (a shared file system, or one machine). An error
    /// on any rank is an error on every rank.
    pub fn save_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let (rank, world) = (self.rank(), self.world_size());
        let mut result = std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint {
            path: dir.display().to_string(),
            message: e.to_string(),
        });
        if result.is_ok() {
            result = self
                .shard
                .save_checkpoint(&Self::shard_file(dir, rank, world), true);
        }
        if result.is_ok() && rank == 0 {
            result = self.write_manifest(dir);
        }
        self.agree(result, dir)
    }

    /// The same result on every rank: the local error, or an error naming the rank that failed.
    fn agree(&mut self, result: Result<()>, dir: &Path) -> Result<()> {
        let failed = self.comm.any(result.is_err());
        match result {
            Err(e) => Err(e),
            Ok(()) if failed => Err(Error::Checkpoint {
                path: dir.display().to_string(),
                message: "another rank failed (see its error)".into(),
            }),
            Ok(()) => Ok(()),
        }
    }

    fn manifest(&self) -> serde_json::Value {
        let vars: Vec<serde_json::Value> = self
            .layout
            .vars
            .iter()
            .map(|f| {
                serde_json::json!({"name": f.name, "shape": f.shape, "offset": f.offset, "len": f.len})
            })
            .collect();
        serde_json::json!({
            "format": MANIFEST_FORMAT,
            "world_size": self.world_size(),
            "shard_elements": self.layout.shard,
            "used_elements": self.layout.used,
            "variables": vars,
        })
    }

    fn write_manifest(&self, dir: &Path) -> Result<()> {
        let path = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(&self.manifest()).unwrap_or_default();
        let tmp = dir.join("manifest.json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Checkpoint {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// Loads a checkpoint written by [`ShardedRmsProp::save_checkpoint`] (a collective call): every
    /// rank's state and variables are restored bit for bit (the full variables are all-gathered from
    /// the restored shards). A checkpoint of another world size is re-sharded: each rank assembles its
    /// pieces from the old ranks' files (the stored bytes, by variable coordinates) with the old step
    /// counts. Other variables are [`Error::Checkpoint`]; a manifest of another world size whose layout
    /// cannot be read is [`Error::WorldSize`].
    ///
    /// A failure on every rank leaves every rank as it was (each shard optimizer refuses before
    /// changing anything). A failure on some ranks only (e.g. one corrupt shard file) would leave the
    /// ranks that loaded out of step with the others, so it ends the whole job (`MPI_Abort` on every
    /// rank, the failing rank's error on its stderr).
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let result = self.load_local(dir);
        let loaded_somewhere = self.comm.any(result.is_ok());
        let failed_somewhere = self.comm.any(result.is_err());
        if loaded_somewhere && failed_somewhere {
            let message = match &result {
                Err(e) => format!("this rank could not load its shard while others did: {e}"),
                Ok(()) => "another rank could not load its shard (see its error)".into(),
            };
            self.fail(&Error::Checkpoint {
                path: dir.display().to_string(),
                message,
            });
        }
        self.agree(result, dir)?;
        if let Err(e) = self.gather_params() {
            self.fail(&e);
        }
        Ok(())
    }

    fn load_local(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("manifest.json");
        let bad = |message: String| Error::Checkpoint {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let found: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if found["format"] != MANIFEST_FORMAT {
            return Err(bad(format!("not a {MANIFEST_FORMAT} manifest")));
        }
        if found != self.manifest() {
            // Another world size (or alignment): re-shard from the old ranks' files.
            let written = found["world_size"].as_u64().unwrap_or(0) as usize;
            let Some(old) = super::reshard::manifest_layout(&found) else {
                return Err(Error::WorldSize {
                    path: path.display().to_string(),
                    written,
                    now: self.world_size(),
                    hint: "its layout cannot be read to re-shard it",
                });
            };
            let same =
                |a: &FlatVar, b: &FlatVar| (&a.name, &a.shape, a.len) == (&b.name, &b.shape, b.len);
            if old.vars.len() != self.layout.vars.len()
                || old
                    .vars
                    .iter()
                    .zip(&self.layout.vars)
                    .any(|(a, b)| !same(a, b))
            {
                return Err(bad(
                    "its variables are not this optimizer's (names, shapes, in order)".into(),
                ));
            }
            return self.load_resharded(dir, &old);
        }
        let file = Self::shard_file(dir, self.rank(), self.world_size());
        self.shard.load_checkpoint(&file)
    }
}
