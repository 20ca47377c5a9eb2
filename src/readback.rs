//! Read-back without blocking: any set of GPU ranges copied into one staging buffer with one submit and
//! mapped with one `map_async`, returned as a future ([`ReadBack`]) or waited for on that submission alone
//! ([`ReadBack::wait`]). Checkpoints read every tensor through one of these (one wait per save).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::create_buffer_checked;
use crate::error::{Error, Result};

type Mapped = std::result::Result<(), wgpu::BufferAsyncError>;

/// A read of several GPU ranges in flight: resolves to one `Vec<f32>` per range, in the order asked.
///
/// It is a [`Future`]; on native backends the map completes only when the device is polled, which
/// polling this future does (`PollType::Poll`, never blocking), so it can be awaited in an executor that
/// polls it again, or in a loop that polls the device. [`ReadBack::wait`] blocks on this read's own
/// submission instead.
#[must_use = "a read-back does nothing unless awaited or waited for"]
pub struct ReadBack {
    device: wgpu::Device,
    staging: wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
    /// (first float, floats) of each range in the staging buffer.
    parts: Vec<(usize, usize)>,
    mapped: Pin<Box<dyn Future<Output = Option<Mapped>> + Send>>,
}

impl std::fmt::Debug for ReadBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBack")
            .field("bytes", &self.staging.size())
            .field("parts", &self.parts.len())
            .finish()
    }
}

/// One range to read: `bytes` from byte `offset` of `buffer` (multiples of 4).
pub(crate) struct Range<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub bytes: u64,
}

impl ReadBack {
    /// Copies `ranges` (grouped into `parts` of consecutive ranges, each part one result: a variable
    /// split over several pool buffers is one part) into a fresh staging buffer, submits, and maps it.
    pub(crate) fn start(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        label: &str,
        ranges: &[Range<'_>],
        parts: &[usize],
    ) -> Result<ReadBack> {
        let total: u64 = ranges.iter().map(|r| r.bytes).sum();
        let staging = create_buffer_checked(
            device,
            &wgpu::BufferDescriptor {
                label: Some(label),
                size: total.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            },
        )?;
        let mut encoder =
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        let mut at = 0;
        for r in ranges {
            if r.bytes > 0 {
                encoder.copy_buffer_to_buffer(r.buffer, r.offset, &staging, at, r.bytes);
            }
            at += r.bytes;
        }
        let submission = queue.submit([encoder.finish()]);
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel::<Mapped>();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let mut out = Vec::with_capacity(parts.len());
        let (mut first, mut k) = (0usize, 0usize);
        for &n in parts {
            let bytes: u64 = ranges[k..k + n].iter().map(|r| r.bytes).sum();
            out.push((first, (bytes / 4) as usize));
            first += (bytes / 4) as usize;
            k += n;
        }
        Ok(ReadBack {
            device: device.clone(),
            staging,
            submission,
            parts: out,
            mapped: Box::pin(async move { rx.receive().await }),
        })
    }

    fn take(&self) -> Result<Vec<Vec<f32>>> {
        let out = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(e.to_string()))?;
            let all: &[f32] = bytemuck::cast_slice(&view);
            self.parts
                .iter()
                .map(|&(first, n)| all[first..first + n].to_vec())
                .collect()
        };
        self.staging.unmap();
        Ok(out)
    }

    /// Blocks until this read's submission is done (not the whole device), then returns the values.
    pub fn wait(mut self) -> Result<Vec<Vec<f32>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // On wgpu's GL backend the map callback can still be pending right after the wait on the read's
        // own submission returns (seen on llvmpipe); only then is the whole queue waited for.
        for submission in [Some(self.submission.clone()), None] {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: submission,
                    timeout: None,
                })
                .map_err(|e| Error::Gpu(e.to_string()))?;
            if let Poll::Ready(r) = Pin::new(&mut self).poll(&mut cx) {
                return r;
            }
        }
        Err(Error::Gpu(
            "read-back: the map did not complete after its submission finished".into(),
        ))
    }
}

impl Future for ReadBack {
    type Output = Result<Vec<Vec<f32>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Fires the callbacks of work that completed (does not wait; a no-op on WebGPU).
        if let Err(e) = self.device.poll(wgpu::PollType::Poll) {
            return Poll::Ready(Err(Error::Gpu(e.to_string())));
        }
        match self.mapped.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(()))) => Poll::Ready(self.take()),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(Error::Gpu(e.to_string()))),
            Poll::Ready(None) => Poll::Ready(Err(Error::Gpu(
                "read-back: the map callback was dropped (device lost?)".into(),
            ))),
        }
    }
}
