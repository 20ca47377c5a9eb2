//! The per-row side buffers of [`Gpu`]: `SparseMode::LazyExact`'s row counters and the row-wise
//! velocity, grown when variables are added (never in a step).

use super::Gpu;
use crate::context::create_buffer_checked;
use crate::error::{Error, Result};

impl Gpu {
    /// Grows the row counters of `SparseMode::LazyExact` to `bytes` (zero-filled past the old ones,
    /// which are copied in `encoder`), then rebinds. Nothing changes when they are large enough.
    pub fn grow_lazy_rows(&mut self, encoder: &mut wgpu::CommandEncoder, bytes: u64) -> Result<()> {
        if let Some(new) = self.grown_side(encoder, &self.lazy_rows, "lazy rows", bytes)? {
            self.lazy_rows = new;
            self.objects_created += 1;
            self.rebuild_bind_groups();
        }
        Ok(())
    }

    /// Grows the row-wise velocity to `bytes` as [`Gpu::grow_lazy_rows`] grows the row counters.
    pub fn grow_row_velocity(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bytes: u64,
    ) -> Result<()> {
        if let Some(new) = self.grown_side(encoder, &self.row_velocity, "row velocity", bytes)? {
            self.row_velocity = new;
            self.objects_created += 1;
            self.rebuild_bind_groups();
        }
        Ok(())
    }

    /// A per-row side buffer `old` grown to `bytes` (doubling, within one binding), its contents copied
    /// in `encoder`, the rest zero; `None` when it is large enough.
    fn grown_side(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        old: &wgpu::Buffer,
        name: &str,
        bytes: u64,
    ) -> Result<Option<wgpu::Buffer>> {
        if bytes <= old.size() {
            return Ok(None);
        }
        if bytes > self.binding_limit {
            return Err(Error::StepTooLarge {
                buffer: format!("{}/{name}", self.prefix),
                bytes,
                limit: self.binding_limit,
            });
        }
        let size = bytes
            .max(old.size().saturating_mul(2))
            .min(self.binding_limit & !15)
            .next_multiple_of(16);
        let new = create_buffer_checked(
            &self.device,
            &wgpu::BufferDescriptor {
                label: Some(&format!("{}/{name}", self.prefix)),
                size,
                usage: old.usage(),
                mapped_at_creation: false,
            },
        )?;
        encoder.copy_buffer_to_buffer(old, 0, &new, 0, old.size());
        Ok(Some(new))
    }
}
