//! `bora`: the one binary of Bora — service roles and the operator CLI.

mod cli;
mod cluster;
mod cmd;
mod output;
mod progress;
mod remote_book;
mod repair_loop;
mod replica_site;
mod replica_source;
mod replicate_loop;
mod repo;
mod snapshot_disk;

use clap::Parser;

/// mimalloc instead of glibc's allocator: the data path allocates and frees chunk-sized
/// buffers (1 MiB and more) all the time; glibc hands those back to the kernel and page
/// faults them in again, which cost about a third of an incremental backup's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    quiet_broken_pipe();
    let args = cli::Cli::parse();
    init_tracing(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `bora … --json | head` closes stdout early; printing then fails with EPIPE, which
/// Rust's `println!` turns into a panic. Like other Unix tools, exit quietly instead, with
/// the status a shell expects of a process stopped by SIGPIPE (128 + 13).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Logs go to stderr; `BORA_LOG` (e.g. `info`, `bora_worker=debug`) overrides `-v`.
/// Without either there are none: a failure is one `error:` line, and what an operator
/// must know on success is printed as a `warning:` line by the command itself.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "off",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BORA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
