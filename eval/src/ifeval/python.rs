//! The Python subprocess behind the checks that lm-eval scores with NLTK and langdetect.
//!
//! Punkt's sentence splitter, NLTK's `word_tokenize` and langdetect's detector are big
//! statistical models whose answers a port would only approximate, so when a Python with
//! those packages is at hand, one long-lived `python` runs `python_server.py` and answers
//! exactly as lm-eval's own calls would. Requests are JSON lines; one mutex serialises them.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde_json::{Value, json};

/// The server's source, run with `python -c`.
const SERVER: &str = include_str!("python_server.py");

/// The environment variable naming the Python to use when none is given explicitly.
pub const PYTHON_ENV: &str = "GRLO_IFEVAL_PYTHON";

/// A running Python that answers lm-eval's NLTK and langdetect calls.
pub struct Python {
    program: PathBuf,
    info: String,
    server: Mutex<Server>,
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl std::fmt::Debug for Python {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Python")
            .field("program", &self.program)
            .field("info", &self.info)
            .finish()
    }
}

impl Python {
    /// Starts the Python given, else the one `$GRLO_IFEVAL_PYTHON` names, else `python3`
    /// on `PATH`, and checks that it imports nltk and langdetect and finds punkt_tab's
    /// English data; the error says which of these is missing.
    pub fn find(explicit: Option<&Path>) -> Result<Python, String> {
        let program = match explicit {
            Some(path) => path.to_path_buf(),
            None => match std::env::var_os(PYTHON_ENV) {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => PathBuf::from("python3"),
            },
        };
        let shown = program.display().to_string();
        let mut stderr = tempfile::tempfile()
            .map_err(|e| format!("cannot make a file for {shown}'s stderr: {e}"))?;
        let mut child = Command::new(&program)
            .arg("-c")
            .arg(SERVER)
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.try_clone().map_err(|e| {
                format!("cannot share the stderr file of python {shown}: {e}")
            })?))
            .spawn()
            .map_err(|e| format!("cannot start python {shown}: {e}"))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout was piped"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let hello: Option<Value> = serde_json::from_str(&line).ok();
        let fail = |why: String, child: &mut Child, stderr: &mut std::fs::File| {
            let _ = child.kill();
            let _ = child.wait();
            let mut text = String::new();
            let _ = stderr.rewind();
            let _ = stderr.read_to_string(&mut text);
            let tail: String = text.trim().lines().last().unwrap_or("").to_string();
            if tail.is_empty() {
                format!("python {shown}: {why}")
            } else {
                format!("python {shown}: {why} (stderr: {tail})")
            }
        };
        let hello = match (read, hello) {
            (Ok(_), Some(hello)) => hello,
            (Err(e), _) => {
                return Err(fail(
                    format!("cannot read its answer: {e}"),
                    &mut child,
                    &mut stderr,
                ));
            }
            (Ok(_), None) => {
                return Err(fail(
                    "it exited or answered nonsense before it was ready".into(),
                    &mut child,
                    &mut stderr,
                ));
            }
        };
        if let Some(error) = hello.get("error").and_then(Value::as_str) {
            return Err(fail(error.to_string(), &mut child, &mut stderr));
        }
        let field = |name: &str| {
            hello
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let info = format!(
            "python {shown} (nltk {}, langdetect {}, punkt_tab {})",
            field("nltk"),
            field("langdetect"),
            field("punkt_tab")
        );
        Ok(Python {
            program,
            info,
            server: Mutex::new(Server {
                child,
                stdin,
                stdout,
            }),
        })
    }

    /// Which Python this is and the versions it scores with, for a report's notes.
    pub fn describe(&self) -> String {
        self.info.clone()
    }

    /// Punkt's English sentence count of `text`, as lm-eval's `count_sentences`.
    pub(crate) fn count_sentences(&self, text: &str) -> Result<usize, String> {
        count(&self.call("sentences", text)?, "sentences")
    }

    /// How many of NLTK's `word_tokenize` tokens of `text` are upper case (`str.isupper`).
    pub(crate) fn capital_words(&self, text: &str) -> Result<usize, String> {
        count(&self.call("capital_words", text)?, "capital_words")
    }

    /// langdetect's language code for `text`, or `None` where langdetect raises (lm-eval
    /// then counts the instruction as followed).
    pub(crate) fn detect_language(&self, text: &str) -> Result<Option<String>, String> {
        let answer = self.call("lang", text)?;
        match answer.get("lang") {
            Some(Value::String(lang)) => Ok(Some(lang.clone())),
            Some(Value::Null) => Ok(None),
            _ => Err(format!(
                "python {}: answer {answer} to lang has no lang",
                self.program.display()
            )),
        }
    }

    fn call(&self, op: &str, text: &str) -> Result<Value, String> {
        let shown = self.program.display();
        let mut server = self
            .server
            .lock()
            .map_err(|_| format!("python {shown}: an earlier call panicked"))?;
        let mut request = json!({ "op": op, "text": text }).to_string();
        request.push('\n');
        server
            .stdin
            .write_all(request.as_bytes())
            .and_then(|()| server.stdin.flush())
            .map_err(|e| format!("python {shown}: cannot send {op}: {e}"))?;
        let mut line = String::new();
        match server.stdout.read_line(&mut line) {
            Ok(0) => return Err(format!("python {shown} exited while answering {op}")),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "python {shown}: cannot read the answer to {op}: {e}"
                ));
            }
        }
        let answer: Value = serde_json::from_str(&line)
            .map_err(|e| format!("python {shown}: answer to {op} is not JSON ({e}): {line}"))?;
        if let Some(error) = answer.get("error").and_then(Value::as_str) {
            return Err(format!("python {shown} failed at {op}: {error}"));
        }
        Ok(answer)
    }
}

fn count(answer: &Value, op: &str) -> Result<usize, String> {
    answer
        .get("n")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| format!("python's answer {answer} to {op} has no count"))
}

impl Drop for Python {
    fn drop(&mut self) {
        if let Ok(server) = self.server.get_mut() {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
    }
}
