//! dt-bench: the pieces of `cargo xtask bench` (see BENCHMARKS.md).
//!
//! - `run`: the driver: every scenario at every request size, interleaved rounds, the table,
//!   the ratios and the JSON file. It starts the other verbs as child processes, so that each
//!   one's CPU time is its own.
//! - `load`: the load generator (OTLP/HTTP protobuf requests over keep-alive connections).
//! - `sink`: the collector stand-in that reads whole requests and answers 200.
//! - `proxy`: the userspace filtering proxy of scenario (f).

mod http;
mod load;
mod procfs;
mod procs;
mod proxy;
mod report;
mod run;
mod server;
mod sink;
mod uprobe;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dt-bench",
    about = "dt benchmarks (`cargo xtask bench` builds and runs `dt-bench run`)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every scenario and reports (needs root: it starts dt-agent).
    Run(run::Opts),
    /// Sends requests of RECORDS records over CONNS keep-alive connections to ADDR.
    Load {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        records: usize,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// Request path (profiling: `/v1/traces` is passed through by dt without a walk).
        #[arg(long, default_value = "/v1/logs")]
        path: String,
        /// Frame requests as the Node.js SDK does: `Transfer-Encoding: chunked`, one data chunk,
        /// `0\r\n\r\n`, all in one write (scenario g).
        #[arg(long)]
        chunked: bool,
        /// With --chunked: write the last chunk `0\r\n\r\n` separately (profiling).
        #[arg(long, requires = "chunked")]
        split_last_chunk: bool,
    },
    /// Reads whole requests and answers 200; prints `port N`, answers `snap` on stdin.
    Sink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Decode every request and check that it holds this many records.
        #[arg(long)]
        expect_records: Option<usize>,
        /// With --expect-records or --decode: and none that the drop rule removes.
        #[arg(long)]
        expect_filtered: bool,
        /// Decode and check every request, whatever number of records it holds (what a
        /// collector forwards is batched its own way).
        #[arg(long)]
        decode: bool,
    },
    /// The userspace filtering proxy: decode, drop records below INFO, re-encode, forward.
    Proxy {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        upstream: String,
    },
    /// Only the uprobe measurement (part of `run`); needs root and a C compiler.
    Uprobe {
        #[arg(long)]
        agent: std::path::PathBuf,
        /// Where the rule file, the C program and the agent's files go.
        #[arg(long, default_value = "target/bench")]
        work: std::path::PathBuf,
    },
    /// Prints the request sizes of the workload.
    Sizes,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(opts) => run::main(opts),
        Cmd::Load {
            addr,
            records,
            conns,
            warmup,
            duration,
            path,
            chunked,
            split_last_chunk,
        } => load::run(
            &addr,
            &path,
            match (chunked, split_last_chunk) {
                (false, _) => workload::Framing::ContentLength,
                (true, false) => workload::Framing::Chunked,
                (true, true) => workload::Framing::ChunkedSplit,
            },
            records,
            conns,
            warmup,
            duration,
        ),
        Cmd::Sink {
            listen,
            expect_records,
            expect_filtered,
            decode,
        } => sink::run(
            &listen,
            (decode || expect_records.is_some()).then_some(sink::Expect {
                records: expect_records,
                filtered: expect_filtered,
            }),
        ),
        Cmd::Proxy { listen, upstream } => proxy::run(&listen, upstream),
        Cmd::Uprobe { agent, work } => {
            std::fs::create_dir_all(&work)?;
            let r = uprobe::measure(&agent, &work.canonicalize()?);
            println!("{}", r.summary());
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        Cmd::Sizes => {
            for n in [10, 100, 1000] {
                let w = workload::Workload::new(n);
                println!(
                    "{n:>5} records/request: {:.0} bytes on average (largest {}), {:.0} B/record",
                    w.mean_request_bytes(),
                    w.max_request_bytes(),
                    w.mean_request_bytes() / n as f64
                );
            }
            Ok(())
        }
    }
}
