//! A sandbox for untrusted Python: the code benchmarks' programs and code rewards run here.
//!
//! Each program runs as `python3 main.py` in a fresh temporary directory, in a session of
//! its own (so its whole process group can be killed), with a wall-clock timeout and
//! rlimits on CPU time, address space, file size and (when the sandbox runs as root, under
//! a per-slot unprivileged uid) the number of processes. The network is cut off by a new
//! network namespace (`unshare(CLONE_NEWNET)`, inside a new user namespace when not root).
//! Output is capped; reading goes on past the cap so the child never blocks on a full pipe.
//!
//! [`Sandbox::new`] probes all of this once by running a small program and reading back
//! what it could do; when isolation is not available it refuses (a [`SandboxError`]) unless
//! [`Config::allow_unconfined`] says to go on, and then [`Sandbox::isolation`] says
//! UNCONFINED. Nothing is ever run unconfined silently.
//!
//! - [`child`]: one program's run (directory, `pre_exec` confinement, capped reading, kill).
//! - [`probe`]: which python, and what isolation actually holds.

mod child;
mod probe;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub use probe::Isolation;

use child::Confinement;

/// What one program may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time before the whole process group is killed.
    pub wall: Duration,
    /// CPU seconds (RLIMIT_CPU; SIGXCPU at the limit, SIGKILL a second later).
    pub cpu_seconds: u64,
    /// Address space (RLIMIT_AS): an allocation past it fails with `MemoryError`.
    pub memory_bytes: u64,
    /// Largest file it may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Processes (threads included) of the slot's uid (RLIMIT_NPROC); only enforced when
    /// the sandbox runs as root and can give each slot its own uid.
    pub processes: u64,
    /// Bytes kept of stdout and of stderr each; the rest is read and dropped.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            file_size_bytes: 16 << 20,
            processes: 64,
            output_bytes: 64 << 10,
        }
    }
}

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub limits: Limits,
    /// The python3 to run; `None`: the first of `/usr/bin/python3`, `/usr/local/bin/python3`,
    /// `/bin/python3` and `python3` on `PATH` that the sandboxed uid can run.
    pub python: Option<PathBuf>,
    /// Where the per-run temporary directories go; `None`: the system temp dir.
    pub work_root: Option<PathBuf>,
    /// Go on without isolation when it is unavailable (Isolation then says UNCONFINED).
    pub allow_unconfined: bool,
    /// Programs that may run at once.
    pub pool_size: usize,
    /// As root, each run has a uid of its own: the first free one (locked in `work_root`)
    /// from this base on, so sandboxes of several processes never share one.
    pub uid_base: u32,
    /// Do not create namespaces: the probe then sees the network and the sandbox refuses
    /// unless `allow_unconfined`. For hosts where `unshare` is known to misbehave, and for
    /// testing the refusal.
    pub skip_namespaces: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            python: None,
            work_root: None,
            allow_unconfined: false,
            pool_size: std::thread::available_parallelism().map_or(4, |n| n.get()),
            uid_base: 61000,
            skip_namespaces: false,
        }
    }
}

/// Why a sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot isolate: {reason}; pass --allow-unconfined to run untrusted code without isolation"
    )]
    CannotIsolate { reason: String },
    #[error("no python3 the sandbox can run: {tried}")]
    NoPython { tried: String },
    #[error("invalid sandbox config: {0}")]
    Config(String),
}

/// How a program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    /// Killed by this signal (other than the sandbox's own kill at the wall limit).
    Signaled(i32),
    /// Past the wall-clock limit; its process group was killed.
    TimedOut,
    /// Past the CPU-time limit (SIGXCPU).
    CpuLimit,
    /// It could not be started (temporary directory, spawn): what failed.
    NotRun(String),
}

impl Status {
    /// Exit status 0.
    pub fn passed(&self) -> bool {
        *self == Status::Exited(0)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::Signaled(signal) => write!(f, "killed by signal {signal}"),
            Status::TimedOut => write!(f, "timed out"),
            Status::CpuLimit => write!(f, "cpu time limit"),
            Status::NotRun(why) => write!(f, "not run: {why}"),
        }
    }
}

/// What a program did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Status,
    /// At most `Limits::output_bytes`, lossily decoded as UTF-8.
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
}

/// Runs untrusted Python, isolated as [`Sandbox::isolation`] says.
pub struct Sandbox {
    python: PathBuf,
    work_root: PathBuf,
    limits: Limits,
    confinement: Confinement,
    isolation: Isolation,
    pool_size: usize,
    /// Runs going on now (at most `pool_size`).
    running: Mutex<usize>,
    freed: Condvar,
}

impl Sandbox {
    /// Checks the config, finds python and probes isolation (a few short runs).
    pub fn new(config: Config) -> Result<Sandbox, SandboxError> {
        validate(&config)?;
        let work_root = config.work_root.clone().unwrap_or_else(std::env::temp_dir);
        let (python, confinement, isolation) = probe::probe(&config, &work_root)?;
        Ok(Sandbox {
            python,
            work_root,
            limits: config.limits,
            confinement,
            isolation,
            pool_size: config.pool_size,
            running: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// What isolation holds (as probed).
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The python3 that runs the programs.
    pub fn python(&self) -> &std::path::Path {
        &self.python
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs one program with no stdin; waits for a free slot.
    pub fn run(&self, program: &str) -> Outcome {
        self.run_with_input(program, None)
    }

    /// Runs one program with `stdin` as its standard input (`None`: /dev/null).
    pub fn run_with_input(&self, program: &str, stdin: Option<&str>) -> Outcome {
        self.take_slot();
        let outcome = child::run(&child::Run {
            python: &self.python,
            work_root: &self.work_root,
            program,
            stdin,
            limits: &self.limits,
            confinement: &self.confinement,
        });
        self.give_slot();
        outcome
    }

    /// Runs each program, at most `parallel` (and the pool size) at once; outcomes in the
    /// programs' order.
    pub fn run_many(&self, programs: &[String], parallel: usize) -> Vec<Outcome> {
        let inputs: Vec<(&str, Option<&str>)> =
            programs.iter().map(|p| (p.as_str(), None)).collect();
        self.run_many_with_input(&inputs, parallel)
    }

    /// [`Sandbox::run_many`] with a stdin per program.
    pub fn run_many_with_input(
        &self,
        programs: &[(&str, Option<&str>)],
        parallel: usize,
    ) -> Vec<Outcome> {
        let workers = parallel
            .clamp(1, self.pool_size().max(1))
            .min(programs.len());
        let next = AtomicUsize::new(0);
        let mut done: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(program, stdin)) = programs.get(i) else {
                                return mine;
                            };
                            mine.push((i, self.run_with_input(program, stdin)));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, outcome)| outcome).collect()
    }

    /// Most programs that run at once.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Waits until fewer than `pool_size` runs go on, and counts this one.
    fn take_slot(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.pool_size {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
    }

    fn give_slot(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.freed.notify_one();
    }
}

fn validate(config: &Config) -> Result<(), SandboxError> {
    let limits = &config.limits;
    let bad = if config.pool_size == 0 {
        Some("pool_size is 0")
    } else if limits.wall.is_zero() {
        Some("limits.wall is 0")
    } else if limits.cpu_seconds == 0 {
        Some("limits.cpu_seconds is 0")
    } else if limits.memory_bytes < (64 << 20) {
        Some("limits.memory_bytes is under 64 MiB (python itself needs more)")
    } else if limits.processes == 0 {
        Some("limits.processes is 0")
    } else if config.uid_base.checked_add(child::UID_SPAN).is_none() {
        Some("uid_base is too high: the uids it leases would overflow")
    } else {
        None
    };
    match bad {
        Some(why) => Err(SandboxError::Config(why.to_string())),
        None => Ok(()),
    }
}
