//! The physical baseline: `fio` sequential write bandwidth on the same disk, measured in the
//! same run as the engine, so results are quoted as a fraction of what the device can do.

use std::path::Path;
use std::process::Command;

/// Sequential write bandwidth measured by fio, in MB/s (10^6 bytes).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FioBaseline {
    /// O_DIRECT, 64 KiB writes, 8 in flight, into a new (extending) file, ending with fsync.
    pub direct_new_file_mb_s: f64,
    /// The same into the now pre-written file: the figure the engine's segments can reach.
    pub direct_prewritten_mb_s: f64,
    /// Buffered writes of the same amount ending with fsync (sustained page-cache writeback).
    pub buffered_mb_s: f64,
}

fn run_fio(file: &Path, size_mib: u64, direct: bool) -> Result<f64, String> {
    let output = Command::new("fio")
        .args([
            "--name=seqwrite",
            "--rw=write",
            "--bs=64k",
            "--iodepth=8",
            "--ioengine=io_uring",
            "--end_fsync=1",
            "--output-format=json",
        ])
        .arg(format!("--direct={}", u8::from(direct)))
        .arg(format!("--size={size_mib}M"))
        .arg(format!("--filename={}", file.display()))
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("unreadable fio output: {e}"))?;
    let bw = json["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .ok_or("fio output has no write bandwidth")?;
    Ok(bw / 1e6)
}

/// Measures the baseline with a file of `size_mib` in `dir`, or says why it could not.
pub fn measure(dir: &Path, size_mib: u64) -> Result<FioBaseline, String> {
    let file = dir.join("fio-baseline.dat");
    let _ = std::fs::remove_file(&file);
    let result = (|| {
        let direct_new_file_mb_s = run_fio(&file, size_mib, true)?;
        let direct_prewritten_mb_s = run_fio(&file, size_mib, true)?;
        let _ = std::fs::remove_file(&file);
        let buffered_mb_s = run_fio(&file, size_mib, false)?;
        Ok(FioBaseline {
            direct_new_file_mb_s,
            direct_prewritten_mb_s,
            buffered_mb_s,
        })
    })();
    let _ = std::fs::remove_file(&file);
    result
}
