//! `loopback`: the network side of the physical limit in `bench/scripts/limits.sh`. One
//! 127.0.0.1 TCP connection; a writer pushes `--write-kib` writes through it for `--secs`
//! seconds into a reader that discards them. Prints the bandwidth the reader received, in MB/s
//! (10^6 bytes), as text or as one JSON line.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Loopback TCP bandwidth: one connection, large writes, a reader that discards")]
struct Cli {
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// KiB per write.
    #[arg(long, default_value_t = 1024)]
    write_kib: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Two threads, one for each end, as a broker and its client would have on this machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (bytes, seconds) = runtime.block_on(measure(&cli))?;
    let mb_per_s = bytes as f64 / seconds / 1e6;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "bytes": bytes, "seconds": seconds, "write_kib": cli.write_kib, "mb_per_s": mb_per_s,
            })
        );
    } else {
        println!(
            "loopback TCP, {} KiB writes, one connection: {mb_per_s:.0} MB/s ({bytes} bytes in {seconds:.2} s)",
            cli.write_kib
        );
    }
    Ok(())
}

async fn measure(cli: &Cli) -> anyhow::Result<(u64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.context("accepting")?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            let n = socket.read(&mut buf).await.context("reading")?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            total += n as u64;
        }
        let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        anyhow::Ok((total, seconds))
    });
    let mut socket = TcpStream::connect(addr).await.context("connecting")?;
    socket.set_nodelay(true)?;
    let chunk = vec![b'l'; cli.write_kib.max(1) << 10];
    let end = Instant::now() + Duration::from_secs_f64(cli.secs);
    while Instant::now() < end {
        socket.write_all(&chunk).await.context("writing")?;
    }
    socket.shutdown().await.context("closing")?;
    drop(socket);
    let (total, seconds) = reader.await.context("the reader panicked")??;
    if seconds <= 0.0 {
        anyhow::bail!("the reader received nothing");
    }
    Ok((total, seconds))
}
