//! The command lines of the examples: `--name VALUE` options and `--name` switches, nothing else. An
//! unknown option, a missing value or a malformed one prints one line (what is wrong, then the usage) on
//! stderr and exits with status 2; `-h`/`--help` prints the usage on stdout and exits 0.
#![allow(dead_code)]

use std::str::FromStr;

use wgpu_rmsprop::{Dtype, StorageTypes};

/// The arguments of an example, read option by option.
pub struct Cli {
    usage: &'static str,
    args: std::vec::IntoIter<String>,
}

impl Cli {
    /// The process's arguments (after the program name); `usage` is the one-line synopsis.
    pub fn new(usage: &'static str) -> Self {
        Cli {
            usage,
            args: std::env::args().skip(1).collect::<Vec<_>>().into_iter(),
        }
    }

    /// Prints `message` and the usage on one line of stderr and exits with status 2.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("error: {message}; {}", self.usage);
        std::process::exit(2)
    }

    /// The next option (`--name`). `-h`/`--help` print the usage and exit; an argument that is not an
    /// option is a usage error (the examples take no positional arguments).
    pub fn next_option(&mut self) -> Option<String> {
        let a = self.args.next()?;
        if a == "-h" || a == "--help" {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        if !a.starts_with("--") {
            self.fail(&format!("unexpected argument `{a}`"));
        }
        Some(a)
    }

    /// `option` is not one this example takes.
    pub fn unknown(&self, option: &str) -> ! {
        self.fail(&format!("unknown option `{option}`"))
    }

    /// The raw value after `option` (`what` names it in the message: `N`, `PATH`).
    pub fn raw(&mut self, option: &str, what: &str) -> String {
        match self.args.next() {
            Some(v) if !v.starts_with("--") => v,
            _ => self.fail(&format!("{option} needs {what}")),
        }
    }

    /// The value after `option`, parsed.
    pub fn value<T: FromStr>(&mut self, option: &str, what: &str) -> T {
        let v = self.raw(option, what);
        v.parse()
            .unwrap_or_else(|_| self.fail(&format!("{option} needs {what}, not `{v}`")))
    }

    /// A count of at least 1 after `option`.
    pub fn count(&mut self, option: &str) -> usize {
        let v = self.raw(option, "a positive integer");
        match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => self.fail(&format!("{option} needs a positive integer, not `{v}`")),
        }
    }

    /// One of `choices` after `option`.
    pub fn choice(&mut self, option: &str, choices: &[&'static str]) -> &'static str {
        let v = self.raw(option, &format!("one of {}", choices.join("|")));
        choices
            .iter()
            .copied()
            .find(|c| *c == v)
            .unwrap_or_else(|| {
                self.fail(&format!(
                    "{option} needs one of {}, not `{v}`",
                    choices.join("|")
                ))
            })
    }

    /// `f32`, `f16` or `bf16` after `option`, as the storage types the examples use for it
    /// ([`storage_for`]).
    pub fn dtype(&mut self, option: &str) -> StorageTypes {
        let v = self.raw(option, "f32|f16|bf16");
        match Dtype::parse(&v) {
            Some(d) => storage_for(d),
            None => self.fail(&format!("{option} needs f32|f16|bf16, not `{v}`")),
        }
    }

    /// `f32`, `f16`, `bf16` or `q8` after `option`: the optimizer state's type alone.
    pub fn state(&mut self, option: &str) -> Dtype {
        let v = self.raw(option, "f32|f16|bf16|q8");
        match Dtype::parse(&v) {
            Some(d) => d,
            None => self.fail(&format!("{option} needs f32|f16|bf16|q8, not `{v}`")),
        }
    }

    /// `var=T,grad=T,state=T` after `option` (any of the three, in any order; the others f32).
    pub fn storage(&mut self, option: &str) -> StorageTypes {
        let v = self.raw(option, "var=T,grad=T,state=T");
        parse_storage(&v).unwrap_or_else(|e| self.fail(&format!("{option}: {e}")))
    }
}

/// The storage types of `--dtype`: `bf16` keeps the variables and the optimizer state in bfloat16
/// (the examples add stochastic rounding, [`SR_SEED`]); `f16` keeps the state in float16 and the
/// variables in f32 (f32 master weights: float16's range is too narrow for the weights themselves) with
/// a float16 copy that the optimizer writes with every update, which the forward pass reads; `f32`
/// everywhere is the default. The gradients stay f32.
pub fn storage_for(dtype: Dtype) -> StorageTypes {
    let (variable, state) = match dtype {
        Dtype::F32 => (Dtype::F32, Dtype::F32),
        Dtype::Q8 => (Dtype::F32, Dtype::Q8),
        Dtype::F16 => (Dtype::F32, Dtype::F16),
        Dtype::Bf16 => (Dtype::Bf16, Dtype::Bf16),
    };
    StorageTypes {
        variable,
        gradient: Dtype::F32,
        state,
        copy: (dtype == Dtype::F16).then_some(Dtype::F16),
    }
}

/// The seed of stochastic rounding where the variables are bf16.
pub const SR_SEED: u32 = 0x5eed;

/// `builder` with `storage` and, for bf16 variables, stochastic rounding.
pub fn with_storage(
    builder: wgpu_rmsprop::RmsPropConfigBuilder,
    storage: StorageTypes,
) -> wgpu_rmsprop::RmsPropConfigBuilder {
    let builder = builder.storage(storage);
    if storage.variable == Dtype::Bf16 {
        builder.stochastic_rounding(SR_SEED)
    } else {
        builder
    }
}

/// `var=bf16,grad=f32,state=bf16` (keys `var`/`variable`, `grad`/`gradient`, `state`; roles not named
/// are f32).
pub fn parse_storage(s: &str) -> Result<StorageTypes, String> {
    let mut t = StorageTypes::default();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ROLE=TYPE"))?;
        let d = Dtype::parse(value).ok_or_else(|| format!("`{value}` is not f32|f16|bf16"))?;
        match key {
            "var" | "variable" => t.variable = d,
            "grad" | "gradient" => t.gradient = d,
            "state" => t.state = d,
            _ => return Err(format!("`{key}` is not var, grad or state")),
        }
    }
    Ok(t)
}
