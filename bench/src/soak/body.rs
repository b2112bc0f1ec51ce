//! The soak's message bodies: `<id>|<crc32c, 8 hex digits>|<payload>`. A consumer can tell an
//! intact body from a damaged one on its own, without the producer's records, and the id ties
//! every delivery back to the send that made it.

/// Smallest payload, bytes.
pub const MIN_PAYLOAD_BYTES: usize = 16;

/// Largest payload, bytes. Sizes vary so records straddle pages and segment ends.
pub const MAX_PAYLOAD_BYTES: usize = 2048;

/// Longest id: `t<task>-<seq>` with 32-bit task and 64-bit sequence numbers.
pub const MAX_ID_BYTES: usize = 1 + 10 + 1 + 20;

/// Largest body [`make`] builds.
pub const MAX_BODY_BYTES: usize = MAX_ID_BYTES + 1 + 8 + 1 + MAX_PAYLOAD_BYTES;

/// The id of producer task `task`'s `seq`-th message.
pub fn id(task: u32, seq: u64) -> String {
    format!("t{task}-{seq}")
}

/// The id of the `seq`-th message of sender `sender` on the `topic`-th topic made new during
/// the run (`sender` below 1000 keeps it within [`MAX_ID_BYTES`]).
pub fn new_topic_id(topic: u32, sender: u32, seq: u32) -> String {
    format!("n{topic}s{sender}-{seq}")
}

/// The body for `id`: its payload's length and bytes follow from the id alone.
pub fn make(id: &str) -> Vec<u8> {
    debug_assert!(id.len() <= MAX_ID_BYTES && !id.contains('|'));
    let mut state = u64::from(crc32c::crc32c(id.as_bytes())) | 1 << 40;
    let len = MIN_PAYLOAD_BYTES + (state as usize) % (MAX_PAYLOAD_BYTES - MIN_PAYLOAD_BYTES + 1);
    let payload: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64: cheap, deterministic, and every byte depends on the id.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        })
        .collect();
    let mut body = format!("{id}|{:08x}|", crc32c::crc32c(&payload)).into_bytes();
    body.extend_from_slice(&payload);
    body
}

/// What a received body says: its id, and whether its payload matches its checksum. `None`
/// when not even an id can be read.
pub fn check(body: &[u8]) -> Option<(String, bool)> {
    let mut parts = body.splitn(3, |&b| b == b'|');
    let id = std::str::from_utf8(parts.next()?).ok()?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.contains(char::is_whitespace) {
        return None;
    }
    let intact = match (parts.next(), parts.next()) {
        (Some(crc), Some(payload)) => std::str::from_utf8(crc)
            .ok()
            .and_then(|crc| u32::from_str_radix(crc, 16).ok())
            .is_some_and(|crc| crc == crc32c::crc32c(payload)),
        _ => false,
    };
    Some((id.to_string(), intact))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_check_out_and_any_damage_is_seen() {
        for seq in 0..200 {
            let id = id(3, seq);
            let body = make(&id);
            assert!(body.len() <= MAX_BODY_BYTES);
            assert_eq!(check(&body), Some((id.clone(), true)));
            assert_eq!(make(&id), body, "bodies follow from the id");
            let mut damaged = body.clone();
            let at = body.len() - 1 - (seq as usize % MIN_PAYLOAD_BYTES);
            damaged[at] ^= 0x20;
            assert_eq!(check(&damaged), Some((id.clone(), false)));
            assert_eq!(check(&body[..body.len() - 1]), Some((id, false)));
        }
        assert_eq!(check(b""), None);
        assert_eq!(check(b"no id here|x"), None);
    }
}
