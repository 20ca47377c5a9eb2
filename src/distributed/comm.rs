//! The few MPI collectives the sharded optimizer uses, on host memory (MPI cannot read wgpu's GPU
//! buffers: every transfer is staged through the host), with a count of the bytes each rank sends.

use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::error::{Error, Result};

/// A duplicate of the caller's communicator (the optimizer's messages never meet the caller's), its
/// rank and size, and the bytes sent so far.
pub struct Comm {
    comm: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// Bytes this rank has sent to the other ranks, as ring algorithms move them: `(N - 1) / N` of a
    /// reduce-scatter's input, `N - 1` times its block of an all-gather, its blocks for the others of
    /// an all-to-all, `N - 1` times an all-reduce's words (payloads, not MPI's own headers).
    pub bytes_sent: u64,
    /// Seconds this rank has spent inside MPI collectives (waiting for the others included).
    pub seconds: f64,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comm")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("bytes_sent", &self.bytes_sent)
            .field("seconds", &self.seconds)
            .finish()
    }
}

impl Comm {
    /// Wraps a duplicate of `comm`.
    pub fn new(comm: &SimpleCommunicator) -> Comm {
        let comm = comm.duplicate();
        Comm {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            comm,
            bytes_sent: 0,
            seconds: 0.0,
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Element-wise sum across ranks (f64: partial squared norms).
    pub fn sum_f64(&mut self, values: &mut [f64]) {
        let started = std::time::Instant::now();
        let send = values.to_vec();
        self.bytes_sent += ((self.size - 1) * send.len() * 8) as u64;
        self.comm
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        self.seconds += started.elapsed().as_secs_f64();
    }

    /// Element-wise maximum and minimum across ranks of u64 words (flags, hashes).
    pub fn min_max_u64(&mut self, values: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let started = std::time::Instant::now();
        let mut max = vec![0u64; values.len()];
        let mut min = vec![0u64; values.len()];
        self.bytes_sent += ((self.size - 1) * values.len() * 16) as u64;
        self.comm
            .all_reduce_into(values, &mut max[..], SystemOperation::max());
        self.comm
            .all_reduce_into(values, &mut min[..], SystemOperation::min());
        self.seconds += started.elapsed().as_secs_f64();
        (min, max)
    }

    /// Logical or of one flag across ranks.
    pub fn any(&mut self, flag: bool) -> bool {
        let started = std::time::Instant::now();
        let mut out = 0u32;
        self.bytes_sent += ((self.size - 1) * 4) as u64;
        self.comm
            .all_reduce_into(&u32::from(flag), &mut out, SystemOperation::max());
        self.seconds += started.elapsed().as_secs_f64();
        out != 0
    }

    /// Reduce-scatter (sum) of `send` (`size * recv.len()` values): rank `r` gets block `r`.
    pub fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) {
        let started = std::time::Instant::now();
        self.bytes_sent += ((self.size - 1) * recv.len() * 4) as u64;
        self.comm
            .reduce_scatter_block_into(send, recv, SystemOperation::sum());
        self.seconds += started.elapsed().as_secs_f64();
    }

    /// All-gather of equal blocks: `recv` (`size * send.len()`) gets every rank's block in rank order.
    pub fn all_gather<T: Equivalence + Copy>(&mut self, send: &[T], recv: &mut [T]) {
        let started = std::time::Instant::now();
        self.bytes_sent += ((self.size - 1) * std::mem::size_of_val(send)) as u64;
        self.comm.all_gather_into(send, recv);
        self.seconds += started.elapsed().as_secs_f64();
    }

    /// All-gather with variable counts: every rank's `send`, in rank order, and each rank's count.
    pub fn all_gather_varcount<T: Equivalence + Copy + Default>(
        &mut self,
        send: &[T],
    ) -> Result<(Vec<T>, Vec<usize>)> {
        let started = std::time::Instant::now();
        let count = i32::try_from(send.len())
            .map_err(|_| Error::Gpu(format!("all-gather block of {} elements", send.len())))?;
        let mut counts = vec![0i32; self.size];
        self.comm.all_gather_into(&count, &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &n| {
                let d = *at;
                *at += n;
                Some(d)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![T::default(); total];
        self.bytes_sent += ((self.size - 1) * std::mem::size_of_val(send)) as u64;
        {
            let mut r = PartitionMut::new(&mut recv[..], &counts[..], &displs[..]);
            self.comm.all_gather_varcount_into(send, &mut r);
        }
        self.seconds += started.elapsed().as_secs_f64();
        Ok((recv, counts.iter().map(|&c| c as usize).collect()))
    }

    /// All-to-all with variable counts: `send` holds the blocks for ranks `0..size` one after another
    /// (`counts[r]` elements each); returns what every rank sent here, in rank order.
    pub fn all_to_all<T: Equivalence + Copy + Default>(
        &mut self,
        send: &[T],
        counts: &[usize],
    ) -> Result<Vec<T>> {
        let started = std::time::Instant::now();
        let to_count = |c: usize| {
            i32::try_from(c).map_err(|_| Error::Gpu(format!("all-to-all block of {c} elements")))
        };
        let send_counts: Vec<i32> = counts.iter().map(|&c| to_count(c)).collect::<Result<_>>()?;
        let mut recv_counts = vec![0i32; self.size];
        self.comm
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let displs = |c: &[i32]| -> Vec<i32> {
            c.iter()
                .scan(0i32, |at, &n| {
                    let d = *at;
                    *at += n;
                    Some(d)
                })
                .collect()
        };
        let (sd, rd) = (displs(&send_counts), displs(&recv_counts));
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![T::default(); total];
        let own = send_counts[self.rank] as usize;
        self.bytes_sent += ((send.len() - own) * std::mem::size_of::<T>()) as u64;
        {
            let s = Partition::new(send, &send_counts[..], &sd[..]);
            let mut r = PartitionMut::new(&mut recv[..], &recv_counts[..], &rd[..]);
            self.comm.all_to_all_varcount_into(&s, &mut r);
        }
        self.seconds += started.elapsed().as_secs_f64();
        Ok(recv)
    }

    /// Ends the whole job: prints `message` (with this rank) to stderr and calls `MPI_Abort`, which
    /// takes every rank down within seconds instead of leaving them blocked in a collective.
    pub fn abort(&self, message: &str) -> ! {
        abort_world(self.rank, message)
    }
}

/// Prints `rank N: fatal: message` and aborts `MPI_COMM_WORLD` (exit code 1 for every rank).
pub fn abort_world(rank: usize, message: &str) -> ! {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "rank {rank}: fatal: {message} (MPI_Abort of every rank)"
    );
    let _ = err.flush();
    // SAFETY: MPI is initialized (a `Comm` or the panic hook exists only after `mpi::initialize`);
    // MPI_Abort does not return.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
    }
    std::process::exit(1)
}

/// Makes a panic on this rank abort the whole job (`MPI_Abort`) after printing it, instead of leaving
/// the other ranks blocked in their next collective. Call once after `mpi::initialize`.
pub fn abort_on_panic(rank: usize) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        abort_world(rank, &format!("panic: {info}"));
    }));
}
