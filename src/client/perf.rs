//! `ringcast client performance`: a deliberately small pipelined echo loop
//! over one connection. Placeholder until `ringcast::bench` provides the
//! preset runner (see the BENCH HOOK in cli.rs).

use super::cli::{fmt_ms, ClientArgs, Style};
use super::conn::{establish, request_frame, FrameReader};
use super::ClientError;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

pub(crate) fn run(args: &ClientArgs, style: &Style) -> Result<ExitCode, ClientError> {
    let addrs: Vec<SocketAddr> = args.addr.as_str().to_socket_addrs()?.collect();
    let cfg = args.config();
    // Connect (and authenticate) like the library does, then drive the
    // socket directly: requests are written ahead of their answers.
    let est = establish(&addrs, &cfg, &AtomicU64::new(1), false)?;
    let mut writer = est.conn.try_clone_stream()?;
    let mut reader: FrameReader = est.reader;
    reader.set_read_timeout(Some(cfg.request_timeout))?;

    let count = args.count.max(1);
    let window = args.window.clamp(1, 1 << 16) as u64;
    let mut fields = Map::new();
    fields.insert("content".into(), Value::from("x".repeat(args.size)));
    let mut out = Vec::new();
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(window as usize);
    let mut lat: Vec<Duration> = Vec::with_capacity(count as usize);
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while got < count {
        out.clear();
        while sent < count && sent - got < window {
            request_frame(&mut out, "echo", &fields, 1_000 + sent);
            sent_at.push_back(Instant::now());
            sent += 1;
        }
        if !out.is_empty() {
            writer.write_all(&out)?;
        }
        let m = reader.next_message()?;
        if m.is_error() {
            return Err(m.to_server_error());
        }
        if m.kind() != "echo_response" {
            continue; // a broadcast from someone else
        }
        if let Some(t) = sent_at.pop_front() {
            lat.push(t.elapsed());
        }
        got += 1;
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let rate = count as f64 / elapsed.as_secs_f64();
    if style.json {
        println!(
            "{}",
            json!({
                "requests": count, "size": args.size, "window": window,
                "elapsed_s": elapsed.as_secs_f64(), "msgs_per_s": rate,
                "p50_us": pct(0.50).as_micros() as u64, "p90_us": pct(0.90).as_micros() as u64,
                "p99_us": pct(0.99).as_micros() as u64, "p999_us": pct(0.999).as_micros() as u64,
                "max_us": pct(1.0).as_micros() as u64,
            })
        );
    } else {
        println!(
            "{count} echos of {} B, {window} in flight, one connection to {}",
            args.size, args.addr
        );
        println!("{}{:.3} s", style.label("elapsed"), elapsed.as_secs_f64());
        println!("{}{rate:.0} msgs/s", style.label("throughput"));
        for (name, p) in [
            ("p50", 0.50),
            ("p90", 0.90),
            ("p99", 0.99),
            ("p99.9", 0.999),
            ("max", 1.0),
        ] {
            println!(
                "{}{}",
                style.label(&format!("latency {name}")),
                fmt_ms(pct(p))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
