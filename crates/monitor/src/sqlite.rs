//! The SQLite store: history that survives restarts. Written only by the
//! monitor's writer thread, in batches; read by queries through their own
//! connection (WAL lets readers and the writer work at once).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection as Db, OptionalExtension, params};

use crate::query::{Connection, ConnectionFilter, FrameFilter};
use crate::record::{FrameRecord, Record};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS connections (
    key TEXT PRIMARY KEY,
    time_us INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    close_code INTEGER,
    upgrade_json TEXT NOT NULL,
    end_json TEXT
);
CREATE INDEX IF NOT EXISTS connections_by_time ON connections (time_us);
CREATE TABLE IF NOT EXISTS frames (
    connection TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    origin TEXT NOT NULL,
    opcode INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (connection, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (time_us);
CREATE TABLE IF NOT EXISTS messages (
    connection TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (connection, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    at_ms INTEGER PRIMARY KEY,
    json TEXT NOT NULL
);
";

pub(crate) fn open(path: &Path) -> rusqlite::Result<Db> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let db = Db::open(path)?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

/// Store one sample of the counters and delete those taken before `cutoff_ms`.
pub(crate) fn write_sample(
    db: &Db,
    at_ms: u64,
    sample: &str,
    cutoff_ms: u64,
) -> rusqlite::Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO samples (at_ms, json) VALUES (?1, ?2)",
        params![at_ms as i64, sample],
    )?;
    db.execute(
        "DELETE FROM samples WHERE at_ms < ?1",
        params![cutoff_ms as i64],
    )?;
    Ok(())
}

/// The samples taken at or after `since_ms`, oldest first.
pub(crate) fn samples(db: &Db, since_ms: u64) -> rusqlite::Result<Vec<(u64, String)>> {
    let mut statement =
        db.prepare("SELECT at_ms, json FROM samples WHERE at_ms >= ?1 ORDER BY at_ms")?;
    let rows = statement.query_map(params![since_ms as i64], |row| {
        Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
    })?;
    rows.collect()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Store `records` in one transaction.
pub(crate) fn write(db: &mut Db, records: &[Record]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut upgrade = tx.prepare_cached(
            "INSERT OR REPLACE INTO connections (key, time_us, endpoint, status, upgrade_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut frame = tx.prepare_cached(
            "INSERT OR REPLACE INTO frames (connection, seq, time_us, origin, opcode, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut message = tx.prepare_cached(
            "INSERT OR REPLACE INTO messages (connection, seq, time_us, json) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut end = tx.prepare_cached(
            "UPDATE connections SET close_code = ?2, end_json = ?3 WHERE key = ?1",
        )?;
        for record in records {
            match record {
                Record::Upgrade(r) => {
                    upgrade.execute(params![
                        r.connection,
                        r.time_us as i64,
                        r.endpoint,
                        r.status,
                        json(r)
                    ])?;
                }
                Record::Frame(r) => {
                    frame.execute(params![
                        r.connection,
                        r.seq as i64,
                        r.time_us as i64,
                        r.origin.as_str(),
                        r.opcode,
                        json(r)
                    ])?;
                }
                Record::Message(r) => {
                    message.execute(params![
                        r.connection,
                        r.seq as i64,
                        r.time_us as i64,
                        json(r)
                    ])?;
                }
                Record::End(r) => {
                    end.execute(params![r.connection, r.code, json(r)])?;
                }
            }
        }
    }
    tx.commit()
}

/// Delete connections (and their frames) older than `cutoff_us`, then the
/// oldest tenth at a time while the data is larger than `max_bytes`.
pub(crate) fn trim(db: &mut Db, cutoff_us: Option<u64>, max_bytes: u64) -> rusqlite::Result<u64> {
    let mut deleted = 0;
    if let Some(cutoff) = cutoff_us {
        deleted += delete_before(db, cutoff as i64)?;
    }
    loop {
        let used: i64 = db.query_row(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
            [],
            |row| row.get(0),
        )?;
        if used as u64 <= max_bytes {
            return Ok(deleted);
        }
        let count: i64 = db.query_row("SELECT COUNT(*) FROM connections", [], |row| row.get(0))?;
        if count == 0 {
            return Ok(deleted);
        }
        let cutoff: i64 = db.query_row(
            "SELECT time_us FROM connections ORDER BY time_us LIMIT 1 OFFSET ?1",
            [(count / 10).max(1) - 1],
            |row| row.get(0),
        )?;
        deleted += delete_before(db, cutoff + 1)?;
    }
}

fn delete_before(db: &mut Db, cutoff: i64) -> rusqlite::Result<u64> {
    let tx = db.transaction()?;
    for table in ["frames", "messages"] {
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE connection IN (SELECT key FROM connections WHERE time_us < ?1)"
            ),
            [cutoff],
        )?;
    }
    let deleted = tx.execute("DELETE FROM connections WHERE time_us < ?1", [cutoff])?;
    tx.commit()?;
    Ok(deleted as u64)
}

fn connection_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn parse_connection((upgrade, end, frames): (String, Option<String>, i64)) -> Option<Connection> {
    Some(Connection {
        upgrade: serde_json::from_str(&upgrade).ok()?,
        end: end.and_then(|e| serde_json::from_str(&e).ok()),
        frames: frames as u64,
    })
}

const CONNECTION_COLUMNS: &str =
    "c.upgrade_json, c.end_json, (SELECT COUNT(*) FROM frames f WHERE f.connection = c.key)";

pub(crate) fn connections(db: &Db, filter: &ConnectionFilter) -> rusqlite::Result<Vec<Connection>> {
    let sql = format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections c
         WHERE (?1 IS NULL OR c.endpoint = ?1) AND (?2 IS NULL OR c.time_us >= ?2)
           AND (?3 IS NULL OR c.time_us <= ?3) AND (?4 IS NULL OR c.status = ?4)
           AND (?5 IS NULL OR c.close_code = ?5)
           AND (?6 IS NULL OR EXISTS (SELECT 1 FROM frames f WHERE f.connection = c.key AND f.opcode = ?6))
         ORDER BY c.time_us DESC LIMIT ?7"
    );
    let mut statement = db.prepare_cached(&sql)?;
    let rows = statement.query_map(
        params![
            filter.endpoint,
            filter.since_us.map(|t| t as i64),
            filter.until_us.map(|t| t as i64),
            filter.status,
            filter.close_code,
            filter.opcode,
            filter.limit as i64
        ],
        connection_from_row,
    )?;
    Ok(rows
        .filter_map(|row| row.ok().and_then(parse_connection))
        .collect())
}

pub(crate) fn connection(db: &Db, key: &str) -> rusqlite::Result<Option<Connection>> {
    let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections c WHERE c.key = ?1");
    Ok(db
        .query_row(&sql, [key], connection_from_row)
        .optional()?
        .and_then(parse_connection))
}

pub(crate) fn frames(db: &Db, filter: &FrameFilter) -> rusqlite::Result<Vec<FrameRecord>> {
    let order = if filter.connection.is_some() {
        "f.seq ASC"
    } else {
        "f.time_us DESC"
    };
    let sql = format!(
        "SELECT f.json FROM frames f JOIN connections c ON c.key = f.connection
         WHERE (?1 IS NULL OR f.connection = ?1) AND (?2 IS NULL OR c.endpoint = ?2)
           AND (?3 IS NULL OR f.origin = ?3) AND (?4 IS NULL OR f.opcode = ?4)
           AND (?5 IS NULL OR f.time_us >= ?5) AND (?6 IS NULL OR f.time_us <= ?6)
         ORDER BY {order} LIMIT ?7"
    );
    let mut statement = db.prepare_cached(&sql)?;
    let rows = statement.query_map(
        params![
            filter.connection,
            filter.endpoint,
            filter.origin.map(|o| o.as_str()),
            filter.opcode,
            filter.since_us.map(|t| t as i64),
            filter.until_us.map(|t| t as i64),
            filter.limit as i64
        ],
        |row| row.get::<_, String>(0),
    )?;
    Ok(rows
        .filter_map(|row| row.ok().and_then(|j| serde_json::from_str(&j).ok()))
        .collect())
}

/// Connections recorded for replay (their upgrade and their messages, in
/// order), oldest first: the last `limit` matching `filter`'s endpoint and
/// time range.
pub(crate) fn recorded(
    db: &Db,
    filter: &ConnectionFilter,
) -> rusqlite::Result<Vec<crate::Recorded>> {
    let mut statement = db.prepare_cached(
        "SELECT c.key, c.upgrade_json FROM connections c
         WHERE EXISTS (SELECT 1 FROM messages m WHERE m.connection = c.key)
           AND (?1 IS NULL OR c.endpoint = ?1) AND (?2 IS NULL OR c.time_us >= ?2)
           AND (?3 IS NULL OR c.time_us <= ?3)
         ORDER BY c.time_us DESC LIMIT ?4",
    )?;
    let keys: Vec<(String, String)> = statement
        .query_map(
            params![
                filter.endpoint,
                filter.since_us.map(|t| t as i64),
                filter.until_us.map(|t| t as i64),
                filter.limit as i64
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?
        .filter_map(Result::ok)
        .collect();
    let mut messages =
        db.prepare_cached("SELECT json FROM messages WHERE connection = ?1 ORDER BY seq")?;
    let mut recorded = Vec::new();
    for (key, upgrade) in keys.into_iter().rev() {
        let Ok(upgrade) = serde_json::from_str(&upgrade) else {
            continue;
        };
        let rows = messages.query_map([&key], |row| row.get::<_, String>(0))?;
        let messages = rows
            .filter_map(|row| row.ok().and_then(|j| serde_json::from_str(&j).ok()))
            .collect();
        recorded.push(crate::Recorded { upgrade, messages });
    }
    Ok(recorded)
}
