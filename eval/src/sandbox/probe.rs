//! Which python the sandbox runs, and what isolation actually holds: found out once, by
//! running a small program under the confinement and reading back what it could do.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::child::{self, Confinement};
use super::{Config, SandboxError, Status};

/// The isolation the probe verified.
#[derive(Clone, Debug)]
pub struct Isolation {
    pub python: PathBuf,
    /// `sys.version` of that python, first word.
    pub python_version: String,
    /// Connecting anywhere fails (verified: connect to 127.0.0.1 gave ENETUNREACH).
    pub network_cut: bool,
    /// The first uid runs lease (only when the sandbox is root).
    pub uid_base: Option<u32>,
    /// The rlimits as set, in words.
    pub rlimits: String,
    /// Why the programs are not isolated, when they are not (allowed by the config).
    pub unconfined: Option<String>,
}

impl Isolation {
    /// True when no isolation step is missing.
    pub fn is_confined(&self) -> bool {
        self.unconfined.is_none()
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.unconfined {
            write!(f, "UNCONFINED (allowed by --allow-unconfined): {why}; ")?;
        }
        if self.network_cut {
            write!(f, "network namespace + ")?;
        }
        if let Some(base) = self.uid_base {
            write!(f, "a uid of its own per run ({base}..) + ")?;
        }
        write!(
            f,
            "rlimits ({}) + process-group kill; python {} {}",
            self.rlimits,
            self.python.display(),
            self.python_version
        )
    }
}

/// Prints what the program can do, as JSON, for [`check`] to judge.
const PROBE: &str = r#"
import errno, json, os, resource, socket, sys
report = {"uid": os.getuid(), "version": sys.version.split()[0]}
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(2)
try:
    s.connect(("127.0.0.1", 9))
    report["net"] = "connected"
except OSError as e:
    report["net"] = errno.errorcode.get(e.errno, str(e))
for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC"):
    report[name] = resource.getrlimit(getattr(resource, name))[0]
print(json.dumps(report))
"#;

const DEFAULT_PYTHONS: [&str; 3] = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"];

/// Finds a python that runs confined and checks each isolation step; refuses when one is
/// missing unless the config allows running unconfined.
pub(crate) fn probe(
    config: &Config,
    work_root: &Path,
) -> Result<(PathBuf, Confinement, Isolation), SandboxError> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let namespaces = !config.skip_namespaces;
    let wanted = Confinement {
        uid: root.then_some(config.uid_base),
        new_net: namespaces,
        new_user: namespaces && !root,
    };
    let candidates = candidates(config)?;
    let mut tried = Vec::new();
    for python in &candidates {
        match attempt(config, work_root, python, wanted) {
            Ok(report) => return finish(config, python, wanted, &report, None),
            Err(why) => tried.push(format!("{}: {why}", python.display())),
        }
    }
    if namespaces {
        // Tell "namespaces are unavailable" apart from "no python runs at all".
        let plain = Confinement {
            new_net: false,
            new_user: false,
            ..wanted
        };
        for (python, failure) in candidates.iter().zip(&tried) {
            if let Ok(report) = attempt(config, work_root, python, plain) {
                let why = format!(
                    "cannot create a network namespace ({failure}){}",
                    namespace_hint(root)
                );
                return finish(config, python, plain, &report, Some(why));
            }
        }
    }
    Err(SandboxError::NoPython {
        tried: tried.join("; "),
    })
}

fn candidates(config: &Config) -> Result<Vec<PathBuf>, SandboxError> {
    if let Some(python) = &config.python {
        return Ok(vec![python.clone()]);
    }
    let mut found: Vec<PathBuf> = DEFAULT_PYTHONS.iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        found.extend(std::env::split_paths(&path).map(|dir| dir.join("python3")));
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for python in found {
        let Ok(real) = python.canonicalize() else {
            continue;
        };
        if !unique
            .iter()
            .any(|u| u.canonicalize().ok().as_ref() == Some(&real))
        {
            unique.push(python);
        }
    }
    if unique.is_empty() {
        return Err(SandboxError::NoPython {
            tried: format!(
                "none of {} or python3 on PATH exists",
                DEFAULT_PYTHONS.join(", ")
            ),
        });
    }
    Ok(unique)
}

/// Runs the probe; its JSON report, or why it did not run.
fn attempt(
    config: &Config,
    work_root: &Path,
    python: &Path,
    confinement: Confinement,
) -> Result<Value, String> {
    let outcome = child::run(&child::Run {
        python,
        work_root,
        program: PROBE,
        stdin: None,
        limits: &config.limits,
        confinement: &confinement,
    });
    if outcome.status != Status::Exited(0) {
        let last = outcome
            .stderr
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        return Err(format!("{} {last}", outcome.status).trim_end().to_string());
    }
    serde_json::from_str(outcome.stdout.trim())
        .map_err(|e| format!("probe printed {:?}: {e}", outcome.stdout))
}

/// Judges the probe's report; an error when a step is missing and that is not allowed.
fn finish(
    config: &Config,
    python: &Path,
    confinement: Confinement,
    report: &Value,
    mut unconfined: Option<String>,
) -> Result<(PathBuf, Confinement, Isolation), SandboxError> {
    let mut problems: Vec<String> = unconfined.take().into_iter().collect();
    let net = report["net"].as_str().unwrap_or("nothing");
    let network_cut = net == "ENETUNREACH";
    if !network_cut && problems.is_empty() {
        problems.push(format!(
            "the network is reachable (connect to 127.0.0.1:9 gave {net}, not ENETUNREACH)"
        ));
    }
    if let Some(base) = confinement.uid {
        let uid = report["uid"].as_u64().unwrap_or(0);
        if !(base as u64..base as u64 + child::UID_SPAN as u64).contains(&uid) {
            problems.push(format!(
                "the program ran as uid {uid}, not one from {base} on"
            ));
        }
    }
    let limits = &config.limits;
    let expected = [
        ("RLIMIT_AS", limits.memory_bytes),
        ("RLIMIT_CPU", limits.cpu_seconds),
        ("RLIMIT_FSIZE", limits.file_size_bytes),
    ];
    for (name, value) in expected {
        if report[name].as_u64() != Some(value) {
            problems.push(format!("{name} is {}, not {value}", report[name]));
        }
    }
    if !problems.is_empty() {
        let why = problems.join("; ");
        if !config.allow_unconfined {
            return Err(SandboxError::CannotIsolate { reason: why });
        }
        unconfined = Some(why);
    }
    let mut rlimits = format!(
        "cpu {} s, address space {} MiB, file size {} MiB",
        limits.cpu_seconds,
        limits.memory_bytes >> 20,
        limits.file_size_bytes >> 20
    );
    match confinement.uid {
        Some(_) => rlimits.push_str(&format!(", {} processes", limits.processes)),
        None => rlimits.push_str(", no process limit (not root: no uid of its own)"),
    }
    let isolation = Isolation {
        python: python.to_path_buf(),
        python_version: report["version"].as_str().unwrap_or("?").to_string(),
        network_cut,
        uid_base: confinement.uid,
        rlimits,
        unconfined,
    };
    Ok((python.to_path_buf(), confinement, isolation))
}

/// Why namespaces may be unavailable, from the sysctls that switch them off.
fn namespace_hint(root: bool) -> String {
    if root {
        return "; as root this needs CAP_SYS_ADMIN (a container without it cannot unshare)".into();
    }
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut hints = Vec::new();
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        hints.push("user namespaces are disabled (sysctl user.max_user_namespaces = 0)");
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        hints.push("unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone = 0)");
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        hints.push("AppArmor restricts unprivileged user namespaces (sysctl kernel.apparmor_restrict_unprivileged_userns = 1)");
    }
    hints.iter().map(|h| format!("; {h}")).collect()
}
