//! `exec` checks: a local command, exit 0 = pass.
//!
//! The one check kind that forks, so it is the one that can leak. A check
//! command is often a shell script that starts helpers (`curl`, `sleep`,
//! `pg_isready`); killing only the direct child on timeout would leave those
//! running, one more per interval, forever. So the command runs in its own
//! process group (`setpgid(0, 0)` at spawn) and every exit path — timeout,
//! normal exit with stragglers left behind, or the check being dropped
//! because its service was removed or the agent stops — sends SIGKILL to the
//! whole group. The direct child is always reaped (tokio reaps it in the
//! background if the check is dropped mid-way).
//!
//! The command runs without a shell (argv as configured), with stdin and
//! stdout on /dev/null and the environment and working directory of the
//! agent. The first bytes of stderr are kept to explain a failure; the rest
//! is read and discarded so a chatty command cannot block on a full pipe.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, Command};
use tokio::time::{timeout, timeout_at, Instant};

use super::fmt_duration;

/// Bytes of stderr kept for the failure reason.
const STDERR_KEEP: usize = 200;
/// How long to wait for the killed child to be reaped, and for the last
/// stderr bytes after the command exited.
const REAP_GRACE: Duration = Duration::from_secs(1);
const STDERR_GRACE: Duration = Duration::from_millis(50);

/// Kills the process group when dropped: covers every way out of
/// [`run`], including cancellation of the future.
struct GroupKill {
    pgid: Option<Pid>,
}

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH: the group is already empty. The group id cannot be
            // reused while any member is alive, so this never hits a stranger.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `argv` with `limit` as deadline. `Ok(())` iff it exited 0 in time.
pub(crate) async fn run(argv: &[String], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(program, &e))?;
    // The child leads its own group, so its pid is the group id.
    let mut group = GroupKill {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    };
    let mut stderr = StderrTail::new(child.stderr.take());

    let waited = timeout_at(deadline, async {
        // Bounded by the deadline; each turn either reaps the child or makes
        // progress on stderr (and stops reading it at EOF).
        loop {
            tokio::select! {
                status = child.wait() => break status,
                () = stderr.read_some(), if stderr.is_open() => {}
            }
        }
    })
    .await;

    match waited {
        Err(_elapsed) => {
            group.kill();
            // Also the leader by pid, in case it moved itself to another group.
            let _ = child.start_kill();
            // SIGKILL cannot be caught; the wait is bounded only against a
            // process stuck in the kernel (then tokio reaps it later).
            let _ = timeout(REAP_GRACE, child.wait()).await;
            Err(format!("timeout after {}", fmt_duration(limit)))
        }
        Ok(Err(e)) => Err(format!("wait: {e}")),
        Ok(Ok(status)) => {
            // Stragglers the command left behind hold the stderr pipe open
            // and would pile up one per interval: kill them, then collect
            // whatever stderr is still buffered.
            group.kill();
            let _ = timeout(STDERR_GRACE, stderr.read_to_end()).await;
            if status.success() {
                Ok(())
            } else {
                Err(failure_text(status, stderr.text()))
            }
        }
    }
}

fn spawn_error(program: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("command not found: {program}"),
        io::ErrorKind::PermissionDenied => format!("permission denied: {program}"),
        _ => format!("spawn {program}: {e}"),
    }
}

fn failure_text(status: ExitStatus, stderr: Option<String>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    };
    match stderr {
        Some(text) => format!("{what}: {text}"),
        None => what,
    }
}

/// The beginning of a child's stderr, read without ever blocking the child.
struct StderrTail {
    pipe: Option<ChildStderr>,
    kept: Vec<u8>,
}

impl StderrTail {
    fn new(pipe: Option<ChildStderr>) -> Self {
        StderrTail {
            pipe,
            kept: Vec::new(),
        }
    }

    fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads one chunk; closes the pipe at EOF or on error. Cancel safe: a
    /// cancelled read consumed nothing.
    async fn read_some(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 1024];
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => self.pipe = None,
            Ok(n) => {
                let room = STDERR_KEEP.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }

    /// Reads until EOF (the caller bounds it with a timeout).
    async fn read_to_end(&mut self) {
        // Each turn reads at least one byte or closes the pipe.
        while self.is_open() {
            self.read_some().await;
        }
    }

    /// First non-empty line of what was kept, if any.
    fn text(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.kept);
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
}
