//! The soak's child processes: the name server, the broker and the consumers, each a real
//! `quiver` process that can be killed with SIGKILL and started again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::SoakError;

/// How long a process may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a process may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running child.
pub struct Proc {
    name: String,
    child: Child,
}

/// How to start one child again: its command line and where its log goes.
#[derive(Debug, Clone)]
pub struct Spec {
    /// For messages.
    pub name: String,
    /// The `quiver` binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its standard error is appended here.
    pub log: PathBuf,
}

impl Spec {
    /// Starts the process and waits until it prints `ready`.
    pub fn start(&self) -> Result<Proc, SoakError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| SoakError::Setup(format!("starting {}: {e}", self.name)))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SoakError::Setup("no stdout pipe".into()))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            // Keep reading to the end, so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready"
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let mut proc = Proc {
            name: self.name.clone(),
            child,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Ok(proc),
            Err(_) => {
                proc.kill();
                Err(SoakError::Setup(format!(
                    "{} did not get ready within {READY_TIMEOUT:?}; see {}",
                    self.name,
                    self.log.display()
                )))
            }
        }
    }
}

impl Proc {
    /// SIGKILL: no chance to flush, commit or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for a clean exit; an error if it was not clean.
    pub fn stop(&mut self) -> Result<(), SoakError> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| SoakError::Setup(format!("{}: pid out of range", self.name)))?;
        // SAFETY: a signal to our own child, which has not been waited for yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(SoakError::Setup(format!(
                        "{} exited with {status}",
                        self.name
                    )))
                };
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                return Err(SoakError::Setup(format!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768–60999), so that no
/// outgoing connection takes a port while its server is down for a restart.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port free right now, for a server that is restarted on the same port.
pub fn free_port() -> Result<u16, SoakError> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORTS.end - PORTS.start;
    // Tests on the same machine use this range too: start somewhere the clock picks.
    let seed = (super::now_ms() as u64 % u64::from(span)) as u16;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + (seed + step) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(SoakError::Setup(format!("no free port in {PORTS:?}")))
}

/// Writes the broker's config for the soak.
pub fn write_broker_config(
    dir: &Path,
    port: u16,
    namesrv: &str,
    flush: &str,
    shards: usize,
    write_buffer_bytes: u64,
) -> Result<PathBuf, SoakError> {
    let path = dir.join("broker.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         vip_channel = false\n\
         broker_ip = \"127.0.0.1\"\n\
         namesrv_addrs = [\"{namesrv}\"]\n\
         # A restarted name server learns the routes at the next registration.\n\
         register_interval_ms = 5000\n\
         # A killed orderly consumer's queue locks lapse sooner than RocketMQ's 60 s.\n\
         lock_ttl_ms = 10000\n\
         [store]\n\
         shards = {shards}\n\
         pin_threads = false\n\
         # No deletion under disk pressure: it removes acknowledged messages by design, and\n\
         # the soak is about crashes (a shared disk here is often over the default 0.75).\n\
         disk_max_used_ratio = 1.0\n\
         [store.log]\n\
         flush = \"{flush}\"\n\
         segment_bytes = 67108864\n\
         write_buffer_bytes = {write_buffer_bytes}\n"
    );
    std::fs::write(&path, text)?;
    Ok(path)
}
