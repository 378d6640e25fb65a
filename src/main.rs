//! `grlo`: reinforcement-learning post-training of language models, as a service.
//!
//! This binary only parses arguments and calls into the crates; see README.md.

mod cli;
mod device;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "grlo",
    version,
    about = "RL post-training of language models from a reward model"
)]
struct Cli {
    /// A TOML file of the role's settings (keys are its flag names; flags and GRLO_* win).
    #[arg(long, global = true, env = "GRLO_SETTINGS", value_name = "FILE")]
    settings: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a checkpoint by hand: logits, generation, reward scores, conversion.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
    /// Train a policy with RL from a reward model: every role in one process.
    Train(cli::train::TrainArgs),
    /// Reward models from preference pairs.
    #[command(subcommand)]
    Rm(cli::rm::RmCommand),
    /// The GPU memory a job spec needs per role, whether it fits, and a layout over N GPUs.
    Plan(cli::plan::PlanArgs),
    /// Measure throughput beside the PyTorch/transformers peer.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve a reward model and the rule verifiers over gRPC, batching concurrent requests.
    RewardServer(cli::reward_server::RewardServerArgs),
    /// Run the control plane: jobs, workers, rollout tasks, weight versions, budgets.
    Coordinator(cli::roles::CoordinatorArgs),
    /// Train the jobs the coordinator assigns, from the trajectories actors send.
    Learner(cli::roles::LearnerArgs),
    /// Generate rollouts for the coordinator's jobs.
    Actor(cli::roles::ActorArgs),
    /// Serve a checkpoint over an OpenAI-compatible HTTP API (completions, chat, streaming).
    Serve(cli::serve::ServeArgs),
    /// Administer a running coordinator: jobs, workers, budgets.
    Ctl(cli::ctl::CtlArgs),
    /// Evaluate a model on chat, math, code and instruction benchmarks, or score responses.
    Eval(cli::eval::EvalArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Prefill, decode and forward+backward tokens/s of the model core (and long-context
    /// training with peak memory, --long-context).
    Model(cli::bench::BenchModelArgs),
    /// Rollout throughput of the built-in engine (continuous and static batching) beside
    /// transformers' generate on the same requests, and the decode step against the memory floor.
    Rollout(cli::bench_rollout::BenchRolloutArgs),
    /// Rollout throughput of the distributed service beside one process, and weight-sync time.
    Service(cli::bench_service::BenchServiceArgs),
    /// One coordinator under many simulated workers: lease and heartbeat latency, leases/s, and
    /// no task leased twice.
    Coordinator(cli::bench_coordinator::BenchCoordinatorArgs),
    /// One PPO + GAE learner step at a model shape and sequence length: time, tokens/s, MFU and
    /// peak memory.
    TrainStep(cli::bench_step::BenchTrainStepArgs),
    /// The block-wise attention and its gradients on a device against the CPU backend.
    AttentionParity(cli::bench_parity::AttentionParityArgs),
    /// One long-context workload in a process of its own (run by `bench model --long-context`).
    #[command(hide = true)]
    ModelWorker(cli::bench_long::WorkerArgs),
}

fn main() -> ExitCode {
    install_panic_hook();
    keep_freed_memory();
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Err(error) = cli::settings::apply(&<Cli as clap::CommandFactory>::command(), &args) {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    // Services log what they do; one-shot commands only warnings and the console logger's
    // step lines (trainer.logger). GRLO_LOG overrides both.
    let serving = matches!(
        cli.command,
        Command::RewardServer(_)
            | Command::Coordinator(_)
            | Command::Learner(_)
            | Command::Actor(_)
            | Command::Serve(_)
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GRLO_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if serving {
                    "info"
                } else {
                    "warn,grlo::console=info"
                })
            }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let result = match cli.command {
        Command::Model(command) => cli::model::run(command).and_then(print_line),
        Command::Bench(BenchCommand::Model(args)) => cli::bench::run(args).and_then(print_line),
        Command::Bench(BenchCommand::ModelWorker(args)) => {
            cli::bench_long::worker(args).and_then(print_line)
        }
        Command::Bench(BenchCommand::AttentionParity(args)) => {
            cli::bench_parity::run(args).and_then(print_line)
        }
        Command::Bench(BenchCommand::TrainStep(args)) => {
            cli::bench_step::run(args).and_then(print_line)
        }
        Command::Bench(BenchCommand::Rollout(args)) => {
            cli::bench_rollout::run(args).and_then(print_line)
        }
        Command::Bench(BenchCommand::Service(args)) => {
            cli::bench_service::run(args).and_then(print_line)
        }
        Command::Bench(BenchCommand::Coordinator(args)) => {
            cli::bench_coordinator::run(args).and_then(print_line)
        }
        Command::Train(args) => cli::train::run(args).and_then(print_line),
        Command::Plan(args) => cli::plan::run(args).and_then(print_line),
        Command::Rm(command) => cli::rm::run(command).and_then(print_line),
        Command::RewardServer(args) => cli::reward_server::run(args).and_then(print_line),
        Command::Coordinator(args) => cli::roles::coordinator(args).and_then(print_line),
        Command::Learner(args) => cli::roles::learner(args).and_then(print_line),
        Command::Actor(args) => cli::roles::actor(args).and_then(print_line),
        Command::Serve(args) => cli::serve::run(args).and_then(print_line),
        Command::Ctl(args) => cli::ctl::run(args).and_then(print_line),
        Command::Eval(args) => cli::eval::run(args).and_then(print_line),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tensors are large, short-lived allocations: glibc serves them with fresh `mmap`s and hands
/// them back on free, so every tensor pays page faults again (about 15% of a CPU training step).
/// Keeping freed memory in the heap instead makes them reuse warm pages.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Prints the command's output; a closed stdout (`| head`) is not an error worth a panic.
fn print_line(text: String) -> anyhow::Result<()> {
    use std::io::Write;
    if text.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A bug should still end in one readable line, not a stack trace, unless RUST_BACKTRACE asks.
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let message =
            grlo_proto::panic_message(info.payload()).unwrap_or_else(|| "unknown panic".into());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{location}: {message} (please report this)");
    }));
}
