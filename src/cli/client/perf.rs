//! `ringcast client performance`: a short preset of the load generator
//! (`ringcast::bench`): echo requests over a few connections, each keeping
//! `--window` requests in flight, `--count` requests in all.

use super::print::Style;
use super::AppOptions;
use crate::bench::{self, BenchConfig, Workload};
use crate::client::ClientError;
use serde_json::json;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Connections the preset uses: enough to keep both sides busy on a small
/// machine, few enough to start instantly.
const PRESET_CONNECTIONS: usize = 4;

pub(crate) fn run(args: &AppOptions, style: &Style) -> Result<ExitCode, ClientError> {
    let addr: SocketAddr = args
        .addr
        .as_str()
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            ClientError::InvalidArgument(format!("{} resolves to no address", args.addr))
        })?;
    let count = args.count.max(1);
    let connections = PRESET_CONNECTIONS.min(count as usize);
    let config = BenchConfig {
        addr,
        workload: Workload::Echo,
        threads: 1,
        connections,
        pipeline: args.window.clamp(1, 1 << 16),
        size: args.size,
        requests: Some(count),
        warmup: Duration::ZERO,
        progress: false,
        label: "client performance".into(),
        token: args.token.clone(),
        tls: args.tls.clone(),
        compress: args.compress,
        ..BenchConfig::default()
    };
    let report = bench::run(config).map_err(|e| match e {
        bench::BenchError::Io(e) => ClientError::Io(e),
        other => ClientError::InvalidArgument(other.to_string()),
    })?;
    let l = &report.latency_us;
    if style.json {
        println!(
            "{}",
            json!({
                "requests": report.messages, "size": args.size, "window": report.pipeline,
                "connections": report.connections, "elapsed_s": report.seconds,
                "msgs_per_s": report.msgs_per_sec, "errors": report.errors,
                "p50_us": l.p50, "p90_us": l.p90, "p99_us": l.p99, "p999_us": l.p999, "max_us": l.max,
                "compression": report.compression,
                "bytes_sent": report.wire.bytes_sent, "bytes_received": report.wire.bytes_received,
                "plain_bytes_sent": report.wire.plain_bytes_sent,
                "plain_bytes_received": report.wire.plain_bytes_received,
            })
        );
    } else {
        println!(
            "{} echos of {} B, {} in flight on each of {} connections to {}",
            report.messages, args.size, report.pipeline, report.connections, args.addr
        );
        println!("{}{:.3} s", style.label("elapsed"), report.seconds);
        println!(
            "{}{:.0} msgs/s",
            style.label("throughput"),
            report.msgs_per_sec
        );
        for (name, v) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            println!(
                "{}{:.3} ms",
                style.label(&format!("latency {name}")),
                v as f64 / 1000.0
            );
        }
        if let Some(c) = &report.compression {
            let w = &report.wire;
            println!(
                "{}{c}: sent {} B ({} B uncompressed), received {} B ({} B uncompressed)",
                style.label("compression"),
                w.bytes_sent,
                w.plain_bytes_sent,
                w.bytes_received,
                w.plain_bytes_received
            );
        }
        if report.errors > 0 {
            println!("{}{}", style.label("errors"), report.errors);
        }
    }
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
