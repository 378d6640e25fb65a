//! One program's run: a fresh directory, a child confined in `pre_exec`, capped reading of
//! its output, a wall-clock deadline, and the kill of everything it started.

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Limits, Outcome, Status};

/// How a child is confined: plain values, so that the `pre_exec` hook only makes syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Confinement {
    /// Run as an unprivileged uid of its own, the first free one from this base (the
    /// sandbox is root): see [`lease_uid`].
    pub uid: Option<u32>,
    /// A new network namespace (only a loopback that is down: nothing is reachable).
    pub new_net: bool,
    /// A new user namespace first (needed for `new_net` when not root).
    pub new_user: bool,
}

/// How many uids from the base a run may lease.
pub(crate) const UID_SPAN: u32 = 4096;

/// A uid no other run (of this process or another) uses while the lease is held: an
/// exclusive `flock` on `grlo-sandbox-uid-<uid>.lock` in the work root. The uid must be
/// exclusive since the end of a run kills every process of its uid.
struct UidLease {
    uid: u32,
    _lock: fs::File,
}

fn lease_uid(work_root: &Path, base: u32) -> Result<UidLease, String> {
    for uid in base..base.saturating_add(UID_SPAN) {
        let path = work_root.join(format!("grlo-sandbox-uid-{uid}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open the uid lock {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(UidLease { uid, _lock: file });
        }
    }
    Err(format!(
        "all of uids {base}..{} are in use by other runs",
        base.saturating_add(UID_SPAN)
    ))
}

/// Everything one run needs.
pub(crate) struct Run<'a> {
    pub python: &'a Path,
    pub work_root: &'a Path,
    pub program: &'a str,
    pub stdin: Option<&'a str>,
    pub limits: &'a Limits,
    pub confinement: &'a Confinement,
}

/// How long to wait for the output readers once everything is killed: a process that
/// escaped the kill (possible only unconfined) may hold a pipe open.
const READER_GRACE: Duration = Duration::from_secs(1);

/// Runs the program; never panics, a run that cannot start is [`Status::NotRun`].
pub(crate) fn run(run: &Run) -> Outcome {
    let started = Instant::now();
    let not_run = |why: String| Outcome {
        status: Status::NotRun(why),
        stdout: String::new(),
        stderr: String::new(),
        wall: started.elapsed(),
        truncated: false,
    };
    let lease = match run
        .confinement
        .uid
        .map(|base| lease_uid(run.work_root, base))
    {
        Some(Err(why)) => return not_run(why),
        Some(Ok(lease)) => Some(lease),
        None => None,
    };
    let uid = lease.as_ref().map(|l| l.uid);
    if let Some(uid) = uid {
        // Whatever an earlier holder of this uid left behind (a crashed sandbox's run).
        kill_uid(uid);
    }
    let confinement = Confinement {
        uid,
        ..*run.confinement
    };
    let dir = match prepare_dir(run, uid) {
        Ok(dir) => dir,
        Err(why) => return not_run(why),
    };
    let stdin = match run.stdin {
        Some(_) => match fs::File::open(dir.path().join("stdin.txt")) {
            Ok(file) => Stdio::from(file),
            Err(e) => return not_run(format!("cannot open the program's stdin file: {e}")),
        },
        None => Stdio::null(),
    };
    let mut command = Command::new(run.python);
    command
        .arg("main.py")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let plan = Plan::new(run.limits, confinement);
    // SAFETY: `confine` only makes async-signal-safe syscalls on values copied in before
    // the fork; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || confine(&plan));
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return not_run(format!("cannot start {}: {e}", run.python.display())),
    };
    let cap = run.limits.output_bytes;
    let stdout = read_capped(child.stdout.take(), cap);
    let stderr = read_capped(child.stderr.take(), cap);

    let timed_out = wait_until_exit(&child, started + run.limits.wall);
    let wall = started.elapsed();
    kill_all(&child, uid);
    let status = match child.wait() {
        Ok(_) if timed_out => Status::TimedOut,
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Status::Exited(code),
            (None, Some(libc::SIGXCPU)) => Status::CpuLimit,
            (None, Some(signal)) => Status::Signaled(signal),
            (None, None) => Status::NotRun(format!("unknown wait status {status:?}")),
        },
        Err(e) => Status::NotRun(format!("cannot wait for the program: {e}")),
    };
    let (stdout, cut_out) = collect(stdout);
    let (stderr, cut_err) = collect(stderr);
    // The directory and what the child left in it go here (as root, whoever owns them).
    drop(dir);
    drop(lease);
    Outcome {
        status,
        stdout,
        stderr,
        wall,
        truncated: cut_out || cut_err,
    }
}

/// A fresh directory with `main.py` (and `stdin.txt`), owned by the slot's uid.
fn prepare_dir(run: &Run, uid: Option<u32>) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("grlo-sandbox-")
        .tempdir_in(run.work_root)
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                run.work_root.display()
            )
        })?;
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("main.py", run.program)?;
    if let Some(input) = run.stdin {
        write("stdin.txt", input)?;
    }
    if let Some(uid) = uid {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid))
            .and_then(|()| fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("cannot hand {} to uid {uid}: {e}", dir.path().display()))?;
    }
    Ok(dir)
}

/// The confinement with the limits as rlimit values, ready for `pre_exec`.
#[derive(Clone, Copy)]
struct Plan {
    confinement: Confinement,
    cpu: u64,
    memory: u64,
    file_size: u64,
    processes: u64,
}

impl Plan {
    fn new(limits: &Limits, confinement: Confinement) -> Plan {
        Plan {
            confinement,
            cpu: limits.cpu_seconds,
            memory: limits.memory_bytes,
            file_size: limits.file_size_bytes,
            processes: limits.processes,
        }
    }
}

/// Runs in the child between fork and exec: a new session (its pid is the process group
/// the sandbox kills), namespaces, rlimits, then the unprivileged uid last (the steps before
/// it need root). Only syscalls: no allocation after fork.
fn confine(plan: &Plan) -> io::Result<()> {
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls on integers and null pointers.
    unsafe {
        check(libc::setsid())?;
        let mut flags = 0;
        if plan.confinement.new_user {
            flags |= libc::CLONE_NEWUSER;
        }
        if plan.confinement.new_net {
            flags |= libc::CLONE_NEWNET;
        }
        if flags != 0 {
            check(libc::unshare(flags))?;
        }
        let set = |resource, soft: u64, hard: u64| {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            check(libc::setrlimit(resource, &limit))
        };
        set(libc::RLIMIT_CPU, plan.cpu, plan.cpu + 1)?;
        set(libc::RLIMIT_AS, plan.memory, plan.memory)?;
        set(libc::RLIMIT_FSIZE, plan.file_size, plan.file_size)?;
        set(libc::RLIMIT_CORE, 0, 0)?;
        if let Some(uid) = plan.confinement.uid {
            // Counted per real uid: only meaningful under the slot's own uid.
            set(libc::RLIMIT_NPROC, plan.processes, plan.processes)?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(uid))?;
            check(libc::setuid(uid))?;
        }
    }
    Ok(())
}

/// Waits for the child to exit without reaping it (so its pid, the process group's id,
/// cannot be reused before the group is killed); true when the deadline came first.
fn wait_until_exit(child: &Child, deadline: Instant) -> bool {
    let pid = child.id() as libc::id_t;
    let mut pause = Duration::from_millis(1);
    loop {
        // SAFETY: `info` is a plain struct waitid fills in.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let result = libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            // An error (ECHILD) means there is nothing left to wait for.
            result < 0 || info.si_pid() != 0
        };
        if exited {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills the child's process group and, under a slot uid, every process of that uid (a
/// grandchild that called `setsid` has left the group but not the uid).
fn kill_all(child: &Child, uid: Option<u32>) {
    // SAFETY: signals to the child's own group, whose leader is not reaped yet.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
    }
    if let Some(uid) = uid {
        kill_uid(uid);
    }
}

/// `kill(-1, SIGKILL)` from a forked helper running as `uid`: every process of that uid
/// dies (kill(-1) spares the caller, which then exits).
fn kill_uid(uid: u32) {
    // SAFETY: the forked helper only makes async-signal-safe syscalls and `_exit`s.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgid(uid) == 0 && libc::setuid(uid) == 0 {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

type Reader = Option<mpsc::Receiver<(Vec<u8>, bool)>>;

/// Reads a pipe on a thread, keeping the first `cap` bytes and dropping the rest.
fn read_capped(pipe: Option<impl Read + Send + 'static>, cap: usize) -> Reader {
    let mut pipe = pipe?;
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut cut = false;
        let mut buffer = [0u8; 8192];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..n.min(room)]);
                    cut |= n > room;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = send.send((kept, cut));
    });
    Some(receive)
}

fn collect(reader: Reader) -> (String, bool) {
    match reader.map(|r| r.recv_timeout(READER_GRACE)) {
        Some(Ok((bytes, cut))) => (String::from_utf8_lossy(&bytes).into_owned(), cut),
        Some(Err(_)) => (
            "[sandbox: output not closed after the kill; dropped]".into(),
            true,
        ),
        None => (String::new(), false),
    }
}
