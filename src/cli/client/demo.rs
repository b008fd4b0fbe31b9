//! `ringcast client demo`: one of each exchange (ping, echo, broadcast,
//! stats, a custom type, a plain message), printed as it happens.

use super::print::{describe_compression, describe_event, exchange_expecting, EventLine, Style};
use super::print::{BOLD, DIM};
use super::{connect, AppOptions};
use crate::client::ClientError;
use serde_json::{json, Value};
use std::process::ExitCode;

/// The custom type the demo sends. The stock server has no handler for
/// it, so its answer is an `unknown_type` error: the demo says that this is
/// expected, and how an application adds a handler.
const CUSTOM_TYPE: &str = "custom_type";

/// What the demo prints under the `unknown_type` answer to
/// [`CUSTOM_TYPE`], so that a new user does not take it for a failure.
const CUSTOM_TYPE_NOTE: [&str; 3] = [
    "expected: the stock server has no handler for custom_type, so it answers unknown_type.",
    "An application that embeds the server answers it by registering one:",
    "Server::builder().handler(\"custom_type\", ...) (README.md, \"Embedding the server\").",
];

/// Walks through every exchange; errors end the demo.
pub(super) fn run(args: &AppOptions, style: &Style) -> Result<ExitCode, ClientError> {
    let client = connect(args, false)?;
    let events = client.messages();
    let ev_style = *style;
    let printer = std::thread::spawn(move || {
        for ev in events {
            match describe_event(&ev_style, &ev) {
                Some(EventLine::Out(l)) => println!("{l}"),
                Some(EventLine::Err(l)) => eprintln!("{l}"),
                None => {}
            }
        }
    });
    if !style.json {
        println!(
            "{} connected to {} from {}",
            style.paint(BOLD, "ringcast client demo:"),
            args.addr,
            client
                .local_addr()
                .map_or_else(|| "?".into(), |a| a.to_string())
        );
        if let Some(line) = describe_compression(&client, args) {
            println!("{}{line}", style.label("compression"));
        }
        println!();
    }
    let info = client.config().client_info.clone();
    let ts = || {
        Value::from(
            crate::protocol::TimestampCache::new()
                .format(crate::protocol::time::unix_ms_now())
                .to_owned(),
        )
    };
    let steps: [(&str, String, &str, Value); 6] = [
        (
            "ping",
            format!("ping ({info})"),
            "ping",
            json!({"timestamp": ts(), "client_info": info}),
        ),
        (
            "echo",
            "\"Hello, ringcast!\"".into(),
            "echo",
            json!({"content": "Hello, ringcast!", "timestamp": ts()}),
        ),
        (
            "broadcast",
            "\"Hello, everyone!\"".into(),
            "broadcast",
            json!({"content": "Hello, everyone!", "timestamp": ts()}),
        ),
        (
            "stats",
            "get_stats".into(),
            "get_stats",
            json!({"timestamp": ts()}),
        ),
        (
            "custom",
            format!("{CUSTOM_TYPE} {{\"data\":\"value\"}}"),
            CUSTOM_TYPE,
            json!({"data": "value", "timestamp": ts()}),
        ),
        (
            "message",
            "\"Just a plain message\"".into(),
            "message",
            json!({"content": "Just a plain message"}),
        ),
    ];
    for (label, shown, type_name, fields) in steps {
        let custom = type_name == CUSTOM_TYPE;
        // Only the custom type's unknown_type is expected, and explained.
        let expected = custom.then_some("unknown_type");
        let m = exchange_expecting(&client, style, label, &shown, type_name, fields, expected)?;
        if custom && !style.json && m.is_error() && m.get_str("code") == expected {
            for line in CUSTOM_TYPE_NOTE {
                println!("{}  {}", style.indent(), style.paint(DIM, line));
            }
        }
    }
    if !style.json {
        println!();
        println!("{}", style.paint(DIM, "demo complete"));
    }
    client.disconnect();
    let _ = printer.join();
    Ok(ExitCode::SUCCESS)
}
