//! The deployment files under `deploy/`.
//!
//! - `ringcast.service` passes `systemd-analyze verify` with no warning,
//!   keeps its hardening (`systemd-analyze security` exposure at most 2.0),
//!   and its system call filter allows everything the seccomp profile lets
//!   ringcast itself make.
//! - `seccomp-ringcast.json` is a Docker profile that denies by default and
//!   allows io_uring, and it is sufficient for real: the profile is compiled
//!   to BPF (seccompiler), loaded on one thread, and a `ringcast server`
//!   spawned from that thread inherits it across fork and exec. The server
//!   then serves ping, echo, a 64 KiB echo, broadcast, get_stats and many
//!   connections, answers the container's health check (run under the same
//!   filter), and exits 0 on SIGTERM. Without `io_uring_setup` the same
//!   filter stops `--io-backend io-uring` at start with its io_uring message
//!   (the fallback to epoll under Docker's default profile is
//!   tests/io_fallback.rs).
//!
//! `systemd-analyze` (systemd 252 here) is needed; this machine and CI have
//! it at /usr/bin/systemd-analyze. systemd is not PID 1 here, so the unit is
//! checked but not started.

mod support;

use ringcast::client::Client;
use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::fake::next_broadcast;
use support::server::{local_args, sigterm, Confined};
use support::wait::wait_until;

const RINGCAST: &str = env!("CARGO_BIN_EXE_ringcast");
const UNIT_BINARY: &str = "/usr/local/bin/ringcast";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

/// A fresh directory under the target's temporary directory.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- systemd

fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze runs (it is at /usr/bin/systemd-analyze on this image)")
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy_file("ringcast.service")).unwrap()
}

/// Writes `text` as `ringcast.service` in its own directory, with the
/// installed binary path replaced by `binary` (`verify` checks that the
/// ExecStart binary exists and is executable, and /usr/local/bin/ringcast is
/// not installed here).
fn write_unit(name: &str, text: &str, binary: &str) -> PathBuf {
    assert!(
        text.contains(&format!("ExecStart={UNIT_BINARY} server ")),
        "the unit runs {UNIT_BINARY} server"
    );
    let path = scratch_dir(name).join("ringcast.service");
    std::fs::write(&path, text.replace(UNIT_BINARY, binary)).unwrap();
    path
}

/// `Key=value` settings of the unit, in order (comments and sections left out).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn unit_passes_systemd_analyze_verify_without_warnings() {
    let unit = write_unit("verify", &unit_text(), RINGCAST);
    let out = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // Unknown or misspelt keys are only warnings ("Unknown key ..., ignoring")
    // with exit status 0, so any line about the unit fails the test.
    assert!(
        !stderr.contains("ringcast.service"),
        "verify warned about the unit: {stderr}"
    );

    // The check bites: a missing binary fails, a misspelt key warns.
    let missing = scratch_dir("verify-missing").join("no-such-ringcast");
    let unit = write_unit("verify-bad", &unit_text(), missing.to_str().unwrap());
    let out = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "verify passed a unit whose binary is missing"
    );
    let typo = unit_text().replace("ProtectKernelLogs=yes", "ProtectKernelLog=yes");
    let unit = write_unit("verify-typo", &typo, RINGCAST);
    let out = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ProtectKernelLog"),
        "verify did not report a misspelt key"
    );
}

#[test]
fn unit_hardening_keeps_exposure_at_most_2() {
    // --threshold is on systemd's 0..100 scale: 20 is an exposure of 2.0
    // ("OK"); the unit scores 1.4 with systemd 252.
    let unit = write_unit("security", &unit_text(), RINGCAST);
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        unit.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    assert!(
        out.status.success(),
        "exposure above 2.0: {overall}\n{stdout}"
    );

    // The threshold bites: the same unit without its sandboxing is above it.
    let weakened: String = unit_text()
        .lines()
        .filter(|l| {
            ![
                "NoNewPrivileges=",
                "CapabilityBoundingSet=",
                "ProtectSystem=",
                "PrivateDevices=",
                "RestrictNamespaces=",
                "SystemCallFilter=",
                "DynamicUser=",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let unit = write_unit("security-weak", &weakened, RINGCAST);
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        unit.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "a unit without its hardening passed the threshold"
    );
}

/// Expands a systemd syscall group (`@system-service`, …) to syscall names.
fn expand_syscall_group(group: &str, out: &mut BTreeSet<String>) {
    let res = systemd_analyze(&["syscall-filter", group]);
    assert!(
        res.status.success(),
        "systemd-analyze syscall-filter {group}"
    );
    let text = String::from_utf8(res.stdout).unwrap();
    // First line: the group's name; then "# comment", names and @subgroups.
    for line in text.lines().skip(1).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            expand_syscall_group(line, out);
        } else {
            out.insert(line.to_string());
        }
    }
}

/// The syscalls the unit's SystemCallFilter= lines allow: the union of the
/// allow lists minus the union of the `~` deny lists.
fn unit_allowed_syscalls(settings: &[(String, String)]) -> BTreeSet<String> {
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    for value in setting(settings, "SystemCallFilter") {
        let (set, list) = match value.strip_prefix('~') {
            Some(rest) => (&mut deny, rest),
            None => (&mut allow, value),
        };
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                expand_syscall_group(item, set);
            } else {
                set.insert(item.to_string());
            }
        }
    }
    assert!(
        !allow.is_empty(),
        "the unit has an allow-list SystemCallFilter="
    );
    allow.difference(&deny).cloned().collect()
}

#[test]
fn unit_allows_what_ringcast_needs() {
    let settings = unit_settings(&unit_text());
    let allowed = unit_allowed_syscalls(&settings);
    // Named explicitly, whatever a systemd version puts in @system-service.
    let filter = setting(&settings, "SystemCallFilter").join(" ");
    for name in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.contains(name), "SystemCallFilter= names {name}");
    }
    // Everything the seccomp profile allows for ringcast itself (measured,
    // and proved sufficient by the tests below) passes the unit's filter.
    let profile = profile();
    let mut missing = Vec::new();
    for entry in profile["syscalls"].as_array().unwrap() {
        let is_ringcast = entry["comment"].as_str().unwrap().starts_with("ringcast:");
        if is_ringcast && entry["action"] == "SCMP_ACT_ALLOW" {
            for name in entry["names"].as_array().unwrap() {
                let name = name.as_str().unwrap();
                if !allowed.contains(name) {
                    missing.push(name.to_string());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the unit's SystemCallFilter denies {missing:?}"
    );

    // What the measurements showed the process needs from its sandbox.
    let families = setting(&settings, "RestrictAddressFamilies").join(" ");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        // AF_UNIX: the signal handler's socketpair.
        assert!(
            families.contains(family),
            "RestrictAddressFamilies has {family}"
        );
    }
    // The server reads /proc/sys/fs/nr_open, which ProcSubset=pid hides.
    assert!(setting(&settings, "ProcSubset").is_empty());
    assert_eq!(setting(&settings, "LimitNOFILE"), ["1048576"]);
    assert_eq!(setting(&settings, "CapabilityBoundingSet"), [""]);
    let memlock = setting(&settings, "LimitMEMLOCK");
    assert_eq!(memlock.len(), 1, "one LimitMEMLOCK=");
    let mib = memlock[0]
        .strip_suffix('M')
        .and_then(|m| m.parse::<u64>().ok());
    // ~0.55 MiB per shard measured (see the unit): 64 MiB is ~100 shards.
    assert!(
        memlock[0] == "infinity" || mib.is_some_and(|m| m >= 64),
        "LimitMEMLOCK={} is too low for a many-core machine",
        memlock[0]
    );
}

// ---------------------------------------------------------------- seccomp

fn profile() -> Value {
    let text = std::fs::read_to_string(deploy_file("seccomp-ringcast.json")).unwrap();
    serde_json::from_str(&text).expect("the seccomp profile is valid JSON")
}

fn entries(profile: &Value) -> &Vec<Value> {
    profile["syscalls"].as_array().expect("a syscalls array")
}

#[test]
fn seccomp_profile_denies_by_default_and_allows_io_uring() {
    let p = profile();
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(
        p["defaultErrnoRet"], 1,
        "EPERM, as Docker's default profile"
    );
    let arches = p["architectures"].as_array().unwrap();
    assert!(arches.contains(&json!("SCMP_ARCH_X86_64")));

    let mut seen = BTreeSet::new();
    for e in entries(&p) {
        let names = e["names"].as_array().expect("names");
        assert!(!names.is_empty());
        assert!(e["comment"].as_str().is_some_and(|c| !c.is_empty()), "{e}");
        let action = e["action"].as_str().unwrap();
        assert!(matches!(action, "SCMP_ACT_ALLOW" | "SCMP_ACT_ERRNO"), "{e}");
        for n in names {
            let n = n.as_str().unwrap();
            assert!(seen.insert(n.to_string()), "{n} is listed twice");
        }
    }
    for name in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        let e = entries(&p)
            .iter()
            .find(|e| e["names"].as_array().unwrap().contains(&json!(name)))
            .unwrap_or_else(|| panic!("{name} is in the profile"));
        assert_eq!(e["action"], "SCMP_ACT_ALLOW", "{name}");
        assert!(
            e.get("args").is_none(),
            "{name} is allowed whatever its arguments"
        );
    }
    // Never allowed: a way out of the sandbox, or not needed at all.
    for name in [
        "ptrace",
        "mount",
        "unshare",
        "setns",
        "bpf",
        "ioctl",
        "personality",
    ] {
        assert!(!seen.contains(name), "{name} must not be in the profile");
    }
    // Every name is a syscall of the architecture (seccompiler's table).
    filters(&p, &[], &[]);
}

/// Translates the Docker profile to seccompiler filters, leaving out the
/// syscalls in `without` and allowing those in `also`, in the order to load
/// them. Each non-ALLOW action (clone3's ENOSYS) gets a filter that answers
/// its entries with that action and allows everything else; the last filter
/// allows the ALLOW entries (and those of the others, so as not to override
/// them) and answers everything else with the default errno. The kernel runs
/// every filter and keeps the most restrictive answer, so this is what
/// libseccomp builds from the same profile in runc. The last filter is loaded
/// last because loading one needs seccomp(2), which it denies.
fn filters(profile: &Value, without: &[&str], also: &[&str]) -> Vec<BpfProgram> {
    let default_errno = profile["defaultErrnoRet"].as_u64().unwrap_or(1);
    let mut allow: Vec<Value> = also.iter().map(|n| json!({ "syscall": n })).collect();
    let mut others: Vec<(Value, Vec<Value>)> = Vec::new();
    for e in entries(profile) {
        let conditions: Vec<Value> = e
            .get("args")
            .and_then(Value::as_array)
            .map(|args| args.iter().map(condition).collect())
            .unwrap_or_default();
        let rules: Vec<Value> = e["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .filter(|n| !without.contains(n))
            .map(|n| {
                let mut rule = json!({ "syscall": n });
                if !conditions.is_empty() {
                    rule["args"] = Value::Array(conditions.clone());
                }
                rule
            })
            .collect();
        match e["action"].as_str().unwrap() {
            "SCMP_ACT_ALLOW" => allow.extend(rules),
            "SCMP_ACT_ERRNO" => {
                let action = json!({ "errno": e["errnoRet"].as_u64().unwrap_or(1) });
                allow.extend(rules.iter().cloned());
                match others.iter_mut().find(|(a, _)| *a == action) {
                    Some((_, r)) => r.extend(rules),
                    None => others.push((action, rules)),
                }
            }
            other => panic!("action {other} is not translated"),
        }
    }
    let mut json = Map::new();
    let mut order = Vec::new();
    for (i, (action, rules)) in others.into_iter().enumerate() {
        let name = format!("other{i}");
        json.insert(
            name.clone(),
            json!({ "mismatch_action": "allow", "match_action": action, "filter": rules }),
        );
        order.push(name);
    }
    json.insert(
        "allow".into(),
        json!({ "mismatch_action": { "errno": default_errno }, "match_action": "allow",
                "filter": allow }),
    );
    order.push("allow".into());
    let text = serde_json::to_vec(&Value::Object(json)).unwrap();
    let mut compiled = seccompiler::compile_from_json(text.as_slice(), TargetArch::x86_64)
        .expect("the profile compiles to BPF (every name is a known syscall)");
    order.iter().map(|n| compiled.remove(n).unwrap()).collect()
}

/// One Docker/OCI argument condition in seccompiler's terms.
fn condition(arg: &Value) -> Value {
    let value = arg["value"].as_u64().unwrap();
    let two = arg.get("valueTwo").and_then(Value::as_u64).unwrap_or(0);
    let (op, val) = match arg["op"].as_str().unwrap() {
        // (arg & value) == valueTwo
        "SCMP_CMP_MASKED_EQ" => (json!({ "masked_eq": value }), two),
        "SCMP_CMP_EQ" => (json!("eq"), value),
        "SCMP_CMP_NE" => (json!("ne"), value),
        "SCMP_CMP_LT" => (json!("lt"), value),
        "SCMP_CMP_LE" => (json!("le"), value),
        "SCMP_CMP_GT" => (json!("gt"), value),
        "SCMP_CMP_GE" => (json!("ge"), value),
        other => panic!("operator {other} is not translated"),
    };
    json!({ "index": arg["index"], "type": "qword", "op": op, "val": val })
}

/// Spawns `ringcast args...` under `profile` (less `without`).
fn spawn_confined<S: AsRef<str>>(profile: &Value, without: &[&str], args: &[S]) -> Confined {
    // The one syscall the spawning itself needs beyond the profile: dup2, with
    // which posix_spawn puts stderr in place in the child before its execve
    // (runc sets up stdio before it loads the filter).
    support::server::spawn_confined(filters(profile, without, &["dup2"]), args, |_| {})
}

#[test]
fn seccomp_profile_is_enough_to_run_and_stop_the_server() {
    let p = profile();
    // Two shards, pinned (the default): sched_setaffinity is exercised too.
    let mut server = spawn_confined(
        &p,
        &[],
        &[
            "server",
            "--addr",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log-format",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let addr = server.listening_addr();
    let metrics = server.metrics_addr();

    let a = Client::connect(addr).expect("connect");
    let b = Client::connect(addr).expect("connect");
    let b_events = b.messages();
    a.ping().expect("ping");
    assert_eq!(a.echo("hello").unwrap(), "hello");
    let big = "x".repeat(64 * 1024);
    assert_eq!(a.echo(&big).unwrap(), big);
    assert!(a.broadcast("to everyone").unwrap() >= 1);
    let got = next_broadcast(&b_events);
    assert_eq!(got.get("content"), Some(&json!("to everyone")));

    // Many connections at once, spread over both shards.
    let many: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // Accepts complete asynchronously: ask until the server has them all.
    let stats = RefCell::new(None);
    wait_until(
        Duration::from_secs(10),
        || format!("302 connected clients: {:?}", stats.borrow()),
        || {
            let s = a.get_stats().expect("get_stats");
            let all = s.connected_clients >= 302;
            *stats.borrow_mut() = Some(s);
            all
        },
    );
    let stats = stats.into_inner().unwrap();
    assert_eq!(stats.shards, 2);
    drop(many);

    // The container's HEALTHCHECK, under the same filter (docker exec runs
    // it inside the container's seccomp profile).
    let addr_s = addr.to_string();
    let health = spawn_confined(
        &p,
        &[],
        &[
            "client",
            "performance",
            "--count",
            "1",
            "--window",
            "1",
            "--timeout",
            "3",
            "--addr",
            &addr_s,
        ],
    );
    let (status, stderr) = health.wait(Duration::from_secs(15));
    assert!(
        status.success(),
        "health check failed under the profile: {stderr}"
    );

    // The metrics endpoint (its own thread, blocking accept4) answers too.
    let mut http = TcpStream::connect(metrics).expect("connect to /metrics");
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: ringcast\r\n\r\n")
        .unwrap();
    let mut scrape = String::new();
    http.read_to_string(&mut scrape).expect("read /metrics");
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("ringcast_messages_total{"), "{scrape}");

    a.disconnect();
    b.disconnect();
    sigterm(&server.child);
    let (status, stderr) = server.wait(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "server exit under the profile: {stderr}"
    );
    assert!(stderr.contains("ringcast stopped"), "{stderr}");
    // Nothing degraded quietly either: a denied sched_setaffinity or prlimit64
    // is only a warning ("could not pin shard", "could not raise RLIMIT_NOFILE").
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["level"] == "WARN" || v["level"] == "ERROR")
                .unwrap_or(true)
        })
        .collect();
    assert!(complaints.is_empty(), "under the profile: {complaints:#?}");
}

#[test]
fn seccomp_profile_without_io_uring_setup_stops_the_server_with_its_message() {
    let mut args = vec!["server".to_owned()];
    args.extend(local_args(1));
    args.extend(["--io-backend".to_owned(), "io-uring".to_owned()]);
    let server = spawn_confined(&profile(), &["io_uring_setup"], &args);
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("io_uring is disabled for this process")
            && stderr.contains("seccomp profile"),
        "the server names the cause: {stderr}"
    );
}
