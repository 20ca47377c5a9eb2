//! `train --distributed`: the MLP's parameters in a `ShardedRmsProp` over MPI's world.

use std::error::Error;

use mpi::collective::SystemOperation;
use mpi::traits::*;
use wgpu_rmsprop::distributed::{
    abort_on_panic, DistributedOptions, Reduction, ShardGradient, ShardedRmsProp, VariableSpec,
};
use wgpu_rmsprop::{GpuContext, RmsPropConfig};

/// The sharded optimizer and MPI's world (finalized when dropped, after the optimizer).
pub struct Sharded {
    opt: ShardedRmsProp,
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

impl Sharded {
    /// Initializes MPI and shards the variables `(name, shape, initial values)`.
    pub fn new(
        ctx: &GpuContext,
        config: RmsPropConfig,
        vars: &[(&str, Vec<usize>, Vec<f32>)],
    ) -> Result<Sharded, Box<dyn Error>> {
        let universe = mpi::initialize().ok_or("MPI could not be initialized")?;
        let world = universe.world();
        abort_on_panic(world.rank() as usize);
        let specs: Vec<VariableSpec> = vars
            .iter()
            .map(|(name, shape, init)| VariableSpec::new(name, shape, init.clone()))
            .collect();
        // Each rank's gradients are its part of the batch's mean (divided by the whole batch).
        let options = DistributedOptions {
            reduction: Reduction::Sum,
            ..DistributedOptions::default()
        };
        let opt = ShardedRmsProp::new(ctx, config, &world, &specs, options)?;
        Ok(Sharded {
            opt,
            world,
            _universe: universe,
        })
    }

    /// This rank's block of a batch of `n`.
    pub fn rank_block(&self, n: usize) -> std::ops::Range<usize> {
        let (r, size) = (self.opt.rank(), self.opt.world_size());
        n * r / size..n * (r + 1) / size
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.opt.rank()
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.opt.world_size()
    }

    /// The full variables' buffer, the gradient buffer and the four variables' element offsets.
    pub fn buffers(&self) -> (&wgpu::Buffer, &wgpu::Buffer, [u32; 4]) {
        let at = |i: usize| self.opt.layout().vars[i].offset as u32;
        (
            self.opt.params(),
            self.opt.grads(),
            [at(0), at(1), at(2), at(3)],
        )
    }

    /// One sharded step with the gradients the backward pass wrote.
    pub fn step(&mut self) -> Result<u64, Box<dyn Error>> {
        let grads: Vec<(usize, ShardGradient)> =
            (0..4).map(|i| (i, ShardGradient::Resident)).collect();
        Ok(self.opt.step(&grads)?)
    }

    /// The sum of `x` over the ranks.
    pub fn sum(&mut self, x: f64) -> f64 {
        let mut out = 0.0;
        self.world
            .all_reduce_into(&x, &mut out, SystemOperation::sum());
        out
    }

    /// This rank's optimizer state bytes.
    pub fn state_bytes(&self) -> u64 {
        self.opt.state_bytes()
    }

    /// Steps applied.
    pub fn iterations(&self) -> u64 {
        self.opt.iterations()
    }
}
