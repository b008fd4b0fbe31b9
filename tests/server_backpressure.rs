//! Backpressure and short sends: 64 MiB of echo replies owed to a client
//! that reads slowly at first. Alone in its test binary so that the RSS the
//! server reports (the whole test process) is not inflated by other tests.

mod support;

use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::hostile::rss_of;
use support::server::{builder, spawn};
use support::wire::{frame, Client};

const REQUESTS: u64 = 1024;
const CONTENT: usize = 64 << 10;
/// Bound on the process RSS while 64 MiB of replies are owed. The server
/// pauses reading a connection above 1 MiB of unsent output, so its own
/// share should stay a few MiB; 200 MiB leaves room for the allocator and
/// the test's own buffers while still catching output buffered without
/// bound (which would reach 64+ MiB on top of the baseline).
const RSS_BOUND: u64 = 200 << 20;

#[test]

fn slow_reader_gets_64_mib_of_echo_replies_in_order() {
    let server = spawn(builder(2));
    let addr = server.local_addr();
    let mut reader = Client::connect(addr);
    let filler = "z".repeat(CONTENT - 16);
    let writer = spawn_echo_writer(&reader, REQUESTS, move |i| {
        let content = format!("<{i:08}>{filler}<end>>");
        assert_eq!(content.len(), CONTENT);
        content
    });

    // RSS sampled on another connection throughout.
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, max_rss) = (done.clone(), max_rss.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                let rss = rss_of(&c.stats());
                max_rss.fetch_max(rss, Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    let started = Instant::now();
    for i in 0..REQUESTS {
        // Slow at first: the server must hold back, not buffer everything.
        if i < 40 {
            std::thread::sleep(Duration::from_millis(15));
        }
        let v = match reader.try_recv() {
            Ok(Some(v)) => v,
            other => panic!(
                "reply {i} never came ({other:?}) after {:?}",
                started.elapsed()
            ),
        };
        assert_eq!(v["type"], "echo_response", "reply {i}");
        assert_eq!(v["id"], i, "reply out of order");
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), CONTENT, "reply {i} truncated");
        assert!(
            content.starts_with(&format!("<{i:08}>")),
            "reply {i} corrupt"
        );
        assert!(content.ends_with("<end>>"), "reply {i} corrupt at the end");
    }
    let elapsed = started.elapsed();
    writer.join().unwrap();
    reader.expect_silence(Duration::from_millis(50));
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let max_rss = max_rss.load(Ordering::Relaxed);
    eprintln!(
        "64 MiB echoed in {elapsed:?}; max RSS {} MiB over {samples} samples",
        max_rss >> 20
    );
    assert!(samples >= 3, "too few RSS samples ({samples})");
    assert!(
        max_rss < RSS_BOUND,
        "RSS reached {} MiB (bound {} MiB)",
        max_rss >> 20,
        RSS_BOUND >> 20
    );
    let s = reader.stats();
    assert_eq!(s["messages_by_type"]["echo"], REQUESTS, "{s}");
}

/// Writes `requests` echos (id `i`, content `content(i)`) on a clone of
/// `c`'s stream from another thread, while the test reads on `c`.
fn spawn_echo_writer(
    c: &Client,
    requests: u64,
    content: impl Fn(u64) -> String + Send + 'static,
) -> JoinHandle<()> {
    let mut writer_stream = c.stream.try_clone().unwrap();
    // Writes may block for long while the reader sleeps: no write timeout.
    writer_stream.set_write_timeout(None).unwrap();
    std::thread::spawn(move || {
        for i in 0..requests {
            let req = json!({"type": "echo", "content": content(i), "id": i});
            writer_stream.write_all(&frame(&req)).unwrap();
        }
    })
}

/// Pipelines `requests` echos of `size` bytes while reading (slowly for the
/// first `slow` replies); every reply must arrive, in order.
fn echo_flood(server: &ringcast::server::ServerHandle, requests: u64, size: usize, slow: u64) {
    let mut reader = Client::connect(server.local_addr());
    let filler = "q".repeat(size - 10);
    let writer = spawn_echo_writer(&reader, requests, move |i| format!("<{i:08}>{filler}"));
    for i in 0..requests {
        if i < slow {
            std::thread::sleep(Duration::from_millis(10));
        }
        let v = match reader.try_recv() {
            Ok(Some(v)) => v,
            other => panic!("reply {i} of {requests} never came ({other:?})"),
        };
        assert_eq!(v["id"], i, "reply out of order");
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), size);
        assert!(
            content.starts_with(&format!("<{i:08}>")),
            "reply {i} corrupt"
        );
    }
    writer.join().unwrap();
}

#[test]

fn fast_reader_16_mib_of_echo_replies() {
    let server = spawn(builder(1));
    echo_flood(&server, 256, 64 << 10, 0);
}

#[test]

fn backpressure_with_a_tiny_buffer_ring() {
    // ENOBUFS ends the multishot receive all the time here, so pauses for
    // backpressure race with it.
    let server = spawn(builder(1).recv_buffers(4).recv_buffer_size(4096));
    echo_flood(&server, 256, 32 << 10, 20);
}
