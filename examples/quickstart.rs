//! The seed example: var1 = 10.0, loss = var1^2 / 2 (so the gradient is var1), learning_rate 0.1.
//! One step returns step count 1 and leaves var1 = 9.683772. `--checkpoint PATH` saves the state.

use wgpu_rmsprop::{GpuContext, RmsProp, RmsPropConfig, Slot};

/// Errors are printed with their message (Display), not as a Debug dump.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), wgpu_rmsprop::Error> {
    env_logger::init();
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter_description());
    let config = RmsPropConfig::builder().learning_rate(0.1).build()?;
    let mut opt = RmsProp::new(&ctx, config)?;
    let var1 = opt.add_variable("var1", &[], &[10.0])?;
    let x = opt.read_variable(var1)?[0];
    let step = opt.apply_gradients(&[(var1, &[x])])?;
    let x = opt.read_variable(var1)?[0];
    let v = opt.read_slot(var1, Slot::Velocity)?[0];
    println!("step count: {step}");
    println!("var1: {x}");
    println!("velocity: {v}");
    // `quickstart --checkpoint PATH` also saves the optimizer state (safetensors).
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args
        .iter()
        .position(|a| a == "--checkpoint")
        .and_then(|i| args.get(i + 1))
    {
        opt.save_checkpoint(std::path::Path::new(path), true)?;
        println!("checkpoint: {path}");
    }
    Ok(())
}
