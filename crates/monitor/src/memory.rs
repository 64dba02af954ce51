//! Recent traffic in memory, for live views and for gateways without a database.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::query::{Connection, ConnectionFilter, FrameFilter};
use crate::record::{FrameRecord, Record};

struct Entry {
    /// Its place in arrival order (the index's value).
    number: u64,
    connection: Connection,
    /// Its last frames, each a [`Record::Frame`] shared with the queue
    /// that brought it (kept without a copy).
    frames: VecDeque<Arc<Record>>,
}

impl Entry {
    fn frames(&self) -> impl Iterator<Item = &FrameRecord> {
        self.frames.iter().filter_map(|record| match &**record {
            Record::Frame(frame) => Some(frame),
            _ => None,
        })
    }
}

/// The last `max_connections` connections, each with its last `max_frames` frames.
pub(crate) struct Memory {
    /// Oldest first; numbers run without gaps from the front's.
    entries: VecDeque<Entry>,
    /// Each kept connection's key and number, so a frame finds its
    /// connection without a search.
    index: HashMap<Arc<str>, u64>,
    next_number: u64,
    max_connections: usize,
    max_frames: usize,
}

impl Memory {
    pub(crate) fn new(max_connections: usize, max_frames: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            index: HashMap::new(),
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

    pub(crate) fn apply(&mut self, record: &Arc<Record>) {
        match &**record {
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
                self.index
                    .insert(Arc::from(upgrade.connection.as_str()), number);
                self.entries.push_back(Entry {
                    number,
                    connection: Connection {
                        upgrade: (**upgrade).clone(),
                        end: None,
                        frames: 0,
                    },
                    frames: VecDeque::new(),
                });
            }
            Record::Frame(frame) => {
                let max_frames = self.max_frames;
                if let Some(entry) = self.entry_mut(&frame.connection) {
                    entry.connection.frames += 1;
                    if entry.frames.len() == max_frames {
                        entry.frames.pop_front();
                    }
                    if max_frames > 0 {
                        entry.frames.push_back(record.clone());
                    }
                }
            }
            Record::End(end) => {
                if let Some(entry) = self.entry_mut(&end.connection) {
                    entry.connection.end = Some(end.clone());
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
            .filter(|e| filter.matches(&e.connection, |o| e.frames().any(|f| f.opcode == o)))
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
                .map(|e| {
                    e.frames()
                        .filter(|f| filter.matches(&e.connection.upgrade.endpoint, f))
                        .take(filter.limit)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
        }
        let mut frames: Vec<FrameRecord> = self
            .entries
            .iter()
            .flat_map(|e| {
                e.frames()
                    .filter(|f| filter.matches(&e.connection.upgrade.endpoint, f))
            })
            .cloned()
            .collect();
        frames.sort_by_key(|f| std::cmp::Reverse(f.time_us));
        frames.truncate(filter.limit);
        frames
    }
}
