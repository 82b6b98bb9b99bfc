//! Developer tasks for the dt workspace, run as `cargo xtask <task>`.
//!
//! - `setup`: install what building and testing need (idempotent, fast when done already).
//! - `run`:   setup, build the agent, and run it on the workspace's `rules/`.
//! - `test`:  setup, then run every test in the workspace, kernel tests included, then fuzz a
//!   little.
//! - `bench`: setup, build in release, and run the benchmarks (BENCHMARKS.md).
//! - `fuzz`:  setup, then every fuzz target for N seconds each (FUZZING.md).
//! - `image`: setup, build the agent, and build its OCI image.

mod bench;
mod cmd;
mod fuzz;
mod image;
mod run;
mod runner;
mod setup;
mod test;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for dt",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install what building and testing need: the nightly rust-src component,
    /// bpf-linker, the Debian packages the tests use, and bpffs at /sys/fs/bpf.
    /// Idempotent; installing packages and mounting bpffs need root.
    Setup,
    /// Run setup, build dt-agent (release), and run `dt-agent run --rules <workspace>/rules ARGS...`.
    Run {
        /// Extra arguments for `dt-agent run` (after `--`), e.g. `-- --port 4318 --pin`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Run setup, then every test of the workspace: built by `cargo test --workspace
    /// --all-targets --no-run`, its test binaries run one at a time (`DT_TEST_JOBS`), each
    /// one's output printed whole when it ends; then every fuzz target for 10 s
    /// (`DT_FUZZ_SECONDS`; 0 skips it).
    ///
    /// With ARGS, `cargo test` itself runs the selection, and no fuzzing follows. ARGS go to
    /// `cargo test`; a second `--` among them starts the test-harness arguments,
    /// e.g. `cargo xtask test -- -p dt-agent -- rules::`. The harness gets `--test-threads=2`
    /// unless ARGS set it. As root on Linux, DT_REQUIRE_KERNEL_TESTS=1 turns kernel-test skips
    /// into failures.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Run setup, build dt-agent and dt-bench (release), and run every benchmark scenario
    /// (needs root). The report goes to stdout, the raw figures to target/bench/results.json.
    ///
    /// ARGS go to `dt-bench run`, e.g. `cargo xtask bench -- --rounds 5 --duration 2`.
    Bench {
        /// Extra arguments for `dt-bench run` (after `--`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Run setup, build dt-agent (release), and build an OCI image of it offline with buildah,
    /// FROM scratch. The last line printed is the image reference (localhost/dt-agent:VERSION).
    Image {
        /// Pack this dt-agent binary instead of building one (the image test packs the one the
        /// tests run, sparing CI a release build of the whole dependency tree).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
    /// Run setup (and install cargo-fuzz), build the fuzz targets of fuzz/ (nightly,
    /// libFuzzer), and run each for SECONDS; exit non-zero on any finding (FUZZING.md).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (comma-separated).
        #[arg(long, value_delimiter = ',')]
        targets: Option<Vec<String>>,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Run { args } => run::run(&args),
        Task::Test { args } => test::test(&args),
        Task::Bench { args } => bench::bench(&args),
        Task::Image { agent } => image::image(agent),
        Task::Fuzz { seconds, targets } => fuzz::fuzz(seconds, targets.as_deref()),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest_dir
        .parent()
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))?;
    Ok(root.to_path_buf())
}
