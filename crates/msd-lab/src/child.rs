//! A process spawned in a host namespace, with its output collected line by line.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::lab::{kill_process_group, lock, Shared};
use crate::LabError;

/// How often [`LabChild::wait_exit`] checks whether the process has exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A process started with [`Host::spawn`](crate::Host::spawn).
///
/// Stdout and stderr are read by two threads into one list of lines, in the order they
/// arrive. Dropping the `LabChild` kills the process group with SIGKILL and reaps the
/// process.
#[derive(Debug)]
pub struct LabChild {
    child: Child,
    /// Key of this child in the lab's child registry.
    id: u64,
    output: Arc<Output>,
    shared: Arc<Shared>,
    exit_status: Option<ExitStatus>,
}

#[derive(Debug, Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct OutputState {
    lines: Vec<String>,
    /// Number of output streams still open.
    open_streams: usize,
}

impl LabChild {
    pub(crate) fn spawn(mut command: Command, shared: Arc<Shared>) -> Result<LabChild, LabError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|source| LabError::CommandNotStarted {
                command: format!("{command:?}"),
                source,
            })?;

        let id = shared.register_child(child.id());
        let output = Arc::new(Output::default());
        let label = format!("{command:?}");
        let pid = child.id();
        spawn_reader(child.stdout.take(), pid, &label, &output)?;
        spawn_reader(child.stderr.take(), pid, &label, &output)?;

        Ok(LabChild {
            child,
            id,
            output,
            shared,
            exit_status: None,
        })
    }

    /// Returns the process id of the child, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for an output line, from stdout or stderr, that `predicate`
    /// accepts, and returns it.
    ///
    /// Lines that arrived before this call are checked too, from the first line on, so a
    /// line printed early is not missed. Returns `None` on timeout, or earlier when both
    /// output streams have closed without a matching line.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut next = 0;
        let mut state = lock(&self.output.state);
        loop {
            while let Some(line) = state.lines.get(next) {
                next += 1;
                if predicate(line) {
                    return Some(line.clone());
                }
            }
            if state.open_streams == 0 {
                return None;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return None;
            }
            state = self
                .output
                .changed
                .wait_timeout(state, remaining)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Returns all output lines so far, each followed by a newline, for failure messages.
    pub fn output(&self) -> String {
        let state = lock(&self.output.state);
        state.lines.iter().fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        })
    }

    /// Sends `signal` to the child process (not to its whole process group).
    ///
    /// # Errors
    ///
    /// Returns [`LabError::Signal`] when the child was already reaped by
    /// [`wait_exit`](Self::wait_exit) or `kill` fails.
    pub fn signal(&self, signal: Signal) -> Result<(), LabError> {
        let pid = self.pid();
        let to_error = |source| LabError::Signal {
            pid,
            signal,
            source,
        };
        if self.exit_status.is_some() {
            // The process id may already belong to another process.
            return Err(to_error(nix::errno::Errno::ESRCH));
        }
        let raw = i32::try_from(pid).map_err(|_| to_error(nix::errno::Errno::ESRCH))?;
        kill(Pid::from_raw(raw), signal).map_err(to_error)
    }

    /// Waits up to `timeout` for the child to exit and returns its exit status, or `None`
    /// when it is still running.
    ///
    /// Once the child has exited, every later call returns the same status at once.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(EXIT_POLL_INTERVAL);
        }
    }

    /// Reaps the child if it has exited, and removes it from the lab's registry in the same
    /// step.
    fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_some() {
            return self.exit_status;
        }
        let mut children = self.shared.children();
        if let Ok(Some(status)) = self.child.try_wait() {
            children.remove(&self.id);
            self.exit_status = Some(status);
        }
        self.exit_status
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if self.try_reap().is_some() {
            return;
        }
        self.shared.children().remove(&self.id);
        kill_process_group(self.pid());
        let _ = self.child.wait();
    }
}

/// Starts a thread that collects the lines of `stream` into `output`.
fn spawn_reader<R: Read + Send + 'static>(
    stream: Option<R>,
    pid: u32,
    label: &str,
    output: &Arc<Output>,
) -> Result<(), LabError> {
    let Some(stream) = stream else {
        return Ok(());
    };
    lock(&output.state).open_streams += 1;
    let output = Arc::clone(output);
    thread::Builder::new()
        .name(format!("msd-lab output {pid}"))
        .spawn(move || collect_lines(stream, &output))
        .map(drop)
        .map_err(|source| LabError::CommandNotStarted {
            command: format!("output reader thread for {label}"),
            source,
        })
}

/// Appends each line of `stream` to `output` until the stream ends, then marks it closed.
fn collect_lines(stream: impl Read, output: &Output) {
    let mut reader = BufReader::new(stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buffer);
                let line = text.trim_end_matches(['\n', '\r']).to_owned();
                lock(&output.state).lines.push(line);
                output.changed.notify_all();
            }
        }
    }
    lock(&output.state).open_streams -= 1;
    output.changed.notify_all();
}
