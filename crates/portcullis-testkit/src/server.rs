//! Running a database server (a `postgres` postmaster, a `mariadbd`) as a child
//! process, with a watchdog that shuts it down (and removes its directory) if this
//! process dies without dropping it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext};
use crate::sys::ServerUser;

/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(20);
/// How long a server may take to become ready.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of server log go into error messages.
const LOG_TAIL_LINES: usize = 40;

/// The watchdog: a tiny shell loop whose stdin is a pipe from this process.
///
/// Lines `INT` / `QUIT` / `TERM` / `KILL` make it send that signal to the server
/// (and forget its pid); `FORGET` makes it forget the pid; `DISARM` makes it forget
/// pid and directory. At end of input (this process died, or dropped the
/// [`Server`]) it sends its third argument's signal (SIGQUIT for PostgreSQL) to a
/// still-remembered server, waits up to five seconds, SIGKILLs it, and removes a
/// still-remembered server directory.
/// It runs in its own process group so a terminal's Ctrl-C does not reach it.
const WATCHDOG_SCRIPT: &str = r#"trap '' INT HUP TERM PIPE
pid=$1
dir=$2
sig=${3:-QUIT}
while IFS= read -r cmd; do
  case $cmd in
    INT|QUIT|TERM|KILL) if [ -n "$pid" ]; then kill -s "$cmd" "$pid" 2>/dev/null; pid=; fi ;;
    FORGET) pid= ;;
    DISARM) pid=; dir= ;;
  esac
done
if [ -n "$pid" ]; then
  kill -s "$sig" "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  kill -s KILL "$pid" 2>/dev/null
fi
if [ -n "$dir" ]; then rm -rf -- "$dir"; fi
"#;

/// A signal that asks a server to stop.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shutdown {
    /// SIGINT: PostgreSQL's "fast" shutdown — disconnect clients, checkpoint, exit
    /// cleanly.
    Fast,
    /// SIGQUIT: PostgreSQL's "immediate" shutdown — exit at once, crash recovery on
    /// next start.
    Immediate,
    /// SIGTERM: MariaDB's normal shutdown.
    Terminate,
    /// SIGKILL: gone at once, whatever the server.
    Kill,
}

impl Shutdown {
    fn command(self) -> &'static str {
        match self {
            Shutdown::Fast => "INT",
            Shutdown::Immediate => "QUIT",
            Shutdown::Terminate => "TERM",
            Shutdown::Kill => "KILL",
        }
    }
}

/// Why [`Server::wait_until`] gave up.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// The server exited (and was reaped).
    Exited(ExitStatus),
    /// The time was up.
    TimedOut,
    /// Waiting for the child failed.
    Wait(std::io::Error),
}

/// What to start.
pub(crate) struct Spec<'a> {
    pub(crate) postgres: &'a Path,
    pub(crate) data_dir: &'a Path,
    /// Port number (also names the unix socket `.s.PGSQL.<port>`).
    pub(crate) port: u16,
    pub(crate) socket_dir: &'a Path,
    /// Extra `-c name=value` settings.
    pub(crate) settings: &'a [&'a str],
    /// Server stdout/stderr are appended here.
    pub(crate) log: &'a Path,
    /// Working directory (must be reachable by `user`).
    pub(crate) cwd: &'a Path,
    pub(crate) user: ServerUser,
    /// Removed by the watchdog if this process dies.
    pub(crate) cleanup_dir: Option<&'a Path>,
    /// Whether readiness includes accepting TCP connections on 127.0.0.1:`port`.
    pub(crate) tcp: bool,
}

/// Why a start attempt failed.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The port was taken (by the time the server tried to bind it).
    PortInUse(Error),
    /// Anything else.
    Other(Error),
}

/// A running (or stopped) server child.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    watchdog: Option<Watchdog>,
    exited: bool,
    /// How the server is stopped when dropped or when its start fails.
    abort: Shutdown,
}

impl Server {
    /// Starts the server and waits until it accepts connections.
    pub(crate) fn start(spec: &Spec<'_>) -> Result<Server, StartFailure> {
        let log_start = fs::metadata(spec.log).map(|m| m.len()).unwrap_or(0);
        let mut server = Server::spawn(spec).map_err(StartFailure::Other)?;
        match server.wait_ready(spec, log_start) {
            Ok(()) => Ok(server),
            Err(failure) => {
                server.stop(Shutdown::Immediate);
                Err(failure)
            }
        }
    }

    fn spawn(spec: &Spec<'_>) -> Result<Server, Error> {
        let mut cmd = Command::new(spec.postgres);
        cmd.arg("-D")
            .arg(spec.data_dir)
            .arg("-p")
            .arg(spec.port.to_string())
            .arg("-k")
            .arg(spec.socket_dir);
        for setting in spec.settings {
            cmd.arg("-c").arg(setting);
        }
        cmd.current_dir(spec.cwd)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT");
        Server::spawn_command(
            cmd,
            spec.log,
            spec.user,
            spec.cleanup_dir,
            Shutdown::Immediate,
        )
    }

    /// Spawns `cmd` (program, arguments, environment and working directory set by
    /// the caller) as `user`, with stdin closed, stdout and stderr appended to
    /// `log`, in its own process group, under a watchdog that removes
    /// `cleanup_dir` if this process dies. `abort` is how the server is stopped
    /// when the [`Server`] is dropped, or by the watchdog.
    pub(crate) fn spawn_command(
        mut cmd: Command,
        log: &Path,
        user: ServerUser,
        cleanup_dir: Option<&Path>,
        abort: Shutdown,
    ) -> Result<Server, Error> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx(|| format!("opening {}", log.display()))?;
        let log2 = log_file
            .try_clone()
            .ctx(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log2)
            // Keep terminal signals (Ctrl-C) away from the server; the watchdog
            // takes care of it if this process dies.
            .process_group(0);
        user.apply(&mut cmd);
        let child = cmd
            .spawn()
            .ctx(|| format!("starting {}", Path::new(cmd.get_program()).display()))?;
        let watchdog = Watchdog::spawn(child.id(), cleanup_dir, abort);
        Ok(Server {
            child,
            watchdog,
            exited: false,
            abort,
        })
    }

    /// Polls `ready` (and whether the server is still running) every 20 ms until it
    /// returns `true`, the server exits, or `timeout` has passed.
    pub(crate) fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), NotReady> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped();
                    return Err(NotReady::Exited(status));
                }
                Ok(None) => {}
                Err(e) => return Err(NotReady::Wait(e)),
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut);
            }
            sleep(POLL);
        }
    }

    fn wait_ready(&mut self, spec: &Spec<'_>, log_start: u64) -> Result<(), StartFailure> {
        let pid_file = spec.data_dir.join("postmaster.pid");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port));
        let mut ready = false;
        let waited = self.wait_until(START_TIMEOUT, || {
            if !ready {
                ready = fs::read_to_string(&pid_file)
                    .is_ok_and(|text| text.lines().nth(7).is_some_and(|s| s.trim() == "ready"));
            }
            ready
                && (!spec.tcp || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        match waited {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => Err(self.exit_failure(spec, status, log_start)),
            Err(NotReady::Wait(e)) => {
                Err(StartFailure::Other(Error::io("waiting for postgres", e)))
            }
            Err(NotReady::TimedOut) => Err(StartFailure::Other(Error::Timeout {
                what: format!(
                    "PostgreSQL ({}, port {}) did not become ready within {}s; server log:\n{}",
                    spec.data_dir.display(),
                    spec.port,
                    START_TIMEOUT.as_secs(),
                    log_tail(spec.log, log_start)
                ),
            })),
        }
    }

    fn exit_failure(&self, spec: &Spec<'_>, status: ExitStatus, log_start: u64) -> StartFailure {
        let log = log_tail(spec.log, log_start);
        let error = Error::Command {
            what: format!("postgres -D {} -p {}", spec.data_dir.display(), spec.port),
            status,
            stderr: log.clone(),
        };
        if log.contains("could not bind") || log.contains("Address already in use") {
            StartFailure::PortInUse(error)
        } else {
            StartFailure::Other(error)
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server has been stopped (or has died and been noticed).
    pub(crate) fn exited(&self) -> bool {
        self.exited
    }

    /// The child has been reaped: its pid may be reused, so the watchdog must forget it.
    fn reaped(&mut self) {
        self.exited = true;
        if let Some(watchdog) = &mut self.watchdog {
            watchdog.send("FORGET");
        }
    }

    /// Asks the server to shut down and waits for it (SIGKILL after 10 s).
    /// Returns how it ended, if that could be observed. Never panics.
    pub(crate) fn stop(&mut self, how: Shutdown) -> Option<ExitStatus> {
        if self.exited {
            return None;
        }
        // The watchdog sends the signal (no extra process); it forgets the pid as it
        // does so, before we reap the child, so it can never signal a reused pid.
        let sent = self
            .watchdog
            .as_mut()
            .is_some_and(|w| w.send(how.command()));
        if !sent {
            let _ = self.child.kill();
        }
        let status = wait_timeout(&mut self.child, Duration::from_secs(10)).or_else(|| {
            let _ = self.child.kill();
            self.child.wait().ok()
        });
        self.reaped();
        status
    }
}

/// Dropping stops the server (if running) and ends the watchdog; the cleanup
/// directory is left alone (removing it is the owner's business).
impl Drop for Server {
    fn drop(&mut self) {
        self.stop(self.abort);
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.send("DISARM");
            watchdog.finish();
        }
    }
}

#[derive(Debug)]
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog; `None` if `sh` cannot be started (everything still works,
    /// only the cleanup after a crash of this process is lost).
    fn spawn(pid: u32, cleanup_dir: Option<&Path>, abort: Shutdown) -> Option<Watchdog> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("portcullis-testkit-watchdog")
            .arg(pid.to_string())
            .arg(cleanup_dir.map(Path::as_os_str).unwrap_or_default())
            .arg(abort.command())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        let stdin = child.stdin.take();
        Some(Watchdog { child, stdin })
    }

    fn send(&mut self, line: &str) -> bool {
        match &mut self.stdin {
            Some(stdin) => writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .is_ok(),
            None => false,
        }
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit for at most `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// The last lines of `log` written at or after byte `from`.
pub(crate) fn log_tail(log: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    let read = File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        return format!("(cannot read {}: {e})", log.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut tail = lines[start..].join("\n");
    if tail.is_empty() {
        tail = format!("(nothing in {})", log.display());
    }
    tail
}

/// Where a cluster's log lives.
pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join("postgres.log")
}
