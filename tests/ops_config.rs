//! `ringcast server` as an operator runs it: the config file, `RINGCAST_*`
//! variables and flags (and which wins), `--print-config`, clear errors for
//! bad files, and JSON log lines from a real server process on 127.0.0.1.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::server::{local_args, server_command, sigterm, wait_exit, LogLines, IO_BACKEND_ENV};
use support::wire::{frame_bytes, Client};

/// `ringcast server` for the configuration tests: no inherited `RINGCAST_*`
/// or `RUST_LOG` settings at all, not even the suite's I/O backend, since
/// they compare printed settings with the defaults.
fn config_cmd() -> Command {
    let mut c = server_command();
    c.env_remove(IO_BACKEND_ENV);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("ringcast runs")
}

/// `--print-config` output with extra args and variables; asserts success.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = config_cmd();
    c.args(args).arg("--print-config").envs(env.iter().copied());
    let out = run(c);
    assert!(
        out.status.success(),
        "--print-config {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse(toml_text: &str) -> BTreeMap<String, toml::Value> {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{toml_text}"))
}

/// A file in a fresh temporary directory (removed at process exit is not
/// needed: the directory is under the target's tmp and tiny).
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-ops-config-{}-{}",
        std::process::id(),
        name.replace('.', "-")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn defaults_printed_match_the_help_text() {
    let cfg = parse(&print_config(&[], &[]));
    assert_eq!(cfg["addr"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(cfg["pin"].as_bool(), Some(true));
    assert_eq!(cfg["log_format"].as_str(), Some("text"));
    assert_eq!(cfg["stats_interval_secs"].as_integer(), Some(60));
    assert!(!cfg.contains_key("auth_token"));

    // Every `[default: X]` in --help is the value --print-config reports, so
    // the help text cannot drift from the built-in defaults.
    let help = run({
        let mut c = config_cmd();
        c.arg("--help");
        c
    });
    let help = String::from_utf8(help.stdout).unwrap();
    let mut flag = None;
    let mut checked = 0;
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            flag = rest.split([' ', '<']).next().map(|f| f.replace('-', "_"));
        }
        if let (Some(f), Some(i)) = (&flag, t.find("[default: ")) {
            let shown = t[i + 10..].split(']').next().unwrap();
            let v = cfg
                .get(f)
                .unwrap_or_else(|| panic!("--help names {f}; not in config"));
            let printed = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(shown, printed, "default of --{f}: help vs --print-config");
            checked += 1;
        }
    }
    // Every key but `pin`, `plain` and `compression` (their flags are
    // --no-pin, --no-plain and --no-compression) and `namespace` (tables:
    // the file only) has a flag with a default.
    assert!(
        cfg.contains_key("pin") && cfg.contains_key("plain") && cfg.contains_key("compression")
    );
    assert_eq!(cfg["namespace"].as_array().map(Vec::len), Some(0));
    assert_eq!(checked, cfg.len() - 4, "defaults checked:\n{help}");
}

#[test]
fn flag_beats_variable_beats_file_beats_default() {
    let file = temp_file(
        "precedence.toml",
        "shards = 3\nmax_frame_bytes = 1000\nrate_limit = 5\nbacklog = 17\n",
    );
    let out = print_config(
        &["--config", file.to_str().unwrap(), "--rate-limit", "9"],
        &[
            ("RINGCAST_MAX_FRAME_BYTES", "2000"),
            ("RINGCAST_RATE_LIMIT", "7"),
        ],
    );
    let cfg = parse(&out);
    assert_eq!(cfg["shards"].as_integer(), Some(3), "file over default");
    assert_eq!(cfg["backlog"].as_integer(), Some(17), "file over default");
    assert_eq!(
        cfg["max_frame_bytes"].as_integer(),
        Some(2000),
        "variable over file"
    );
    assert_eq!(
        cfg["rate_limit"].as_integer(),
        Some(9),
        "flag over variable"
    );
    assert_eq!(
        cfg["idle_timeout_secs"].as_integer(),
        Some(300),
        "default where nothing is set"
    );
    // The config path itself may come from RINGCAST_CONFIG.
    let via_env = parse(&print_config(
        &[],
        &[("RINGCAST_CONFIG", file.to_str().unwrap())],
    ));
    assert_eq!(via_env["shards"].as_integer(), Some(3));
    // --no-pin beats `pin = true` in the file.
    let pinned = temp_file("pinned.toml", "pin = true\n");
    let cfg = parse(&print_config(
        &["--config", pinned.to_str().unwrap(), "--no-pin"],
        &[],
    ));
    assert_eq!(cfg["pin"].as_bool(), Some(false));
}

#[test]
fn print_config_round_trips() {
    let token = temp_file("token", "s3cret-token\n");
    let first = print_config(
        &[
            "--addr",
            "127.0.0.1:7000",
            "--shards",
            "2",
            "--no-pin",
            "--max-connections",
            "1234",
            "--max-connections-per-ip",
            "7",
            "--max-frame-bytes",
            "4096",
            "--idle-timeout-secs",
            "0",
            "--recv-buffers",
            "256",
            "--wake",
            "eventfd",
            "--log-format",
            "json",
            "--stats-interval-secs",
            "0",
            "--rate-limit",
            "100",
            "--metrics-addr",
            "127.0.0.1:9100",
            "--api-key-file",
            token.to_str().unwrap(),
            "--max-partial-bytes",
            "33554432",
            "--auth-token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !first.contains("s3cret"),
        "the token itself is never printed"
    );
    let saved = temp_file("saved.toml", &first);
    let second = print_config(&["--config", saved.to_str().unwrap()], &[]);
    assert_eq!(first, second, "printing the printed config changes nothing");
    let cfg = parse(&second);
    assert_eq!(cfg["wake"].as_str(), Some("eventfd"));
    // The former flag sets the renamed setting.
    assert_eq!(cfg["http_addr"].as_str(), Some("127.0.0.1:9100"));
    assert!(!cfg.contains_key("metrics_addr"));
    assert_eq!(cfg["api_key_file"].as_str(), token.to_str());
    assert_eq!(cfg["auth_token_file"].as_str(), token.to_str());
}

#[test]
fn a_literal_token_is_not_printed() {
    let out = print_config(&[], &[("RINGCAST_AUTH_TOKEN", "hunter2-secret")]);
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("# auth_token is set"), "{out}");
}

/// Runs `--print-config` expecting failure; returns stderr.
fn config_error(args: &[&str]) -> String {
    let mut c = config_cmd();
    c.args(args).arg("--print-config");
    let out = run(c);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(out.stdout.is_empty(), "nothing printed on error");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_config_is_a_clear_error() {
    let unknown = temp_file("unknown.toml", "shards = 2\nmax_frames = 1\n");
    let e = config_error(&["--config", unknown.to_str().unwrap()]);
    assert!(e.contains("unknown field `max_frames`"), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains(unknown.to_str().unwrap()), "names the file: {e}");

    let wrong_type = temp_file("type.toml", "shards = \"two\"\n");
    let e = config_error(&["--config", wrong_type.to_str().unwrap()]);
    assert!(e.contains("invalid type"), "{e}");

    let e = config_error(&["--config", "/nonexistent/ringcast.toml"]);
    assert!(
        e.contains("cannot read config file /nonexistent/ringcast.toml"),
        "{e}"
    );

    let not_pow2 = temp_file("pow2.toml", "recv_buffers = 300\n");
    let e = config_error(&["--config", not_pow2.to_str().unwrap()]);
    assert!(e.contains("power of two"), "{e}");

    let e = config_error(&["--auth-token", "a", "--auth-token-file", "/etc/hostname"]);
    assert!(e.contains("not both"), "{e}");

    let e = config_error(&["--auth-token-file", "/nonexistent/token"]);
    assert!(e.contains("cannot read auth token file"), "{e}");
}

#[test]
fn server_runs_from_a_config_file_and_logs_json() {
    let file = temp_file(
        "run.toml",
        "addr = \"127.0.0.1:0\"\nshards = 2\npin = false\nmax_frame_bytes = 200\n\
         log_format = \"json\"\nstats_interval_secs = 1\n",
    );
    let mut c = server_command();
    c.args(["--config", file.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut log = LogLines::new(child.stderr.take().unwrap());
    let mut wait_for = |msg: &str| {
        log.wait_for(msg, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no log line {msg:?} within 10 s"))
    };
    let listening = wait_for("ringcast listening");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["shards"], 2, "{listening}");
    let addr: SocketAddr = listening["fields"]["addr"]
        .as_str()
        .expect("addr field")
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "the real port is logged");

    let mut ok = Client::connect(addr);
    let pong = ok.request(&json!({"type": "ping", "id": 1}));
    assert_eq!(pong["type"], "pong");
    let client_id = pong["client_id"].as_str().unwrap().to_string();

    // max_frame_bytes = 200 from the file: a 300-byte frame is refused.
    let mut big = Client::connect(addr);
    let payload = format!(r#"{{"type":"echo","content":"{}"}}"#, "x".repeat(270));
    big.send_raw(&frame_bytes(payload.as_bytes()));
    big.expect_error("frame_too_large");
    big.read_until_closed(Duration::from_secs(5));

    let warn = wait_for("closing connection: frame length exceeds");
    assert_eq!(warn["level"], "WARN", "{warn}");
    assert_eq!(warn["fields"]["code"], "frame_too_large");
    assert!(warn["fields"]["client_id"].is_string(), "{warn}");

    let stats = wait_for("stats");
    assert_eq!(stats["level"], "INFO");
    for k in [
        "connected",
        "total_connections",
        "total_messages",
        "messages_per_second",
        "bytes_received",
        "bytes_sent",
        "protocol_errors",
        "rss_bytes",
    ] {
        assert!(stats["fields"][k].is_u64(), "stats line lacks {k}: {stats}");
    }
    assert!(stats["fields"]["total_messages"].as_u64().unwrap() >= 1);
    assert!(stats["fields"]["protocol_errors"].as_u64().unwrap() >= 1);
    drop(ok);

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    // Every line the server wrote is JSON.
    let lines = log.finish(Duration::from_secs(5));
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let has = |level: &str, msg: &str, id: Option<&str>| {
        parsed.iter().any(|v| {
            v["level"] == level
                && v["fields"]["message"] == msg
                && id.is_none_or(|id| v["fields"]["client_id"] == id)
        })
    };
    assert!(has("DEBUG", "connection opened", Some(&client_id)));
    assert!(has("DEBUG", "connection closed", Some(&client_id)));
    assert!(has("INFO", "ringcast stopped", None));
}

#[test]
fn the_example_config_is_valid_and_names_every_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ringcast.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let cfg = parse(&print_config(&["--config", example], &[]));
    assert_eq!(cfg["addr"].as_str(), Some("0.0.0.0:9999"));
    // Uncommenting every line is a valid file too (all defaults spelled out).
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .filter(|l| !l.starts_with("auth_token = ") && !l.starts_with("jwt_secret = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let keys: Vec<&str> = uncommented
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .filter(|k| !k.starts_with('#'))
        .collect();
    let full = temp_file("example-uncommented.toml", &uncommented);
    let token = temp_file("token-for-example", "t\n");
    let full_text = std::fs::read_to_string(&full)
        .unwrap()
        .replace("/etc/ringcast/token", token.to_str().unwrap())
        .replace("/etc/ringcast/api-key", token.to_str().unwrap());
    std::fs::write(&full, full_text).unwrap();
    let all = parse(&print_config(&["--config", full.to_str().unwrap()], &[]));
    // Every key the server knows is documented in the example.
    for k in all.keys() {
        assert!(keys.contains(&k.as_str()), "deploy/ringcast.toml lacks {k}");
    }
    assert!(
        text.contains("#auth_token = "),
        "the literal token key is documented"
    );
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let mut c = server_command();
    c.args(local_args(1))
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut log = LogLines::new(child.stderr.take().unwrap());
    let line = log.wait_for_text("ringcast listening", Duration::from_secs(10));
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let line = line.expect("a text start-up line");
    assert!(line.contains(" INFO "), "{line}");
    for l in log.finish(Duration::from_secs(5)) {
        assert!(
            !l.contains('\u{1b}'),
            "escape code in a piped log line: {l:?}"
        );
    }
    assert!(status.is_some_and(|s| s.success()));
}

#[test]
fn token_and_token_file_are_one_setting() {
    // A variable with the token replaces a token file named in the file.
    let file = temp_file("tokfile.toml", "auth_token_file = \"/nonexistent/token\"\n");
    let out = print_config(
        &["--config", file.to_str().unwrap()],
        &[("RINGCAST_AUTH_TOKEN", "from-env")],
    );
    assert!(out.contains("# auth_token is set"), "{out}");
    assert!(!out.contains("auth_token_file"), "{out}");
    // A flag naming a token file replaces a token in the file.
    let token = temp_file("tok", "t0k\n");
    let file = temp_file("tok.toml", "auth_token = \"file-secret\"\n");
    let cfg = parse(&print_config(
        &[
            "--config",
            file.to_str().unwrap(),
            "--auth-token-file",
            token.to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(cfg["auth_token_file"].as_str(), token.to_str());
}

#[test]
fn config_errors_do_not_echo_secrets() {
    let misspelt = temp_file("misspelt.toml", "shards = 1\nauth-token = \"hunter2\"\n");
    let e = config_error(&["--config", misspelt.to_str().unwrap()]);
    assert!(!e.contains("hunter2"), "{e}");
    assert!(e.contains("line 2") && e.contains("unknown field"), "{e}");
    let wrong_type = temp_file("wrongtype.toml", "auth_token = 8675309\n");
    let e = config_error(&["--config", wrong_type.to_str().unwrap()]);
    assert!(!e.contains("8675309"), "{e}");
    assert!(e.contains("line 1") && e.contains("invalid type"), "{e}");
}

#[test]
fn out_of_range_values_and_no_pin_variable() {
    let huge = temp_file("huge.toml", "idle_timeout_secs = 99999999999\n");
    let e = config_error(&["--config", huge.to_str().unwrap()]);
    assert!(e.contains("at most 4294967295"), "{e}");
    let cfg = parse(&print_config(&[], &[("RINGCAST_NO_PIN", "1")]));
    assert_eq!(cfg["pin"].as_bool(), Some(false));
}

#[test]
fn io_backend_from_flag_variable_and_file() {
    let key = |cfg: &str| parse(cfg)["io_backend"].as_str().map(str::to_owned);
    assert_eq!(key(&print_config(&[], &[])).as_deref(), Some("auto"));
    // Each source alone.
    let file = temp_file("io-backend.toml", "io_backend = \"epoll\"\n");
    let file_arg = ["--config", file.to_str().unwrap()];
    assert_eq!(key(&print_config(&file_arg, &[])).as_deref(), Some("epoll"));
    let env = [("RINGCAST_IO_BACKEND", "epoll")];
    assert_eq!(key(&print_config(&[], &env)).as_deref(), Some("epoll"));
    let flag = ["--io-backend", "epoll"];
    assert_eq!(key(&print_config(&flag, &[])).as_deref(), Some("epoll"));
    // A flag beats a variable, which beats the file.
    let env = [("RINGCAST_IO_BACKEND", "io-uring")];
    assert_eq!(
        key(&print_config(&file_arg, &env)).as_deref(),
        Some("io-uring"),
        "variable over file"
    );
    let args = ["--config", file.to_str().unwrap(), "--io-backend", "auto"];
    assert_eq!(
        key(&print_config(&args, &env)).as_deref(),
        Some("auto"),
        "flag over variable"
    );

    // A bad value names the accepted ones, from a flag, a variable or the file.
    let mut c = config_cmd();
    c.args(["--io-backend", "kqueue", "--print-config"]);
    let out = run(c);
    assert!(!out.status.success(), "--io-backend kqueue was accepted");
    assert!(out.stdout.is_empty());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("kqueue") && e.contains("--io-backend"), "{e}");
    assert!(e.contains("auto, io-uring, epoll"), "names the values: {e}");

    let mut c = config_cmd();
    c.arg("--print-config").env("RINGCAST_IO_BACKEND", "kqueue");
    let out = run(c);
    assert!(
        !out.status.success(),
        "RINGCAST_IO_BACKEND=kqueue was accepted"
    );
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("auto, io-uring, epoll"), "names the values: {e}");

    let bad = temp_file("io-backend-bad.toml", "io_backend = \"kqueue\"\n");
    let e = config_error(&["--config", bad.to_str().unwrap()]);
    assert!(e.contains("kqueue") && e.contains("line 1"), "{e}");
    assert!(
        e.contains("`auto`, `io-uring`, `epoll`"),
        "names the values: {e}"
    );
}

#[test]
fn metrics_addr_is_a_former_name_of_http_addr() {
    let want = Some("127.0.0.1:9101");
    // The former flag, the former variable, the former file key.
    let by_flag = parse(&print_config(&["--metrics-addr", "127.0.0.1:9101"], &[]));
    assert_eq!(by_flag["http_addr"].as_str(), want);
    let by_env = parse(&print_config(
        &[],
        &[("RINGCAST_METRICS_ADDR", "127.0.0.1:9101")],
    ));
    assert_eq!(by_env["http_addr"].as_str(), want);
    let file = temp_file("former-key.toml", "metrics_addr = \"127.0.0.1:9101\"\n");
    let by_file = parse(&print_config(&["--config", file.to_str().unwrap()], &[]));
    assert_eq!(by_file["http_addr"].as_str(), want);
    // The new name wins over the former variable; both keys in one file is an error.
    let both = parse(&print_config(
        &["--http-addr", "127.0.0.1:9102"],
        &[("RINGCAST_METRICS_ADDR", "127.0.0.1:9101")],
    ));
    assert_eq!(both["http_addr"].as_str(), Some("127.0.0.1:9102"));
    let twice = temp_file(
        "both-keys.toml",
        "metrics_addr = \"127.0.0.1:9101\"\nhttp_addr = \"127.0.0.1:9102\"\n",
    );
    let e = config_error(&["--config", twice.to_str().unwrap()]);
    assert!(e.contains("former name"), "{e}");
}
