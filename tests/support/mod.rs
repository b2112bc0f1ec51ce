//! Starting real `quiver` processes for end-to-end tests: a standalone name server + broker in
//! a temporary directory, on ports the kernel picks, read back from the process's output.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A running `quiver standalone`.
pub struct Standalone {
    child: Child,
    /// Where the name server listens.
    pub namesrv: SocketAddr,
    /// Where the broker listens (and what it advertises).
    pub broker: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    config: PathBuf,
}

/// Settings for a test process: small segments, loopback, and `extra` TOML lines for the
/// `[broker]` table (before its `[broker.store]` sub-tables).
pub fn write_config(
    dir: &Path,
    namesrv_port: u16,
    broker_port: u16,
    flush: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("quiver.toml");
    let text = format!(
        "[namesrv]\nlisten = \"127.0.0.1:{namesrv_port}\"\n\
         [broker]\nlisten = \"127.0.0.1:{broker_port}\"\nvip_channel = false\nbroker_ip = \"127.0.0.1\"\n{extra}\n\
         [broker.store]\nshards = 2\npin_threads = false\ncq_file_entries = 4096\n\
         [broker.store.log]\nflush = \"{flush}\"\nsegment_bytes = 16777216\n"
    );
    std::fs::write(&path, text).expect("writing the test config");
    path
}

/// Lines a process wrote to its stderr (its log), collected by a thread as they come, so a
/// test can wait for the line that names a problem.
#[derive(Clone, Default)]
pub struct LogLines {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl LogLines {
    /// An empty collection.
    pub fn new() -> LogLines {
        LogLines::default()
    }

    /// Lines collected so far: a mark to wait from.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no line has come yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every line collected so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// The first line at or after index `from` that contains every one of `parts`, waiting up
    /// to `timeout` for it to be written; panics with the lines seen if none comes.
    pub fn wait_for(&self, from: usize, parts: &[&str], timeout: Duration) -> String {
        self.wait_for_count(from, parts, 1, timeout).remove(0)
    }

    /// The lines at or after index `from` that contain every one of `parts`, once there are at
    /// least `count` of them, waiting up to `timeout`; panics with the lines seen otherwise.
    pub fn wait_for_count(
        &self,
        from: usize,
        parts: &[&str],
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        let (lines, arrived) = &*self.inner;
        let mut seen = lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let found: Vec<String> = seen
                .iter()
                .skip(from)
                .filter(|line| parts.iter().all(|part| line.contains(part)))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let now = std::time::Instant::now();
            assert!(
                now < deadline,
                "{} of {count} log lines with {parts:?} within {timeout:?}; lines since {from}:\n{}",
                found.len(),
                seen.get(from..).unwrap_or_default().join("\n")
            );
            seen = arrived
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn push(&self, line: String) {
        let (lines, arrived) = &*self.inner;
        lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        arrived.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `line` without terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Standalone {
    /// Starts `quiver standalone` with `config`, data under `data_dir`, and waits for `ready`.
    pub fn start(config: &Path, data_dir: &Path) -> Standalone {
        Standalone::spawn(config, data_dir, None)
    }

    /// As [`Standalone::start`], with the process's log (stderr, `RUST_LOG=warn`, no colours)
    /// collected into `log` as well as passed on to this process's stderr.
    pub fn start_logged(config: &Path, data_dir: &Path, log: &LogLines) -> Standalone {
        Standalone::spawn(config, data_dir, Some(log))
    }

    /// As [`Standalone::start`], under an open-file limit of `limit` (soft and hard, set in the
    /// child before it runs, so the process cannot raise it).
    pub fn start_with_file_limit(config: &Path, data_dir: &Path, limit: u64) -> Standalone {
        let mut command = Standalone::command(config, data_dir);
        limit_open_files(&mut command, limit);
        Standalone::spawn_command(command, data_dir, config, None)
    }

    /// `quiver standalone` with `config` and `data_dir`, output piped.
    pub fn command(config: &Path, data_dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
        command
            .arg("standalone")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        command
    }

    fn spawn(config: &Path, data_dir: &Path, log: Option<&LogLines>) -> Standalone {
        let command = Standalone::command(config, data_dir);
        Standalone::spawn_command(command, data_dir, config, log)
    }

    fn spawn_command(
        mut command: Command,
        data_dir: &Path,
        config: &Path,
        log: Option<&LogLines>,
    ) -> Standalone {
        if log.is_some() {
            command.env("NO_COLOR", "1").stderr(Stdio::piped());
        } else {
            command.stderr(Stdio::inherit());
        }
        let mut child = command.spawn().expect("spawning quiver");
        if let Some(log) = log {
            let stderr = child.stderr.take().expect("stderr is piped");
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    eprintln!("{line}");
                    log.push(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut namesrv, mut broker) = (None, None);
        for line in lines.by_ref() {
            let line = line.expect("reading quiver's output");
            if let Some(rest) = line.strip_prefix("namesrv listening on ") {
                namesrv = rest.parse().ok();
            } else if let Some(rest) = line.strip_prefix("broker listening on ") {
                broker = rest.split(' ').next().and_then(|a| a.parse().ok());
            } else if line == "ready" {
                break;
            }
        }
        // Keep draining so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Standalone {
            child,
            namesrv: namesrv.expect("quiver printed no name server address"),
            broker: broker.expect("quiver printed no broker address"),
            data_dir: data_dir.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Files under its data directory that it holds open although they were deleted (what a
    /// broker writing an offset index into an unlinked file shows).
    pub fn deleted_files_held(&self) -> Vec<String> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let fds = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&fds)
            .unwrap_or_else(|e| panic!("{fds}: {e}"))
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .filter(|target| target.starts_with(&data) && target.ends_with("(deleted)"))
            .collect()
    }

    /// SIGKILL: no chance to flush or write anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the clean exit; panics if it was not clean.
    pub fn stop(mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "quiver exited with {status}");
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for quiver") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quiver did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes `command` run under an open-file limit of `limit`, soft and hard.
pub fn limit_open_files(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls setrlimit,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A tmpfs mounted for a test's lifetime (needs root, as CI runs), for a real full disk.
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `8m`).
    pub fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("a temporary directory");
        let path = parent.path().join("fs");
        std::fs::create_dir(&path).expect("creating the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Tmpfs {
            path,
            _parent: parent,
        }
    }

    /// Bytes still free on it.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .expect("a mount point without NUL bytes");
        // SAFETY: `statvfs` is plain data; the kernel fills it from a valid C string path.
        let (rc, stat) = unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            (libc::statvfs(path.as_ptr(), &mut stat), stat)
        };
        assert_eq!(rc, 0, "statvfs of the tmpfs failed");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768–60999), so that no
/// outgoing connection can take a port while its process is down for a restart.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port free right now, for a process that must be restarted on the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test binary starts at a different place, and each call moves on, so that concurrent
    // tests do not try the same port.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let seed = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + (seed + step) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// A `PULL_MESSAGE` of up to `max` messages of `topic`'s queue `queue` from `offset`, with the
/// subscription (`*`) in the request; held up to `suspend_ms` when nothing is there (0: answered
/// at once).
pub fn pull(
    topic: &str,
    queue: i32,
    offset: i64,
    max: i32,
    suspend_ms: i64,
) -> quiver_net::remoting::RemotingCommand {
    use quiver_net::remoting::RemotingCommand;
    use quiver_net::remoting::codes::request;
    // Subscription in the request (4), held if nothing is there (2) when asked to wait.
    let sys_flag = if suspend_ms > 0 { 4 | 2 } else { 4 };
    RemotingCommand::request(request::PULL_MESSAGE)
        .with_field("consumerGroup", "test-checker")
        .with_field("topic", topic)
        .with_field("queueId", queue)
        .with_field("queueOffset", offset)
        .with_field("maxMsgNums", max)
        .with_field("sysFlag", sys_flag)
        .with_field("commitOffset", 0)
        .with_field("suspendTimeoutMillis", suspend_ms)
        .with_field("subscription", "*")
        .with_field("subVersion", 0)
}

/// Every message of `topic`'s queue `queue`, in order from offset 0; panics on a gap or an
/// answer other than messages, none, or no such topic.
pub async fn read_queue(
    client: &quiver_net::client::RemotingClient,
    topic: &str,
    queue: i32,
) -> Vec<quiver_net::message::DecodedMessage> {
    use quiver_net::remoting::codes::response;
    let mut out = Vec::new();
    loop {
        let offset = out.len() as i64;
        let answer = client
            .invoke(pull(topic, queue, offset, 256, 0), Duration::from_secs(10))
            .await
            .expect("a pull answered");
        match answer.code {
            response::SUCCESS => {
                let messages = quiver_net::message::decode_messages(&answer.body_bytes())
                    .expect("stored messages decode");
                for m in messages {
                    assert_eq!(
                        m.queue_offset,
                        out.len() as i64,
                        "queue {queue} of {topic} has a gap"
                    );
                    out.push(m);
                }
            }
            response::PULL_NOT_FOUND | response::TOPIC_NOT_EXIST => return out,
            code => panic!(
                "pull of queue {queue} of {topic} at {offset}: {code} {:?}",
                answer.remark
            ),
        }
    }
}
