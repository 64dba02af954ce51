//! Recent traffic in memory, for live views and for gateways without a database.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::query::{Connection, ConnectionFilter, FrameFilter};
use crate::record::{FrameRecord, MaskingKey, Origin, Record};

/// Distinct verdict texts an entry keeps; frames with more see
/// [`TOO_MANY_VERDICTS`].
const MAX_VERDICTS: usize = 256;
/// What a frame's verdict reads as past [`MAX_VERDICTS`].
const TOO_MANY_VERDICTS: &str = "(not kept: more than 256 distinct verdicts on this connection)";

/// A frame as the history keeps it: plain values, nothing to free. The
/// history is larger than the caches (500 frames of each of up to 1,000
/// connections), so replacing a connection's oldest frame is a store to
/// memory that is not cached; a record with texts to free made it a
/// load first (measured: 40 % of the writer thread's time at `metadata`).
/// Its connection is its entry's, its verdict an index into the entry's
/// texts, its payload (level `full`) in the entry's `payloads`.
#[derive(Clone, Copy)]
struct KeptFrame {
    seq: u64,
    time_us: u64,
    length: u64,
    /// `u64::MAX`: none.
    uncompressed_length: u64,
    /// `u64::MAX`: none.
    filter_us: u64,
    masking_key: Option<MaskingKey>,
    /// Index into [`Entry::verdicts`]; `u16::MAX`: none.
    verdict: u16,
    origin: Origin,
    opcode: u8,
    fin: bool,
    rsv: [bool; 3],
    truncated: bool,
}

struct Entry {
    /// Its place in arrival order (the index's value).
    number: u64,
    connection: Connection,
    /// Its key, shared by the frames it gives out.
    key: Arc<str>,
    /// Its last frames.
    frames: Ring<KeptFrame>,
    /// Their payloads, in step with them, once one frame had a payload.
    payloads: Option<Ring<Option<String>>>,
    /// The distinct verdict texts its frames got.
    verdicts: Vec<Arc<str>>,
    /// The verdict text kept last, as an index into `verdicts`.
    last_verdict: usize,
}

impl Entry {
    /// Its kept frames that `filter` wants, oldest first, made whole
    /// (only those: a filter over every connection reads them all).
    fn frames<'a>(&'a self, filter: &'a FrameFilter) -> impl Iterator<Item = FrameRecord> + 'a {
        let mut payloads = self.payloads.as_ref().map(Ring::iter);
        self.frames.iter().filter_map(move |kept| {
            // Both rings advance together, wanted or not.
            let payload = payloads.as_mut().and_then(Iterator::next);
            let wanted = filter.matches(
                &self.connection.upgrade.endpoint,
                &self.key,
                kept.origin,
                kept.opcode,
                kept.time_us,
            );
            wanted.then(|| self.whole(kept, payload.cloned().flatten()))
        })
    }

    /// `kept` as a record again, with its `payload`.
    fn whole(&self, kept: &KeptFrame, payload: Option<String>) -> FrameRecord {
        let some = |value: u64| (value != u64::MAX).then_some(value);
        FrameRecord {
            connection: self.key.clone(),
            seq: kept.seq,
            time_us: kept.time_us,
            origin: kept.origin,
            opcode: kept.opcode,
            fin: kept.fin,
            rsv: kept.rsv,
            masking_key: kept.masking_key,
            length: kept.length,
            payload,
            truncated: kept.truncated,
            filter_us: some(kept.filter_us),
            verdict: (kept.verdict != u16::MAX).then(|| {
                self.verdicts
                    .get(usize::from(kept.verdict))
                    .map_or_else(|| Arc::from(TOO_MANY_VERDICTS), Arc::clone)
            }),
            uncompressed_length: some(kept.uncompressed_length),
        }
    }

    /// `verdict`'s index in the entry's texts (usually the last one's:
    /// the observer shares a repeated text, so the pointers match).
    fn verdict_index(&mut self, verdict: Option<Arc<str>>) -> u16 {
        let Some(verdict) = verdict else {
            return u16::MAX;
        };
        let at = match self.verdicts.get(self.last_verdict) {
            Some(last) if Arc::ptr_eq(last, &verdict) || *last == verdict => self.last_verdict,
            _ => match self.verdicts.iter().position(|text| *text == verdict) {
                Some(at) => at,
                None if self.verdicts.len() < MAX_VERDICTS => {
                    self.verdicts.push(verdict);
                    self.verdicts.len() - 1
                }
                None => MAX_VERDICTS,
            },
        };
        self.last_verdict = at;
        u16::try_from(at).unwrap_or(u16::MAX - 1)
    }

    /// Keep `frame`, forgetting the oldest beyond `max_frames`.
    fn keep(&mut self, frame: FrameRecord, max_frames: usize) {
        self.connection.frames += 1;
        if max_frames == 0 {
            return;
        }
        let kept = KeptFrame {
            seq: frame.seq,
            time_us: frame.time_us,
            length: frame.length,
            uncompressed_length: frame.uncompressed_length.unwrap_or(u64::MAX),
            filter_us: frame.filter_us.unwrap_or(u64::MAX),
            masking_key: frame.masking_key,
            verdict: self.verdict_index(frame.verdict),
            origin: frame.origin,
            opcode: frame.opcode,
            fin: frame.fin,
            rsv: frame.rsv,
            truncated: frame.truncated,
        };
        if self.payloads.is_none() && frame.payload.is_some() {
            self.payloads = Some(Ring {
                values: vec![None; self.frames.values.len()],
                oldest: self.frames.oldest,
            });
        }
        self.frames.push(kept, max_frames);
        if let Some(payloads) = &mut self.payloads {
            payloads.push(frame.payload, max_frames);
        }
    }
}

/// The last values pushed, at most a given number: once full, a push
/// overwrites the oldest in place.
struct Ring<T> {
    values: Vec<T>,
    /// Where the oldest is, once full.
    oldest: usize,
}

impl<T> Ring<T> {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            oldest: 0,
        }
    }

    /// Push `value`, keeping at most `max` (at least 1).
    fn push(&mut self, value: T, max: usize) {
        if self.values.len() < max {
            self.values.push(value);
        } else if let Some(slot) = self.values.get_mut(self.oldest) {
            *slot = value;
            self.oldest = (self.oldest + 1) % self.values.len();
        }
    }

    /// Oldest first.
    fn iter(&self) -> impl Iterator<Item = &T> {
        let (newer, older) = self.values.split_at(self.oldest.min(self.values.len()));
        older.iter().chain(newer)
    }
}

/// The last `max_connections` connections, each with its last `max_frames` frames.
pub(crate) struct Memory {
    /// Oldest first; numbers run without gaps from the front's.
    entries: VecDeque<Entry>,
    /// Each kept connection's key and number, so a frame finds its
    /// connection without a search (keys are the gateway's own, so a
    /// fast hash is safe).
    index: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    next_number: u64,
    max_connections: usize,
    max_frames: usize,
}

impl Memory {
    pub(crate) fn new(max_connections: usize, max_frames: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            index: HashMap::default(),
            next_number: 0,
            max_connections: max_connections.max(1),
            max_frames,
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        let number = *self.index.get(key)?;
        let first = self.entries.front()?.number;
        usize::try_from(number.checked_sub(first)?).ok()
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(self.position(key)?)
    }

    fn entry_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let position = self.position(key)?;
        self.entries.get_mut(position)
    }

    pub(crate) fn apply(&mut self, record: Record) {
        match record {
            Record::Upgrade(upgrade) => {
                if self.entries.len() == self.max_connections
                    && let Some(oldest) = self.entries.pop_front()
                {
                    let key = oldest.connection.upgrade.connection.as_str();
                    // A key seen again since points at its newer entry.
                    if self.index.get(key) == Some(&oldest.number) {
                        self.index.remove(key);
                    }
                }
                let number = self.next_number;
                self.next_number += 1;
                let key: Arc<str> = Arc::from(upgrade.connection.as_str());
                self.index.insert(key.clone(), number);
                self.entries.push_back(Entry {
                    number,
                    connection: Connection {
                        upgrade: *upgrade,
                        end: None,
                        frames: 0,
                    },
                    key,
                    frames: Ring::new(),
                    payloads: None,
                    verdicts: Vec::new(),
                    last_verdict: 0,
                });
            }
            Record::Frame(frame) => {
                let max_frames = self.max_frames;
                if let Some(entry) = self.entry_mut(&frame.connection) {
                    entry.keep(frame, max_frames);
                }
            }
            Record::End(end) => {
                if let Some(entry) = self.entry_mut(&end.connection) {
                    entry.connection.end = Some(end);
                }
            }
            // Kept in the database only, for replay.
            Record::Message(_) => {}
        }
    }

    pub(crate) fn connections(&self, filter: &ConnectionFilter) -> Vec<Connection> {
        self.entries
            .iter()
            .rev()
            .filter(|e| {
                filter.matches(&e.connection, |opcode| {
                    e.frames.iter().any(|f| f.opcode == opcode)
                })
            })
            .take(filter.limit)
            .map(|e| e.connection.clone())
            .collect()
    }

    pub(crate) fn connection(&self, key: &str) -> Option<Connection> {
        self.entry(key).map(|e| e.connection.clone())
    }

    pub(crate) fn frames(&self, filter: &FrameFilter) -> Vec<FrameRecord> {
        if let Some(key) = &filter.connection {
            return self
                .entry(key)
                .map(|e| e.frames(filter).take(filter.limit).collect())
                .unwrap_or_default();
        }
        let mut frames: Vec<FrameRecord> =
            self.entries.iter().flat_map(|e| e.frames(filter)).collect();
        frames.sort_by_key(|f| std::cmp::Reverse(f.time_us));
        frames.truncate(filter.limit);
        frames
    }
}
