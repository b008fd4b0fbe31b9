//! The connection workloads. `connections`: open many connections (over
//! several 127.0.0.x source addresses, to get past one address's ephemeral
//! ports), hold them, ping a sample, and report the server's RSS growth per
//! connection from `get_stats`. `connect`: new connections one after
//! another on each thread, each with one ping, then closed.

use super::report::{new_histogram, Latency, Machine, Report};
use super::setup::{self, get_stats, roundtrip, roundtrip_with};
use super::{source_ips, utc_now, BenchConfig, BenchError};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Runs the connections workload.
pub fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let before = get_stats(cfg.addr)?;
    let threads = cfg.threads.max(1).min(cfg.connections.max(1));
    let ips = source_ips(cfg.source_ips);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = cfg.connections / threads + usize::from(t < cfg.connections % threads);
        let ips = ips.clone();
        let addr = cfg.addr;
        let gap = cfg
            .connect_rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(threads as f64 / r as f64));
        handles.push(std::thread::spawn(
            move || -> Result<Vec<TcpStream>, std::io::Error> {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let src = if ips.is_empty() {
                        None
                    } else {
                        Some(ips[(i * threads + t) % ips.len()])
                    };
                    v.push(setup::connect(addr, src)?);
                    if let Some(g) = gap {
                        std::thread::sleep(g);
                    }
                }
                Ok(v)
            },
        ));
    }
    let mut streams = Vec::with_capacity(cfg.connections);
    let mut connect_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(v)) => streams.extend(v),
            Ok(Err(e)) => connect_error = Some(e),
            Err(_) => connect_error = Some(std::io::Error::other("a connect thread panicked")),
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    if let Some(e) = connect_error {
        return Err(BenchError::Io(std::io::Error::new(
            e.kind(),
            format!(
                "opened {} of {} connections before: {e} (raise ulimit -n, or use more --source-ips)",
                streams.len(),
                cfg.connections
            ),
        )));
    }
    eprintln!(
        "  opened {} connections in {:.2} s ({:.0}/s)",
        streams.len(),
        connect_secs,
        streams.len() as f64 / connect_secs.max(1e-9)
    );
    // Let the server accept everything, then read its memory.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = get_stats(cfg.addr)?;
    while held.connected_clients < before.connected_clients + streams.len() as u64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
        held = get_stats(cfg.addr)?;
    }
    // Ping a sample spread over the whole set.
    let mut hist = new_histogram();
    let mut errors = 0u64;
    let sample = streams.len().clamp(1, 1000);
    let step = (streams.len() / sample).max(1);
    let t0 = Instant::now();
    let mut pinged = 0u64;
    for s in streams.iter_mut().step_by(step) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let t = Instant::now();
        match roundtrip(s, br#"{"type":"ping"}"#) {
            Ok(r) if r.starts_with(br#"{"type":"pong""#) => {
                hist.saturating_record(t.elapsed().as_micros() as u64);
                pinged += 1;
            }
            _ => errors += 1,
        }
    }
    let ping_secs = t0.elapsed().as_secs_f64();
    let hold = cfg.duration.min(Duration::from_secs(3600));
    std::thread::sleep(hold.saturating_sub(Duration::from_secs_f64(ping_secs)));
    let during = get_stats(cfg.addr)?;
    let n = streams.len() as f64;
    let missing =
        (before.connected_clients + streams.len() as u64).saturating_sub(during.connected_clients);
    errors += missing;
    drop(streams);
    let per_conn =
        (held.rss_bytes.max(during.rss_bytes) as f64 - before.rss_bytes as f64) / n.max(1.0);
    Ok(Report {
        label: cfg.label.clone(),
        addr: cfg.addr.to_string(),
        workload: "connections".into(),
        connections: cfg.connections,
        pipeline: 1,
        rate: 0,
        size: 0,
        threads,
        seconds: ping_secs,
        messages: pinged,
        msgs_per_sec: pinged as f64 / ping_secs.max(1e-9),
        mb_per_sec: 0.0,
        deliveries_per_sec: 0.0,
        latency_us: Latency::from_histogram(&hist),
        errors,
        reconnects: 0,
        rss_bytes_per_connection: Some(per_conn),
        compression: None,
        content: cfg.content.name().into(),
        wire: Default::default(),
        history: None,
        recover: None,
        machine: Machine::current(),
        date: utc_now(),
    })
    .inspect(|_| super::set_last_histogram(hist))
}

/// Runs the connect workload: each thread opens a connection (TLS with
/// `--tls`), sends one ping, waits for the pong and closes, over and over,
/// for the warm-up and then the measured duration (paced by
/// `--connect-rate` when given). Latency is connect + handshake (and
/// `hello`, with `--compress`) + first reply; the rate is connections per
/// second.
pub fn run_connect(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let tls = match &cfg.tls {
        Some(o) => Some(super::tls::BenchTls::new(o, cfg.addr)?),
        None => None,
    };
    let threads = cfg.threads.max(1);
    let ips = source_ips(cfg.source_ips);
    let gap = cfg
        .connect_rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(threads as f64 / r as f64));
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let until = measure_from + cfg.duration;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (tls, ips, addr, compress) = (tls.clone(), ips.clone(), cfg.addr, cfg.compress);
        // With --token (the static one or a JWT) every handshake includes
        // `auth`: the cost of verifying it is part of what is measured.
        let token = cfg.token.clone();
        handles.push(std::thread::spawn(move || {
            let mut hist = new_histogram();
            let (mut done, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut i = t;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let src = (!ips.is_empty()).then(|| ips[i % ips.len()]);
                i += threads;
                let r = setup::connect_auth(addr, src, token.as_deref(), tls.as_ref(), compress)
                    .and_then(
                        |setup::Connected {
                             mut sock,
                             tls: mut conn,
                             codec,
                         }| {
                            let mut s = super::tls::stream(&mut sock, conn.as_mut());
                            let r = roundtrip_with(
                                &mut *s,
                                br#"{"type":"ping"}"#,
                                codec.map(|(c, _)| c),
                            )?;
                            drop(s);
                            if let Some(c) = conn.as_mut() {
                                // End it properly, as a real client would.
                                c.send_close_notify();
                                let _ = c.write_tls(&mut sock);
                            }
                            Ok(r)
                        },
                    );
                let measured = t0 >= measure_from;
                match r {
                    Ok(r) if r.starts_with(br#"{"type":"pong""#) => {
                        if measured {
                            hist.saturating_record(t0.elapsed().as_micros() as u64);
                            done += 1;
                        }
                    }
                    other => {
                        errors += u64::from(measured);
                        if first_error.is_none() {
                            first_error = Some(match other {
                                Ok(r) => String::from_utf8_lossy(&r).into_owned(),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                }
                if let Some(g) = gap {
                    std::thread::sleep(g.saturating_sub(t0.elapsed()));
                }
            }
            (hist, done, errors, first_error)
        }));
    }
    let mut hist = new_histogram();
    let (mut done, mut errors) = (0u64, 0u64);
    for h in handles {
        let (h, d, e, first) = h
            .join()
            .map_err(|_| BenchError::Io(std::io::Error::other("a connect thread panicked")))?;
        hist.add(&h).ok();
        done += d;
        errors += e;
        if let Some(f) = first {
            eprintln!("  first error on a thread: {f}");
        }
    }
    let secs = cfg.duration.as_secs_f64();
    Ok(Report {
        label: cfg.label.clone(),
        addr: cfg.addr.to_string(),
        workload: "connect".into(),
        connections: threads,
        pipeline: 1,
        rate: cfg.connect_rate.unwrap_or(0),
        size: 0,
        threads,
        seconds: secs,
        messages: done,
        msgs_per_sec: done as f64 / secs.max(1e-9),
        mb_per_sec: 0.0,
        deliveries_per_sec: 0.0,
        latency_us: Latency::from_histogram(&hist),
        errors,
        reconnects: 0,
        rss_bytes_per_connection: None,
        compression: cfg.compress.map(|c| c.as_str().to_owned()),
        content: cfg.content.name().into(),
        wire: Default::default(),
        history: None,
        recover: None,
        machine: Machine::current(),
        date: utc_now(),
    })
    .inspect(|_| super::set_last_histogram(hist))
}
