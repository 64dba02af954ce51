#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// A recent time: `offset` microseconds after a fixed point an hour ago
/// (records older than the retention would be trimmed).
fn at(offset: u64) -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| now_us() - 3_600_000_000) + offset
}

fn upgrade(monitor: &Monitor, id: u64, endpoint: &str, offset: u64) -> Record {
    let time_us = at(offset);
    Record::Upgrade(Box::new(UpgradeRecord {
        connection: monitor.key(id),
        id,
        generation: 1,
        time_us,
        endpoint: endpoint.to_string(),
        client: "127.0.0.1:5000".to_string(),
        method: "GET".to_string(),
        path: endpoint.to_string(),
        query: String::new(),
        request_headers: vec![("host".to_string(), "x".to_string())],
        status: 101,
        response_headers: vec![],
        duration_us: 10,
        route: Some("ws://up/".to_string()),
        verdicts: vec![],
        level: "full".to_string(),
    }))
}

fn frame(monitor: &Monitor, id: u64, seq: u64, opcode: u8, offset: u64) -> Record {
    let time_us = at(offset);
    Record::Frame(FrameRecord {
        connection: monitor.key(id).into(),
        seq,
        time_us,
        origin: Origin::Client,
        opcode,
        fin: true,
        rsv: [false; 3],
        masking_key: Some(MaskingKey([1, 2, 3, 4])),
        length: 5,
        payload: Some("aGVsbG8=".to_string()),
        truncated: false,
        filter_us: Some(3),
        verdict: Some("forward".into()),
        // Text frames as if compressed: the field survives both stores.
        uncompressed_length: (opcode == 1).then_some(9),
    })
}

fn settings(database: Option<PathBuf>) -> MonitorSettings {
    MonitorSettings {
        database,
        ..MonitorSettings::default()
    }
}

async fn exercise(monitor: &Monitor) {
    monitor.record(upgrade(monitor, 1, "/a", 100));
    monitor.record(upgrade(monitor, 2, "/b", 200));
    monitor.record(frame(monitor, 1, 1, 1, 110));
    monitor.record(frame(monitor, 1, 2, 9, 120));
    monitor.record(frame(monitor, 2, 1, 2, 210));
    monitor.record(Record::End(EndRecord {
        connection: monitor.key(1),
        time_us: at(130),
        closed_by: "client".to_string(),
        code: Some(1000),
        reason: "bye".to_string(),
        expired: false,
    }));
    monitor.flush().await;

    let all = monitor
        .connections(&ConnectionFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        all.iter().map(|c| c.upgrade.id).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(all[1].frames, 2);
    assert_eq!(all[1].end.as_ref().unwrap().code, Some(1000));
    let by = |filter: ConnectionFilter| {
        monitor
            .connections(&ConnectionFilter {
                limit: 10,
                ..filter
            })
            .unwrap()
            .iter()
            .map(|c| c.upgrade.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(ConnectionFilter {
            endpoint: Some("/b".into()),
            ..Default::default()
        }),
        vec![2]
    );
    assert_eq!(
        by(ConnectionFilter {
            close_code: Some(1000),
            ..Default::default()
        }),
        vec![1]
    );
    assert_eq!(
        by(ConnectionFilter {
            opcode: Some(9),
            ..Default::default()
        }),
        vec![1]
    );
    assert_eq!(
        by(ConnectionFilter {
            since_us: Some(at(150)),
            ..Default::default()
        }),
        vec![2]
    );

    let frames = monitor
        .frames(&FrameFilter {
            connection: Some(monitor.key(1)),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(frames[0].masking_key, Some(MaskingKey([1, 2, 3, 4])));
    let binary = monitor
        .frames(&FrameFilter {
            opcode: Some(2),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(binary.len(), 1);
    assert_eq!(&*binary[0].connection, monitor.key(2));
    assert!(monitor.connection(&monitor.key(2)).unwrap().is_some());
    assert!(monitor.connection("nope").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_database_answer_the_same_queries() {
    let memory = Monitor::start(&settings(None)).unwrap();
    exercise(&memory).await;
    let dir = tempfile::tempdir().unwrap();
    let stored = Monitor::start(&settings(Some(dir.path().join("m.db")))).unwrap();
    exercise(&stored).await;
    assert_eq!(stored.stored(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_keeps_history_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let first = Monitor::start(&settings(Some(path.clone()))).unwrap();
    first.record(upgrade(&first, 1, "/a", 100));
    first.flush().await;
    let key = first.key(1);
    drop(first);
    let second = Monitor::start(&settings(Some(path))).unwrap();
    assert!(second.connection(&key).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_of_the_counters_outlive_a_restart_for_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let day_ms = crate::SAMPLE_RETENTION.as_millis() as u64;
    let first = Monitor::start(&settings(Some(path.clone()))).unwrap();
    first.store_sample(1_000, "{\"old\":1}".to_string());
    first.store_sample(2_000, "{\"old\":2}".to_string());
    // 25 hours after the second, the first is past the retention.
    first.store_sample(2_000 + day_ms, "{\"new\":1}".to_string());
    first.flush().await;
    drop(first);
    let second = Monitor::start(&settings(Some(path))).unwrap();
    assert_eq!(
        second.samples(0).unwrap(),
        [
            (2_000, "{\"old\":2}".to_string()),
            (2_000 + day_ms, "{\"new\":1}".to_string())
        ]
    );
    assert_eq!(second.samples(3_000).unwrap().len(), 1);
    // Without a database nothing is kept.
    let memory = Monitor::start(&settings(None)).unwrap();
    memory.store_sample(1_000, "{}".to_string());
    memory.flush().await;
    assert!(memory.samples(0).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_holds_a_bounded_number_of_bytes() {
    let monitor = Monitor::start(&MonitorSettings {
        queue_bytes: wsgate_config::ByteSize(10_000),
        ..settings(None)
    })
    .unwrap();
    let with_payload = |seq: u64, bytes: usize| {
        let mut record = frame(&monitor, 1, seq, 2, seq);
        if let Record::Frame(frame) = &mut record {
            frame.payload = Some("A".repeat(bytes));
        }
        record
    };
    // One record larger than the bound never enters.
    monitor.record(with_payload(1, 20_000));
    monitor.flush().await;
    assert_eq!(monitor.dropped(), 1);
    // Stored records give their bytes back: 100 records of 4,000 bytes,
    // one at a time, all enter.
    for seq in 2..102 {
        monitor.record(with_payload(seq, 4_000));
        monitor.flush().await;
    }
    assert_eq!(monitor.dropped(), 1);
    assert_eq!(monitor.shared.queued_bytes.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let monitor = Monitor::start(&MonitorSettings {
        queue: 1,
        ..settings(None)
    })
    .unwrap();
    for i in 0..10_000 {
        monitor.record(upgrade(&monitor, i, "/a", i));
    }
    monitor.flush().await;
    assert!(monitor.dropped() > 0);
}

/// A writer whose rounds find nothing waits on the queue (an idle monitor
/// sleeps instead of waking 100 times a second). A record sent then, with
/// no flush behind it, wakes it: it reaches a live subscriber (without a
/// database the wait has no timeout: only an item ends it).
#[tokio::test]
async fn a_record_wakes_a_writer_that_went_idle() {
    let monitor = Monitor::start(&settings(None)).unwrap();
    let mut live = monitor.subscribe();
    monitor.flush().await;
    // Not a synchronisation: ten empty rounds' time, so that the writer is
    // waiting on the queue when the record comes. Were it still polling,
    // the record would arrive all the same.
    tokio::time::sleep(POLL * 10).await;
    monitor.record(upgrade(&monitor, 1, "/a", 100));
    let seen = tokio::time::timeout(Duration::from_secs(10), live.recv())
        .await
        .expect("the record woke the writer")
        .unwrap();
    assert!(matches!(*seen, Record::Upgrade(_)));
}

#[test]
fn retention_and_size_trim_oldest_connections_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = sqlite::open(&dir.path().join("t.db")).unwrap();
    let monitor_key = |i: u64| format!("r-{i}");
    let records: Vec<_> = (0..200u64)
        .map(|i| {
            Record::Upgrade(Box::new(UpgradeRecord {
                connection: monitor_key(i),
                id: i,
                generation: 1,
                time_us: i,
                endpoint: "/a".into(),
                client: "c".into(),
                method: "GET".into(),
                path: "/a".into(),
                query: "x".repeat(2000),
                request_headers: vec![],
                status: 101,
                response_headers: vec![],
                duration_us: 0,
                route: None,
                verdicts: vec![],
                level: "headers".into(),
            }))
        })
        .collect();
    sqlite::write(&mut db, &records).unwrap();
    assert_eq!(sqlite::trim(&mut db, Some(50), u64::MAX).unwrap(), 50);
    let deleted = sqlite::trim(&mut db, None, 64 * 1024).unwrap();
    assert!(deleted > 0);
    let left = sqlite::connections(
        &db,
        &ConnectionFilter {
            limit: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(left.len() as u64, 150 - deleted);
    assert!(left.iter().all(|c| c.upgrade.time_us >= 50 + deleted));
}

/// The in-memory history keeps the newest `max_connections` connections:
/// frames of an evicted connection are not kept, frames of the kept ones
/// find their connection through the index, and a key seen again is one
/// new connection that the older entry's eviction does not forget.
#[test]
fn memory_keeps_the_newest_connections_and_finds_their_frames() {
    let monitor = Monitor::start(&settings(None)).unwrap();
    let mut memory = memory::Memory::new(2, 3);
    let apply = |memory: &mut memory::Memory, record: Record| memory.apply(record);
    for id in 1..=3 {
        apply(&mut memory, upgrade(&monitor, id, "/a", id));
    }
    // 1 was evicted by 3: its frame is dropped; 2 and 3 count theirs.
    for (id, seq) in [(1, 1), (2, 1), (3, 1), (3, 2), (3, 3), (3, 4)] {
        apply(&mut memory, frame(&monitor, id, seq, 1, 10 + seq));
    }
    assert!(memory.connection(&monitor.key(1)).is_none());
    assert_eq!(memory.connection(&monitor.key(2)).unwrap().frames, 1);
    assert_eq!(memory.connection(&monitor.key(3)).unwrap().frames, 4);
    let filter = |id| FrameFilter {
        connection: Some(monitor.key(id)),
        limit: 10,
        ..FrameFilter::default()
    };
    // The last 3 frames of connection 3, newest last.
    let seqs: Vec<u64> = memory.frames(&filter(3)).iter().map(|f| f.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);

    // Key 3 again while the older 3 is kept: frames go to the newer one,
    // and evicting the older one later does not forget the newer.
    apply(&mut memory, upgrade(&monitor, 3, "/b", 20));
    apply(&mut memory, frame(&monitor, 3, 1, 2, 21));
    let again = memory.connection(&monitor.key(3)).unwrap();
    assert_eq!((again.upgrade.endpoint.as_str(), again.frames), ("/b", 1));
    apply(&mut memory, upgrade(&monitor, 4, "/a", 30));
    let again = memory.connection(&monitor.key(3)).unwrap();
    assert_eq!((again.upgrade.endpoint.as_str(), again.frames), ("/b", 1));
    assert!(memory.connection(&monitor.key(4)).is_some());
}

/// The history keeps frames in a compact form (no texts per frame): what
/// it gives back is what it was given, field for field, for the newest
/// frames: payloads that start part-way through, verdicts that repeat,
/// change and come back, frames without either.
#[test]
fn the_history_gives_back_the_frames_it_kept_field_for_field() {
    let monitor = Monitor::start(&settings(None)).unwrap();
    let mut memory = memory::Memory::new(4, 5);
    memory.apply(upgrade(&monitor, 1, "/a", 1));
    let shared: Arc<str> = Arc::from("p@1 forward");
    let sent: Vec<FrameRecord> = (1..=12u64)
        .map(|seq| {
            let Record::Frame(mut frame) =
                frame(&monitor, 1, seq, [1, 2, 9][seq as usize % 3], seq)
            else {
                unreachable!()
            };
            frame.payload = (seq > 3 && seq % 2 == 0).then(|| format!("payload {seq}"));
            frame.verdict = match seq % 4 {
                0 => None,
                1 | 2 => Some(shared.clone()),
                _ => Some(format!("p@1 drop {}", seq % 2).into()),
            };
            frame.masking_key = (seq % 3 != 0).then_some(MaskingKey([seq as u8, 0, 0, 1]));
            frame.filter_us = (seq % 5 != 0).then_some(seq * 7);
            frame.uncompressed_length = (seq % 2 == 1).then_some(seq * 11);
            frame.rsv = [seq % 2 == 0, false, seq % 3 == 0];
            frame.truncated = seq % 4 == 1;
            frame
        })
        .collect();
    for frame in &sent {
        memory.apply(Record::Frame(frame.clone()));
    }
    let kept = memory.frames(&FrameFilter {
        connection: Some(monitor.key(1)),
        limit: 10,
        ..FrameFilter::default()
    });
    assert_eq!(kept, sent[7..]);
    assert_eq!(memory.connection(&monitor.key(1)).unwrap().frames, 12);
    // Frames the filter skips do not shift the payloads of those it keeps.
    let binary = memory.frames(&FrameFilter {
        connection: Some(monitor.key(1)),
        opcode: Some(2),
        limit: 10,
        ..FrameFilter::default()
    });
    let expected: Vec<_> = sent[7..]
        .iter()
        .filter(|f| f.opcode == 2)
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(binary, expected);
}

/// A record in the queue and in the in-memory history is the size of its
/// largest variant: the rare ones are boxed so a frame pays for a frame.
#[test]
fn a_record_is_the_size_of_a_frame() {
    let record = std::mem::size_of::<Record>();
    let frame = std::mem::size_of::<FrameRecord>();
    eprintln!("Record: {record} bytes, FrameRecord: {frame} bytes");
    assert!(
        record <= frame + 8,
        "Record {record} bytes, FrameRecord {frame}"
    );
}

#[test]
fn a_masking_key_reads_back_as_eight_hex_digits_and_nothing_else() {
    let key: MaskingKey = serde_json::from_str("\"0a0b0c0d\"").unwrap();
    assert_eq!(key, MaskingKey([0x0a, 0x0b, 0x0c, 0x0d]));
    assert_eq!(serde_json::to_string(&key).unwrap(), "\"0a0b0c0d\"");
    for bad in [
        "\"+1234567\"",
        "\"-1234567\"",
        "\"1234567\"",
        "\"123456789\"",
        "\"0a0b0c0g\"",
    ] {
        assert!(
            serde_json::from_str::<MaskingKey>(bad).is_err(),
            "{bad} is not a masking key"
        );
    }
}
