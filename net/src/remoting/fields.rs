//! A command's header fields (`extFields`), kept in one string.
//!
//! Every request carries a dozen of these name/value pairs and most are read once. Kept as a
//! `Vec<(String, String)>` they cost two allocations each, which made allocation the largest
//! single cost of a broker serving single sends; here all names and values share one `String`
//! and one vector of offsets, so a decoded header costs two allocations in all.

use std::fmt;

/// Most header fields accepted in one command, in either serialization.
pub const EXT_FIELDS_MAX: usize = 1024;

/// Where one field lies in the shared text: name `[name, value)`, value `[value, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    name: u32,
    value: u32,
    end: u32,
}

/// Header fields in the order received or added. Repeated names are allowed; [`Fields::get`]
/// returns the first.
#[derive(Clone, Default)]
pub struct Fields {
    text: String,
    spans: Vec<Span>,
}

impl Fields {
    /// No fields, with room for `fields` fields of `text_bytes` bytes in all.
    pub fn with_capacity(fields: usize, text_bytes: usize) -> Fields {
        Fields {
            text: String::with_capacity(text_bytes),
            spans: Vec::with_capacity(fields),
        }
    }

    /// Appends a field.
    ///
    /// # Panics
    /// When the fields' text would pass 4 GiB, which no frame can carry (frames are limited to
    /// far less before anything is decoded).
    pub fn push(&mut self, name: &str, value: &str) {
        let name_at = self.text.len();
        self.text.push_str(name);
        let value_at = self.text.len();
        self.text.push_str(value);
        self.push_span(name_at, value_at);
    }

    /// Appends a field whose value is written by `write` straight into the shared text (a
    /// number, say), without a `String` of its own.
    pub fn push_with(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        let name_at = self.text.len();
        self.text.push_str(name);
        let value_at = self.text.len();
        write(&mut self.text);
        self.push_span(name_at, value_at);
    }

    /// The shared text, for a decoder that writes a name and then a value into it directly;
    /// [`Fields::push_span`] then records them.
    pub(super) fn text_mut(&mut self) -> &mut String {
        &mut self.text
    }

    /// Records the field whose name starts at `name_at` and whose value starts at `value_at`
    /// and runs to the end of the text.
    pub(super) fn push_span(&mut self, name_at: usize, value_at: usize) {
        let end = self.text.len();
        assert!(
            u32::try_from(end).is_ok(),
            "header fields past 4 GiB of text"
        );
        debug_assert!(name_at <= value_at && value_at <= end);
        self.spans.push(Span {
            name: name_at as u32,
            value: value_at as u32,
            end: end as u32,
        });
    }

    /// Drops text written past the last recorded field (a value that turned out to be null).
    pub(super) fn truncate_text(&mut self, len: usize) {
        debug_assert!(self.spans.last().is_none_or(|s| s.end as usize <= len));
        self.text.truncate(len);
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn pair(&self, span: &Span) -> (&str, &str) {
        (
            &self.text[span.name as usize..span.value as usize],
            &self.text[span.value as usize..span.end as usize],
        )
    }

    /// The first field called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.spans.iter().find_map(|span| {
            let (n, v) = self.pair(span);
            (n == name).then_some(v)
        })
    }

    /// Name/value pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.spans.iter().map(|span| self.pair(span))
    }

    /// Keeps only the fields `keep` says yes to (their text stays until the fields are
    /// dropped).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let text = &self.text;
        self.spans.retain(|span| {
            keep(
                &text[span.name as usize..span.value as usize],
                &text[span.value as usize..span.end as usize],
            )
        });
    }

    /// Sorts by name, keeping only the last of each repeated name: what a map would hold, in
    /// the order fastjson writes it.
    pub fn sort_last_wins(&mut self) {
        let text = &self.text;
        let name = |s: &Span| &text[s.name as usize..s.value as usize];
        if self.spans.windows(2).all(|w| name(&w[0]) < name(&w[1])) {
            return;
        }
        self.spans.reverse();
        self.spans.sort_by(|a, b| name(a).cmp(name(b)));
        self.spans.dedup_by(|later, kept| name(later) == name(kept));
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Fields {}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Fields {
        let mut fields = Fields::default();
        for (name, value) in pairs {
            fields.push(name.as_ref(), value.as_ref());
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_order_find_the_first_and_compare_by_content() {
        let mut fields = Fields::default();
        fields.push("topic", "T");
        fields.push_with("queueId", |s| s.push('3'));
        fields.push("topic", "second");
        assert_eq!(fields.len(), 3);
        assert_eq!(fields.get("topic"), Some("T"));
        assert_eq!(fields.get("queueId"), Some("3"));
        assert_eq!(fields.get("absent"), None);
        let same: Fields = [("topic", "T"), ("queueId", "3"), ("topic", "second")]
            .into_iter()
            .collect();
        assert_eq!(fields, same);
        fields.retain(|name, _| name != "queueId");
        assert_eq!(
            fields.iter().collect::<Vec<_>>(),
            [("topic", "T"), ("topic", "second")]
        );
        assert_ne!(fields, same);
    }

    #[test]
    fn sorting_keeps_the_last_of_each_name() {
        let mut fields: Fields = [("z", "1"), ("a", "2"), ("z", "3"), ("m", "")]
            .into_iter()
            .collect();
        fields.sort_last_wins();
        assert_eq!(
            fields.iter().collect::<Vec<_>>(),
            [("a", "2"), ("m", ""), ("z", "3")]
        );
        assert_eq!(format!("{fields:?}"), r#"{"a": "2", "m": "", "z": "3"}"#);
    }
}
