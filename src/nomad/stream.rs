//! The event stream's pure parts: NDJSON framing and the resume rules. No I/O here; the watcher
//! feeds bytes in and acts on what comes out.

use std::collections::HashSet;

use super::wire::{Event, StreamFrame};

/// A line longer than this without a newline is not Nomad talking: give up on the connection.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// What one line of the stream is.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// `{}`: the stream is alive.
    Heartbeat,
    /// An event batch (one raft apply).
    Batch { index: u64, events: Vec<Event> },
    /// Not JSON: Nomad's error text appended to the body before it ends the response
    /// (`subscription closed by server, client should resubscribe`, `ACL token expired`, …).
    Error(String),
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Frame {
    match serde_json::from_slice::<StreamFrame>(line) {
        Ok(frame) if frame.is_heartbeat() => Frame::Heartbeat,
        Ok(frame) => Frame::Batch {
            index: frame.index,
            events: frame.events.unwrap_or_default(),
        },
        Err(_) => Frame::Error(String::from_utf8_lossy(line).trim().to_string()),
    }
}

/// Splits a byte stream into lines at `\n`, across chunk boundaries.
///
/// Each byte is examined for a newline once: the buffer remembers how far the pending (not yet
/// finished) line has been scanned, so a long line arriving in many small chunks costs time
/// linear in its length, not quadratic.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
    /// `pending[..scanned]` holds no newline.
    scanned: usize,
    /// Bytes examined for a newline so far (only for the linear-time test).
    #[cfg(test)]
    examined: u64,
}

/// The buffer grew past [`MAX_LINE`] without a newline.
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

impl LineBuffer {
    /// Appends a chunk; returns the complete, non-blank lines it finished.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        // Where the current line starts; only bytes from `scanned` on are new.
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(pos) = self.pending[from..].iter().position(|b| *b == b'\n') {
            #[cfg(test)]
            {
                self.examined += pos as u64 + 1;
            }
            let end = from + pos;
            let line = trim(&self.pending[start..end]);
            if !line.is_empty() {
                lines.push(line.to_vec());
            }
            start = end + 1;
            from = start;
        }
        #[cfg(test)]
        {
            self.examined += (self.pending.len() - from) as u64;
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len();
        if self.pending.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(lines)
    }

    /// How many bytes [`push`](Self::push) has examined for a newline so far: each byte once.
    #[cfg(test)]
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    /// At end of body: whatever came after the last newline (Nomad's trailing error text), if
    /// anything.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = trim(&self.pending).to_vec();
        self.pending.clear();
        self.scanned = 0;
        (!rest.is_empty()).then_some(rest)
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// Where to resume and what to drop (CONTRACTS §1.5, §1.9): Nomad's `index` is inclusive, an
/// index newer than its buffer replays the newest buffered batch, and an event matching two
/// topic keys appears twice. So: ask for `last + 1`, drop batches below the requested index,
/// and de-duplicate by (Index, Key).
#[derive(Debug, Default)]
pub struct Resume {
    /// Highest batch index accepted.
    last: u64,
    /// Keys already accepted at `last`.
    keys_at_last: HashSet<String>,
    /// The index asked for on the current connection.
    requested: u64,
}

impl Resume {
    /// Starts a connection; returns the `index` to ask for. `floor` is an index up to which the
    /// catalog is known complete (the last full list): nothing older needs replaying.
    pub fn connect(&mut self, floor: u64) -> u64 {
        let from = self.last.max(floor);
        self.requested = if from == 0 { 0 } else { from + 1 };
        self.requested
    }

    /// Forget everything: Nomad's index went backwards.
    pub fn reset(&mut self) {
        *self = Resume::default();
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The events of a batch that are new.
    pub fn accept(&mut self, index: u64, events: Vec<Event>) -> Vec<Event> {
        if index < self.requested || index < self.last {
            return Vec::new();
        }
        if index > self.last {
            self.last = index;
            self.keys_at_last.clear();
        }
        events
            .into_iter()
            .filter(|e| self.keys_at_last.insert(e.key.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str) -> Event {
        Event {
            topic: "Service".into(),
            kind: "ServiceRegistration".into(),
            key: key.into(),
            ..Event::default()
        }
    }

    fn keys(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn lines_split_across_chunks_and_trailing_error_text() {
        let mut buf = LineBuffer::default();
        assert_eq!(buf.push(b"{}\n{\"Ind").expect("ok"), vec![b"{}".to_vec()]);
        assert_eq!(
            buf.push(b"ex\":5,\"Events\":[]}\r\n\n").expect("ok"),
            vec![br#"{"Index":5,"Events":[]}"#.to_vec()]
        );
        assert!(
            buf.push(b"subscription closed by server, ")
                .expect("ok")
                .is_empty()
        );
        assert!(
            buf.push(b"client should resubscribe")
                .expect("ok")
                .is_empty()
        );
        assert_eq!(
            buf.finish(),
            Some(b"subscription closed by server, client should resubscribe".to_vec())
        );
        assert_eq!(buf.finish(), None);
    }

    #[test]
    fn frames() {
        assert_eq!(parse_line(b"{}"), Frame::Heartbeat);
        assert_eq!(
            parse_line(br#"{"Index":9,"Events":[{"Topic":"Service","Key":"k","Index":9}]}"#),
            Frame::Batch {
                index: 9,
                events: vec![Event {
                    topic: "Service".into(),
                    key: "k".into(),
                    index: 9,
                    ..Event::default()
                }]
            }
        );
        assert_eq!(
            parse_line(b"ACL token expired"),
            Frame::Error("ACL token expired".into())
        );
        assert_eq!(
            parse_line(b"{\"Index\": 3, trunc"),
            Frame::Error("{\"Index\": 3, trunc".into())
        );
    }

    #[test]
    fn a_long_line_in_small_chunks_is_scanned_once() {
        let mut buf = LineBuffer::default();
        let chunk = [b'x'; 1024];
        let mut fed = 0u64;
        // One line of MAX_LINE bytes, 1 KiB at a time: the old code rescanned the whole
        // pending buffer per chunk (about 2^33 byte comparisons here).
        for _ in 0..MAX_LINE / chunk.len() {
            assert!(buf.push(&chunk).expect("within the limit").is_empty());
            fed += chunk.len() as u64;
        }
        let lines = buf.push(b"\n{}\n").expect("ok");
        fed += 4;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], b"{}".to_vec());
        assert!(
            buf.bytes_examined() <= 2 * fed,
            "examined {} bytes for {fed} fed",
            buf.bytes_examined()
        );
        assert_eq!(buf.bytes_examined(), fed, "each byte exactly once");
        // Lines split across chunks still come out whole after the scan position moved.
        assert_eq!(buf.push(b"{\"In").expect("ok"), Vec::<Vec<u8>>::new());
        assert_eq!(
            buf.push(b"dex\":1}\n").expect("ok"),
            vec![br#"{"Index":1}"#.to_vec()]
        );
        assert_eq!(buf.bytes_examined(), fed + 12);
    }

    #[test]
    fn over_long_line_is_an_error() {
        let mut buf = LineBuffer::default();
        let chunk = vec![b'x'; MAX_LINE + 1];
        assert_eq!(buf.push(&chunk), Err(LineTooLong));
    }

    #[test]
    fn first_connect_replays_then_resume_asks_for_the_next_index() {
        let mut r = Resume::default();
        assert_eq!(r.connect(0), 0);
        assert_eq!(keys(&r.accept(3, vec![ev("a")])), ["a"]);
        assert_eq!(
            keys(&r.accept(5, vec![ev("b"), ev("b"), ev("c")])),
            ["b", "c"]
        );
        assert_eq!(r.last(), 5);
        // Reconnect: ask for 6; Nomad replays its newest buffered batch (5): dropped.
        assert_eq!(r.connect(0), 6);
        assert!(r.accept(5, vec![ev("b")]).is_empty());
        assert_eq!(keys(&r.accept(6, vec![ev("d")])), ["d"]);
        // The same batch again (duplicate delivery) brings nothing new; a new key at it does.
        assert!(r.accept(6, vec![ev("d")]).is_empty());
        assert_eq!(keys(&r.accept(6, vec![ev("e")])), ["e"]);
        // Older than the last accepted: dropped.
        assert!(r.accept(4, vec![ev("z")]).is_empty());
    }

    #[test]
    fn floor_skips_what_the_last_full_list_covered_and_reset_forgets() {
        let mut r = Resume::default();
        assert_eq!(r.connect(40), 41);
        assert!(r.accept(40, vec![ev("a")]).is_empty());
        assert_eq!(keys(&r.accept(41, vec![ev("a")])), ["a"]);
        r.reset();
        assert_eq!(r.connect(0), 0);
        assert_eq!(keys(&r.accept(2, vec![ev("a")])), ["a"], "after a restore");
    }
}
