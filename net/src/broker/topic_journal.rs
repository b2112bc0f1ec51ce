//! The topic table's journal (`config/topics.journal`): each change to the table is appended as
//! one line and synced before it is visible, so creating a topic costs one small write
//! whatever the number of topics (rewriting `topics.json` costs the whole table). At open the
//! journal is replayed over `topics.json`; once it outgrows the table, the table is written
//! whole and the journal emptied.
//!
//! A line is `<crc32c of the JSON, 8 hex digits> <JSON>\n`, the JSON `{"put":<TopicConfig>}` or
//! `{"delete":"<topic>"}`. A last line cut short or failing its CRC is a write torn by a crash
//! and is dropped (that change was never acknowledged); a bad line before a good one is
//! damage, and an error.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::route::TopicConfig;
use crate::protocol::{decode_json, encode_json};

/// Longest journal line read, bytes: a topic config is a few hundred bytes.
pub const JOURNAL_LINE_BYTES_MAX: usize = 64 << 10;

/// One change to the topic table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The topic created or replaced.
    Put(TopicConfig),
    /// The topic removed.
    Delete(String),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    put: Option<TopicConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete: Option<String>,
}

/// Why a journal cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// A line other than the last is damaged.
    #[error("line {line} (byte {at}) is damaged: {problem}")]
    Damaged {
        /// Which line, from 1.
        line: usize,
        /// Where it starts.
        at: usize,
        /// What is wrong.
        problem: String,
    },
}

/// The line for `change`.
pub fn encode(change: &Change) -> Vec<u8> {
    let line = match change {
        Change::Put(config) => Line {
            put: Some(config.clone()),
            delete: None,
        },
        Change::Delete(topic) => Line {
            put: None,
            delete: Some(topic.clone()),
        },
    };
    let json = encode_json(&line);
    let mut out = format!("{:08x} ", crc32c::crc32c(&json)).into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

/// One line's change (without its newline).
fn decode_line(line: &[u8]) -> Result<Change, String> {
    if line.len() > JOURNAL_LINE_BYTES_MAX {
        return Err(format!(
            "{} bytes, over {JOURNAL_LINE_BYTES_MAX}",
            line.len()
        ));
    }
    let (crc, json) = match (line.get(..8), line.get(8), line.get(9..)) {
        (Some(crc), Some(b' '), Some(json)) => (crc, json),
        _ => return Err("no checksum".into()),
    };
    let crc = std::str::from_utf8(crc)
        .ok()
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or("a checksum that is not hex")?;
    if crc32c::crc32c(json) != crc {
        return Err("checksum mismatch".into());
    }
    let line: Line = decode_json("a topic journal line", json).map_err(|e| e.to_string())?;
    match (line.put, line.delete) {
        (Some(config), None) => Ok(Change::Put(config)),
        (None, Some(topic)) => Ok(Change::Delete(topic)),
        _ => Err("neither one put nor one delete".into()),
    }
}

/// The changes `bytes` holds, and how many of its bytes are whole, valid lines (what follows
/// is a torn last write, to be cut off).
pub fn decode(bytes: &[u8]) -> Result<(Vec<Change>, usize), JournalError> {
    let mut changes = Vec::new();
    let mut at = 0;
    let mut line_number = 0;
    while at < bytes.len() {
        line_number += 1;
        let Some(len) = bytes[at..].iter().position(|&b| b == b'\n') else {
            // Cut short: the last write, torn.
            break;
        };
        match decode_line(&bytes[at..at + len]) {
            Ok(change) => changes.push(change),
            // The last line: torn by a crash in the middle of its write.
            Err(_) if at + len + 1 == bytes.len() => break,
            Err(problem) => {
                return Err(JournalError::Damaged {
                    line: line_number,
                    at,
                    problem,
                });
            }
        }
        at += len + 1;
    }
    Ok((changes, at))
}

/// The journal file, open for appending.
pub(crate) struct Journal {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
}

impl Journal {
    /// Opens (creating) the journal at `path`; returns it and the changes it holds, with a torn
    /// last line cut off.
    pub(crate) fn open(path: &Path) -> std::io::Result<(Journal, Vec<Change>)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (changes, valid) = decode(&bytes).map_err(std::io::Error::other)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if valid < bytes.len() {
            tracing::warn!(
                ?path,
                torn = bytes.len() - valid,
                "cutting a torn last line off the topic journal"
            );
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            bytes: valid as u64,
        };
        Ok((journal, changes))
    }

    /// Appends `change`, durably.
    pub(crate) fn append(&mut self, change: &Change) -> std::io::Result<()> {
        let line = encode(change);
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Whatever part reached the file is a torn line: cut it, so the next append
            // does not follow garbage.
            let _ = self.file.set_len(self.bytes);
            return Err(e);
        }
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Empties it (once the table is written whole).
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.bytes = 0;
        Ok(())
    }

    /// Bytes it holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(name: &str) -> Change {
        Change::Put(TopicConfig::new(name, 4, 6))
    }

    #[test]
    fn lines_round_trip_and_a_torn_last_line_is_cut() {
        let changes = vec![put("a"), Change::Delete("a".into()), put("b")];
        let bytes: Vec<u8> = changes.iter().flat_map(encode).collect();
        assert_eq!(decode(&bytes), Ok((changes.clone(), bytes.len())));
        let whole = bytes.len() - encode(&put("b")).len();
        for cut in whole..bytes.len() {
            let (got, valid) = decode(&bytes[..cut]).unwrap();
            assert_eq!(
                (got.as_slice(), valid),
                (&changes[..2], whole),
                "cut at {cut}"
            );
        }
        // A flipped byte in the last line: torn; in an earlier one: damage.
        let mut last = bytes.clone();
        let n = last.len();
        last[n - 5] ^= 0x01;
        assert_eq!(decode(&last).unwrap().1, whole);
        let mut first = bytes.clone();
        first[12] ^= 0x01;
        assert!(matches!(
            decode(&first),
            Err(JournalError::Damaged { line: 1, .. })
        ));
    }

    #[test]
    fn appends_survive_reopening_and_a_torn_tail_is_cut_off_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.journal");
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty());
        journal.append(&put("x")).unwrap();
        journal.append(&put("y")).unwrap();
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(b"0000");
        std::fs::write(&path, &bytes).unwrap();
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found, vec![put("x"), put("y")]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good as u64);
        journal.clear().unwrap();
        journal.append(&Change::Delete("x".into())).unwrap();
        drop(journal);
        let (_, found) = Journal::open(&path).unwrap();
        assert_eq!(found, vec![Change::Delete("x".into())]);
    }
}
