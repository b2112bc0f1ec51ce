//! Printing results: JSON for scripts, tables for people.

use std::io::Write;

use comfy_table::{CellAlignment, Table, presets};
use quiver_net::protocol::route::{PERM_READ, PERM_WRITE};
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    line(text);
    Ok(())
}

/// Prints one line on stdout (a closed pipe is not an error worth a panic).
pub fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// A table with `header`; the columns named in `numeric` are right-aligned.
pub fn table(header: &[&str], numeric: &[usize]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table.set_header(header.to_vec());
    for &i in numeric {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Permission bits as `rw`, `r-`, `-w` or `--`.
pub fn perm(bits: i32) -> String {
    let r = if bits & PERM_READ != 0 { 'r' } else { '-' };
    let w = if bits & PERM_WRITE != 0 { 'w' } else { '-' };
    format!("{r}{w}")
}

/// At most `max` characters of `text` on one line, with `…` when cut.
pub fn preview(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_and_previews_read_plainly() {
        assert_eq!(perm(6), "rw");
        assert_eq!(perm(4), "r-");
        assert_eq!(perm(2), "-w");
        assert_eq!(preview("a\nb", 10), "a b");
        assert_eq!(preview("abcdef", 4), "abc…");
    }
}
