//! Read-back without blocking: any set of GPU ranges copied into staging buffers with one submit and
//! mapped with one `map_async` each, returned as a future ([`ReadBack`]) or waited for on that submission
//! alone ([`ReadBack::wait`]). Checkpoints read every tensor through one of these (one wait per save).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::context::create_buffer_checked;
use crate::error::{Error, Result};

type Mapped = std::result::Result<(), wgpu::BufferAsyncError>;
type MapFuture = Pin<Box<dyn Future<Output = Option<Mapped>> + Send>>;

/// A read of several GPU ranges in flight: resolves to one `Vec<f32>` per item asked for, in order.
///
/// It is a [`Future`]. On native backends a map completes only when the device is polled: polling this
/// future polls the device (`PollType::Poll`, never blocking) and, while the data is not there, asks to
/// be polled again, so any executor drives it to completion (at the cost of polling in a loop; on
/// WebGPU the browser completes the map). [`ReadBack::wait`] blocks on this read's own submission
/// instead.
#[must_use = "a read-back does nothing unless awaited or waited for"]
pub struct ReadBack {
    device: wgpu::Device,
    /// Staging buffers (each within `max_buffer_size`) and their pending maps (`None` once mapped).
    staging: Vec<(wgpu::Buffer, Option<MapFuture>)>,
    submission: wgpu::SubmissionIndex,
    /// (staging buffer, first byte, bytes, type, elements) of each range.
    ranges: Vec<(usize, u64, u64, Layout)>,
    /// Ranges per item.
    parts: Vec<usize>,
    done: bool,
}

impl std::fmt::Debug for ReadBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBack")
            .field("staging_buffers", &self.staging.len())
            .field("ranges", &self.ranges.len())
            .field("items", &self.parts.len())
            .finish()
    }
}

/// How a range's bytes hold its elements (see [`Range`]).
#[derive(Debug, Clone, Copy)]
struct Layout {
    dtype: crate::dtype::Dtype,
    elems: usize,
    q8: (u64, bool),
}

/// One range to read: `bytes` from byte `offset` of `buffer` (multiples of 4), holding `elems` values
/// of `dtype` (widened to f32 when read).
pub(crate) struct Range<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub bytes: u64,
    pub dtype: crate::dtype::Dtype,
    pub elems: usize,
    /// 8-bit quantized state: vec4 per block, and whether the map is the unsigned one (velocity).
    pub q8: (u64, bool),
}

impl<'a> Range<'a> {
    /// The first `bytes` of `buffer` as 32-bit words (read as the f32 of their bits).
    pub(crate) fn words(buffer: &'a wgpu::Buffer, bytes: u64) -> Self {
        Range {
            buffer,
            offset: 0,
            bytes,
            dtype: crate::dtype::Dtype::F32,
            elems: (bytes / 4) as usize,
            q8: (0, false),
        }
    }
}

impl ReadBack {
    /// Copies `ranges` (grouped into items of `parts[i]` consecutive ranges: a variable split over
    /// several pool buffers is one item) into staging buffers of at most the device's `max_buffer_size`
    /// each, submits once, and maps them.
    pub(crate) fn start(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        label: &str,
        ranges: &[Range<'_>],
        parts: &[usize],
    ) -> Result<ReadBack> {
        let max = device.limits().max_buffer_size & !15;
        // Ranges are packed into staging buffers in order; one range never exceeds a pool buffer, which
        // is within max_buffer_size.
        let (mut sizes, mut placed) = (vec![0u64], Vec::with_capacity(ranges.len()));
        for r in ranges {
            if sizes.last().is_some_and(|&s| s > 0 && s + r.bytes > max) {
                sizes.push(0);
            }
            let k = sizes.len() - 1;
            let layout = Layout {
                dtype: r.dtype,
                elems: r.elems,
                q8: r.q8,
            };
            placed.push((k, sizes[k], r.bytes, layout));
            sizes[k] += r.bytes;
        }
        let buffers = sizes
            .iter()
            .map(|&size| {
                create_buffer_checked(
                    device,
                    &wgpu::BufferDescriptor {
                        label: Some(label),
                        size: size.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut encoder =
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        for (r, &(k, at, bytes, _)) in ranges.iter().zip(&placed) {
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(r.buffer, r.offset, &buffers[k], at, bytes);
            }
        }
        let submission = queue.submit([encoder.finish()]);
        let staging = buffers
            .into_iter()
            .map(|buffer| {
                let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel::<Mapped>();
                buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                    let _ = tx.send(r);
                });
                let mapped: MapFuture = Box::pin(async move { rx.receive().await });
                (buffer, Some(mapped))
            })
            .collect();
        Ok(ReadBack {
            device: device.clone(),
            staging,
            submission,
            ranges: placed,
            parts: parts.to_vec(),
            done: false,
        })
    }

    fn take(&mut self) -> Result<Vec<Vec<f32>>> {
        self.take_with(|bytes, l: Layout, item: &mut Vec<f32>| match l.dtype {
            crate::dtype::Dtype::Q8 => {
                let (block, unsigned) = l.q8;
                crate::pool_q8::decode_blocks(bytes, l.elems, block as usize * 4, unsigned, item)
            }
            dtype => crate::dtype::decode(bytes, dtype, l.elems, item),
        })
    }

    /// Each item's elements as stored (little-endian, `elems` of each range's type, pad lanes dropped;
    /// q8: the blocks' absmax words and codes as they lie).
    fn take_bytes(&mut self) -> Result<Vec<Vec<u8>>> {
        self.take_with(|bytes, l: Layout, item: &mut Vec<u8>| match l.dtype {
            crate::dtype::Dtype::Q8 => item.extend_from_slice(bytes),
            dtype => item.extend_from_slice(&bytes[..l.elems * dtype.bytes() as usize]),
        })
    }

    /// Gathers each item from the mapped ranges with `part(range bytes, type, elements, item)`, then
    /// unmaps.
    fn take_with<T: Default>(
        &mut self,
        mut part: impl FnMut(&[u8], Layout, &mut T),
    ) -> Result<Vec<T>> {
        self.done = true;
        let views = self
            .staging
            .iter()
            .map(|(b, _)| {
                b.get_mapped_range(..)
                    .map_err(|e| Error::Gpu(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(self.parts.len());
        let mut ranges = self.ranges.iter();
        for &n in &self.parts {
            let mut item = T::default();
            for &(k, at, bytes, layout) in ranges.by_ref().take(n) {
                part(
                    &views[k][at as usize..(at + bytes) as usize],
                    layout,
                    &mut item,
                );
            }
            out.push(item);
        }
        drop(views);
        for (b, _) in &self.staging {
            b.unmap();
        }
        Ok(out)
    }

    /// Polls every pending map once: `Ready(Ok)` when all are mapped.
    fn poll_maps(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        for (_, pending) in &mut self.staging {
            if let Some(f) = pending {
                match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(()))) => *pending = None,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Error::Gpu(e.to_string())))
                    }
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(Error::Gpu(
                            "read-back: the map callback was dropped (device lost?)".into(),
                        )))
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Blocks until this read's submission is done (not the whole device), then returns the values.
    pub fn wait(mut self) -> Result<Vec<Vec<f32>>> {
        self.wait_maps()?;
        self.take()
    }

    /// As [`ReadBack::wait`], returning each item's elements as stored: the little-endian bytes of its
    /// values in each range's type (16-bit values bit for bit, pad lanes dropped). Checkpoints use it.
    pub(crate) fn wait_bytes(mut self) -> Result<Vec<Vec<u8>>> {
        self.wait_maps()?;
        self.take_bytes()
    }

    /// Blocks until this read's submission is done and every staging buffer is mapped.
    fn wait_maps(&mut self) -> Result<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut submission = Some(self.submission.clone());
        // A map callback can still be pending right after the wait on the read's own submission returns:
        // seen on wgpu's GL backend on llvmpipe, about one read in a few thousand, with tests polling the
        // shared device from other threads (a poll there may have taken the callback and not yet run
        // it). The queue is then waited for again, yielding in between, a bounded number of times.
        for _ in 0..MAX_WAITS {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: submission.take(),
                    timeout: None,
                })
                .map_err(|e| Error::Gpu(e.to_string()))?;
            match self.poll_maps(&mut cx) {
                Poll::Ready(Ok(())) => return Ok(()),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => std::thread::yield_now(),
            }
        }
        Err(Error::Gpu(
            "read-back: the map did not complete after its submission finished".into(),
        ))
    }
}

/// Waits [`ReadBack::wait`] makes at most before giving up on a map.
const MAX_WAITS: usize = 1000;

impl Future for ReadBack {
    type Output = Result<Vec<Vec<f32>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            return Poll::Ready(Err(Error::Gpu("read-back: polled after completion".into())));
        }
        // Fires the callbacks of work that completed (does not wait; a no-op on WebGPU).
        if let Err(e) = self.device.poll(wgpu::PollType::Poll) {
            return Poll::Ready(Err(Error::Gpu(e.to_string())));
        }
        match self.poll_maps(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(self.take()),
            Poll::Ready(Err(e)) => {
                self.done = true;
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                // Nothing else polls the device on native backends: ask to be polled again.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}
