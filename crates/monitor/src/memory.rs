//! Recent traffic in memory, for live views and for gateways without a database.

use std::collections::VecDeque;

use crate::query::{Connection, ConnectionFilter, FrameFilter};
use crate::record::{FrameRecord, Record};

struct Entry {
    connection: Connection,
    frames: VecDeque<FrameRecord>,
}

/// The last `max_connections` connections, each with its last `max_frames` frames.
pub(crate) struct Memory {
    entries: VecDeque<Entry>,
    max_connections: usize,
    max_frames: usize,
}

impl Memory {
    pub(crate) fn new(max_connections: usize, max_frames: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            max_connections: max_connections.max(1),
            max_frames,
        }
    }

    fn entry(&mut self, key: &str) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .rev()
            .find(|e| e.connection.upgrade.connection == key)
    }

    pub(crate) fn apply(&mut self, record: &Record) {
        match record {
            Record::Upgrade(upgrade) => {
                if self.entries.len() == self.max_connections {
                    self.entries.pop_front();
                }
                self.entries.push_back(Entry {
                    connection: Connection {
                        upgrade: upgrade.clone(),
                        end: None,
                        frames: 0,
                    },
                    frames: VecDeque::new(),
                });
            }
            Record::Frame(frame) => {
                let max_frames = self.max_frames;
                if let Some(entry) = self.entry(&frame.connection) {
                    entry.connection.frames += 1;
                    if entry.frames.len() == max_frames {
                        entry.frames.pop_front();
                    }
                    if max_frames > 0 {
                        entry.frames.push_back(frame.clone());
                    }
                }
            }
            Record::End(end) => {
                if let Some(entry) = self.entry(&end.connection) {
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
            .filter(|e| filter.matches(&e.connection, |o| e.frames.iter().any(|f| f.opcode == o)))
            .take(filter.limit)
            .map(|e| e.connection.clone())
            .collect()
    }

    pub(crate) fn connection(&self, key: &str) -> Option<Connection> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.connection.upgrade.connection == key)
            .map(|e| e.connection.clone())
    }

    pub(crate) fn frames(&self, filter: &FrameFilter) -> Vec<FrameRecord> {
        if let Some(key) = &filter.connection {
            return self
                .entries
                .iter()
                .rev()
                .find(|e| e.connection.upgrade.connection == *key)
                .map(|e| {
                    e.frames
                        .iter()
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
                e.frames
                    .iter()
                    .filter(|f| filter.matches(&e.connection.upgrade.endpoint, f))
            })
            .cloned()
            .collect();
        frames.sort_by_key(|f| std::cmp::Reverse(f.time_us));
        frames.truncate(filter.limit);
        frames
    }
}
