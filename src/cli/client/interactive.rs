//! `ringcast client interactive`: commands and text, with line editing on a
//! terminal and plain line-by-line reading through a pipe.

use super::print::{describe_compression, describe_event, exchange, EventLine, Style, RED};
use super::{connect, AppOptions};
use crate::client::{Client, ClientError, Event};
use serde_json::{json, Map, Value};
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::mpsc::Receiver;

const HELP: &str = "\
commands:
  /ping                   ping the server, print the round trip
  /echo <text>            have the server echo <text>
  /broadcast <text>       send <text> to every other client
  /sub <channel>          subscribe to <channel>; its messages are printed as they come
  /unsub <channel>        leave <channel>
  /pub <channel> <text>   publish <text> to <channel>'s subscribers
  /history <channel> [since] [limit]
                          the publications <channel> keeps (server with
                          --history-size): those after offset <since>
                          (default 0), at most <limit> (1 to 1000, default 100)
  /stats                  print the server's statistics
  /custom <type> [json]   send a message of any type, with a JSON object of fields
  /help                   this list
  /exit                   leave (so does end of input)
  anything else           sent as a plain text message";

/// One parsed input line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    Ping,
    Echo(String),
    Broadcast(String),
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, String),
    /// `history`: channel, `since`, `limit`.
    History(String, Option<u64>, Option<u64>),
    Stats,
    Custom(String, Map<String, Value>),
    Text(String),
    Help,
    Exit,
    Empty,
    /// A command used wrongly: what to tell the user.
    Bad(String),
}

pub(crate) fn parse_command(line: &str) -> Command {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Command::Empty;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Command::Text(line.to_owned());
    };
    let (cmd, arg) = match rest.split_once(char::is_whitespace) {
        Some((c, a)) => (c, a.trim()),
        None => (rest, ""),
    };
    let needs_arg = |what: &str, make: fn(String) -> Command| {
        if arg.is_empty() {
            Command::Bad(format!("usage: /{what} <text>"))
        } else {
            make(arg.to_owned())
        }
    };
    match cmd {
        "ping" => Command::Ping,
        "echo" => needs_arg("echo", Command::Echo),
        "broadcast" => needs_arg("broadcast", Command::Broadcast),
        "sub" | "subscribe" => needs_channel("sub", arg, Command::Subscribe),
        "unsub" | "unsubscribe" => needs_channel("unsub", arg, Command::Unsubscribe),
        "pub" | "publish" => match arg.split_once(char::is_whitespace) {
            Some((ch, text)) if !text.trim().is_empty() => {
                match crate::protocol::message::check_channel(ch) {
                    Ok(()) => Command::Publish(ch.to_owned(), text.trim().to_owned()),
                    Err(why) => Command::Bad(why.into()),
                }
            }
            _ => Command::Bad("usage: /pub <channel> <text>".into()),
        },
        "history" => parse_history(arg),
        "stats" => Command::Stats,
        "help" | "?" => Command::Help,
        "exit" | "quit" => Command::Exit,
        "custom" => {
            let (t, fields) = match arg.split_once(char::is_whitespace) {
                Some((t, f)) => (t, f.trim()),
                None => (arg, ""),
            };
            if t.is_empty() {
                return Command::Bad("usage: /custom <type> [json object]".into());
            }
            if fields.is_empty() {
                return Command::Custom(t.to_owned(), Map::new());
            }
            match serde_json::from_str::<Value>(fields) {
                Ok(Value::Object(m)) => Command::Custom(t.to_owned(), m),
                Ok(_) => Command::Bad("custom fields must be a JSON object".into()),
                Err(e) => Command::Bad(format!("custom fields are not valid JSON: {e}")),
            }
        }
        other => Command::Bad(format!("unknown command /{other} (/help lists them)")),
    }
}

/// A command taking one channel name (no spaces: the name is one word here;
/// the library takes any valid name).
fn needs_channel(what: &str, arg: &str, make: fn(String) -> Command) -> Command {
    if arg.is_empty() || arg.contains(char::is_whitespace) {
        return Command::Bad(format!("usage: /{what} <channel>"));
    }
    match crate::protocol::message::check_channel(arg) {
        Ok(()) => make(arg.to_owned()),
        Err(why) => Command::Bad(why.into()),
    }
}

/// Largest `since` the protocol takes (a JSON-safe integer, 2^53-1).
const MAX_SINCE: u64 = (1 << 53) - 1;
/// Most publications one `history` request may ask for (the protocol's).
const MAX_LIMIT: u64 = 1_000;

/// `/history <channel> [since] [limit]`.
fn parse_history(arg: &str) -> Command {
    const USAGE: &str = "usage: /history <channel> [since] [limit]";
    let words: Vec<&str> = arg.split_whitespace().collect();
    let (ch, since, limit) = match words.as_slice() {
        [ch] => (*ch, None, None),
        [ch, s] => (*ch, Some(*s), None),
        [ch, s, l] => (*ch, Some(*s), Some(*l)),
        _ => return Command::Bad(USAGE.into()),
    };
    if let Err(why) = crate::protocol::message::check_channel(ch) {
        return Command::Bad(why.into());
    }
    let number = |what: &str, v: Option<&str>, lo: u64, hi: u64| -> Result<Option<u64>, String> {
        match v.map(str::parse::<u64>) {
            None => Ok(None),
            Some(Ok(n)) if (lo..=hi).contains(&n) => Ok(Some(n)),
            Some(_) => Err(format!(
                "{what} must be a number from {lo} to {hi} ({USAGE})"
            )),
        }
    };
    match (
        number("since", since, 0, MAX_SINCE),
        number("limit", limit, 1, MAX_LIMIT),
    ) {
        (Ok(s), Ok(l)) => Command::History(ch.to_owned(), s, l),
        (Err(e), _) | (_, Err(e)) => Command::Bad(e),
    }
}

/// Whether to go on reading.
enum Flow {
    Continue,
    Exit,
}

fn execute(client: &Client, style: &Style, cmd: Command) -> Flow {
    let ts = || {
        Value::from(
            crate::protocol::TimestampCache::new()
                .format(crate::protocol::time::unix_ms_now())
                .to_owned(),
        )
    };
    let (label, shown, type_name, fields) = match cmd {
        Command::Empty => return Flow::Continue,
        Command::Exit => return Flow::Exit,
        Command::Help => {
            println!("{HELP}");
            return Flow::Continue;
        }
        Command::Bad(msg) => {
            eprintln!("{msg}");
            return Flow::Continue;
        }
        Command::Ping => (
            "ping",
            "ping".to_owned(),
            "ping".to_owned(),
            json!({"timestamp": ts(), "client_info": client.config().client_info}),
        ),
        Command::Echo(t) => (
            "echo",
            format!("{t:?}"),
            "echo".into(),
            json!({"content": t, "timestamp": ts()}),
        ),
        Command::Broadcast(t) => (
            "broadcast",
            format!("{t:?}"),
            "broadcast".into(),
            json!({"content": t, "timestamp": ts()}),
        ),
        Command::Subscribe(ch) => (
            "subscribe",
            ch.clone(),
            "subscribe".into(),
            json!({"channel": ch}),
        ),
        Command::Unsubscribe(ch) => (
            "unsubscribe",
            ch.clone(),
            "unsubscribe".into(),
            json!({"channel": ch}),
        ),
        Command::Publish(ch, t) => (
            "publish",
            format!("{ch} {t:?}"),
            "publish".into(),
            json!({"channel": ch, "content": t, "timestamp": ts()}),
        ),
        Command::History(ch, since, limit) => {
            let mut f = json!({ "channel": ch });
            let mut shown = ch.clone();
            if let Some(s) = since {
                f["since"] = s.into();
                shown += &format!(" since {s}");
            }
            if let Some(l) = limit {
                f["limit"] = l.into();
                shown += &format!(" limit {l}");
            }
            ("history", shown, "history".into(), f)
        }
        Command::Stats => (
            "stats",
            "get_stats".into(),
            "get_stats".into(),
            json!({"timestamp": ts()}),
        ),
        Command::Custom(t, f) => {
            let shown = format!("{t} {}", Value::Object(f.clone()));
            ("custom", shown, t, Value::Object(f))
        }
        Command::Text(t) => (
            "message",
            format!("{t:?}"),
            "message".into(),
            json!({"content": t}),
        ),
    };
    if let Err(e) = exchange(client, style, label, &shown, &type_name, fields) {
        eprintln!("{} {e}", style.paint(RED, "error:"));
    }
    Flow::Continue
}

pub(crate) fn run(args: &AppOptions, style: &Style) -> Result<ExitCode, ClientError> {
    let client = connect(args, true)?;
    if let Some(line) = describe_compression(&client, args) {
        if !style.json {
            println!("{}{line}", style.label("compression"));
        }
    }
    let events = client.messages();
    if std::io::stdin().is_terminal() {
        run_terminal(&client, style, events)?;
    } else {
        run_piped(&client, style, events)?;
    }
    client.disconnect();
    Ok(ExitCode::SUCCESS)
}

fn print_event(style: &Style, ev: &Event) {
    match describe_event(style, ev) {
        Some(EventLine::Out(l)) => println!("{l}"),
        Some(EventLine::Err(l)) => eprintln!("{l}"),
        None => {}
    }
}

/// Through a pipe: plain lines in, plain lines out, until `/exit` or EOF.
/// Pushed messages are printed by a second thread as they arrive.
fn run_piped(client: &Client, style: &Style, events: Receiver<Event>) -> Result<(), ClientError> {
    let st = *style;
    std::thread::spawn(move || {
        for ev in events {
            print_event(&st, &ev);
        }
    });
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if let Flow::Exit = execute(client, style, parse_command(&line)) {
            break;
        }
    }
    Ok(())
}

/// On a terminal: rustyline with history; pushed messages go through its
/// external printer so they do not garble the line being typed.
fn run_terminal(
    client: &Client,
    style: &Style,
    events: Receiver<Event>,
) -> Result<(), ClientError> {
    use rustyline::error::ReadlineError;
    use rustyline::ExternalPrinter;

    let rl_err = |e: ReadlineError| ClientError::Io(std::io::Error::other(e.to_string()));
    let mut rl = rustyline::DefaultEditor::new().map_err(rl_err)?;
    let st = *style;
    match rl.create_external_printer() {
        Ok(mut printer) => {
            std::thread::spawn(move || {
                for ev in events {
                    if let Some(EventLine::Out(l) | EventLine::Err(l)) = describe_event(&st, &ev) {
                        if printer.print(l).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        Err(_) => {
            std::thread::spawn(move || {
                for ev in events {
                    print_event(&st, &ev);
                }
            });
        }
    }
    println!(
        "connected to {}; /help lists the commands, /exit leaves",
        client
            .server_addrs()
            .first()
            .map_or_else(|| "?".into(), |a| a.to_string())
    );
    let prompt = style.paint("1;36", "ringcast> ");
    loop {
        match rl.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                if let Flow::Exit = execute(client, style, parse_command(&line)) {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(rl_err(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse_command("/ping"), Command::Ping);
        assert_eq!(
            parse_command("/echo  hi there "),
            Command::Echo("hi there".into())
        );
        assert!(matches!(parse_command("/echo"), Command::Bad(_)));
        assert_eq!(
            parse_command("/broadcast yo"),
            Command::Broadcast("yo".into())
        );
        assert_eq!(
            parse_command("/sub news"),
            Command::Subscribe("news".into())
        );
        assert_eq!(
            parse_command("/unsub news"),
            Command::Unsubscribe("news".into())
        );
        assert_eq!(
            parse_command("/pub news  hello there "),
            Command::Publish("news".into(), "hello there".into())
        );
        assert!(matches!(parse_command("/sub"), Command::Bad(_)));
        assert!(matches!(parse_command("/sub a b"), Command::Bad(_)));
        assert!(matches!(parse_command("/pub news"), Command::Bad(_)));
        let long = format!("/sub {}", "x".repeat(257));
        assert!(matches!(parse_command(&long), Command::Bad(m) if m.contains("256")));
        assert_eq!(
            parse_command("/history prices"),
            Command::History("prices".into(), None, None)
        );
        assert_eq!(
            parse_command("/history prices 40 2"),
            Command::History("prices".into(), Some(40), Some(2))
        );
        for bad in [
            "/history",
            "/history prices x",
            "/history prices -1",
            "/history prices 1 0",
            "/history prices 1 1001",
            "/history prices 9007199254740992",
            "/history prices 1 2 3",
        ] {
            assert!(matches!(parse_command(bad), Command::Bad(_)), "{bad}");
        }
        assert_eq!(parse_command("/stats"), Command::Stats);
        assert_eq!(parse_command("/exit"), Command::Exit);
        assert_eq!(parse_command("/quit"), Command::Exit);
        assert_eq!(parse_command("/help"), Command::Help);
        assert_eq!(parse_command("   "), Command::Empty);
        assert_eq!(
            parse_command("hello world\r\n"),
            Command::Text("hello world".into())
        );
        assert_eq!(
            parse_command("/custom t"),
            Command::Custom("t".into(), Map::new())
        );
        let Command::Custom(t, f) = parse_command(r#"/custom order {"qty": 3}"#) else {
            panic!()
        };
        assert_eq!((t.as_str(), f.get("qty")), ("order", Some(&Value::from(3))));
        assert!(matches!(parse_command("/custom t [1]"), Command::Bad(_)));
        assert!(matches!(parse_command("/custom t {"), Command::Bad(_)));
        assert!(matches!(parse_command("/custom"), Command::Bad(_)));
        assert!(matches!(parse_command("/nope"), Command::Bad(_)));
    }
}
