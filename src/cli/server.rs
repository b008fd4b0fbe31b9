//! `ringcast server`'s settings: flags, `RINGCAST_*` variables and the
//! config file, merged; `--print-config`. Running the process (logging,
//! signals, reload, the periodic stats line) is src/cli/lifecycle.rs.
//!
//! The settings are the rows of the table in src/server/config.rs
//! (`server_settings!`), plus three rows below that are not
//! [`ServerConfig`] fields (`auth_token_file`, `log_format`,
//! `stats_interval_secs`). Each has one name used three ways: the flag
//! `--max-frame-bytes`, the variable `RINGCAST_MAX_FRAME_BYTES` and the
//! config-file key `max_frame_bytes`. A flag beats a variable (clap sees to
//! that), a variable beats the file, the file beats the built-in default
//! (shown in `--help`).
//!
//! A [`Layer`] holds what one source gives, every setting optional: the
//! flags and variables are one layer, the file another, and
//! [`ServerArgs::resolve`] stacks them over the defaults into
//! [`Settings`]. Handled here by hand, because they are not plain
//! settings: `--no-pin` (the flag for the file key `pin`), `auth_token` and
//! `auth_token_file` (one setting given two ways), `--config` and
//! `--print-config` (not settings at all).

use crate::server::config::*; // every type the settings table names
use clap::builder::ValueParser;
use clap::{Arg, ArgMatches, Command};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Arguments of `ringcast server`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ServerArgs {
    /// Read settings from this TOML file; flags and RINGCAST_* variables
    /// override it. See deploy/ringcast.toml.
    #[arg(long, env = "RINGCAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Do not pin shard threads to cores (file key: `pin = false`).
    #[arg(long, env = "RINGCAST_NO_PIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_pin: bool,
    /// Do not serve plain TCP on --addr, only TLS on --tls-addr (file key:
    /// `plain = false`).
    #[arg(long, env = "RINGCAST_NO_PLAIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_plain: bool,
    /// Do not offer compression to clients that ask for it in `hello`
    /// (file key: `compression = false`).
    #[arg(long, env = "RINGCAST_NO_COMPRESSION", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_compression: bool,
    /// Every setting, as given by flags and variables.
    #[command(flatten)]
    pub given: Layer,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Default seconds between periodic stats lines.
pub const DEFAULT_STATS_INTERVAL_SECS: u64 = 60;

/// Declares [`Layer`] (with its flags) and [`Settings`] from the rows of the
/// settings table; the rows in `{ … }` come first in the invocation and
/// last in both structs, and are fields of `Settings` itself.
macro_rules! layer {
    (
        {
            $(
                $(#[doc = $pdoc:literal])*
                $pname:ident: $pty:ty = $pdefault:expr
            ),* $(,)?
        }
        $(
            $(#[doc = $doc:literal])*
            $([$($mark:ident),*])?
            $name:ident: $ty:ty = $default:expr
        ),* $(,)?
    ) => {
        /// The settings one source gives (the flags and variables, or the
        /// config file), every one optional: what a source leaves out falls
        /// through to the next. Also the config file's schema: its keys are
        /// these fields.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[doc = $doc])* pub $name: Option<<$ty as Given>::Value>, )*
            $( $(#[doc = $pdoc])* pub $pname: Option<<$pty as Given>::Value>, )*
        }

        /// The configuration a server process runs with, every source merged.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            /// What the shards get.
            pub server: ServerConfig,
            $( $(#[doc = $pdoc])* pub $pname: $pty, )*
        }

        /// Each setting's name, help and marks.
        #[allow(non_upper_case_globals)]
        mod rows {
            use super::{Mark, Row};
            $(
                pub const $name: Row = Row {
                    key: stringify!($name),
                    doc: &[$($doc),*],
                    marks: &[$($(Mark::$mark),*)?],
                };
            )*
            $(
                pub const $pname: Row = Row {
                    key: stringify!($pname),
                    doc: &[$($pdoc),*],
                    marks: &[],
                };
            )*
        }

        impl Layer {
            /// Takes what this layer lacks from `lower`.
            pub fn fill_from(&mut self, lower: Layer) {
                $( if self.$name.is_none() { self.$name = lower.$name; } )*
                $( if self.$pname.is_none() { self.$pname = lower.$pname; } )*
            }

            /// These settings over the built-in defaults (not checked yet).
            pub fn over_defaults(self) -> Settings {
                let mut server = ServerConfig::default();
                $( if let Some(v) = self.$name { server.$name = Given::from_given(v); } )*
                Settings {
                    server,
                    $( $pname: match self.$pname {
                        Some(v) => Given::from_given(v),
                        None => $pdefault,
                    }, )*
                }
            }

            /// Every setting of `s` as given (an optional one that is off is
            /// absent).
            pub fn of(s: &Settings) -> Layer {
                Layer {
                    $( $name: s.server.$name.given(), )*
                    $( $pname: s.$pname.given(), )*
                }
            }

            /// Appends the settings given, as config-file lines in table
            /// order (`[Secret]` ones left out).
            fn write_toml(&self, out: &mut String) {
                $( write_line(out, &rows::$name, self.$name.as_ref()); )*
                $( write_line(out, &rows::$pname, self.$pname.as_ref()); )*
            }
        }

        impl clap::FromArgMatches for Layer {
            fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
                Ok(Layer {
                    $( $name: flag_value(m, &rows::$name), )*
                    $( $pname: flag_value(m, &rows::$pname), )*
                })
            }

            fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
                let mut given = Self::from_arg_matches(m)?;
                given.fill_from(std::mem::take(self));
                *self = given;
                Ok(())
            }
        }

        impl clap::Args for Layer {
            fn augment_args(mut cmd: Command) -> Command {
                let defaults = Layer::of(&Layer::default().over_defaults());
                $(
                    cmd = add_flag(
                        cmd,
                        &rows::$name,
                        clap::value_parser!(<$ty as Given>::Value).into(),
                        defaults.$name.as_ref().map(toml_value),
                    );
                )*
                $(
                    cmd = add_flag(
                        cmd,
                        &rows::$pname,
                        clap::value_parser!(<$pty as Given>::Value).into(),
                        defaults.$pname.as_ref().map(toml_value),
                    );
                )*
                cmd
            }

            fn augment_args_for_update(cmd: Command) -> Command {
                Self::augment_args(cmd)
            }
        }
    };
}
// The settings: the table's rows, and after them these, which are the
// process's rather than the shards' (they live in `Settings`, not in
// `ServerConfig`).
server_settings!(layer! {
    /// Read the auth token from this file (trailing newline ignored); for
    /// systemd credentials and container secrets.
    auth_token_file: Option<PathBuf> = None,
    /// Read the JWT HMAC secret from this file (trailing newline ignored).
    jwt_secret_file: Option<PathBuf> = None,
    /// Read the HTTP API key from this file (trailing newline ignored).
    api_key_file: Option<PathBuf> = None,
    /// Log format: text, or json (one object per line).
    log_format: LogFormat = LogFormat::Text,
    /// Seconds between info log lines with the headline stats; 0 = off.
    stats_interval_secs: u64 = DEFAULT_STATS_INTERVAL_SECS,
});

/// Former names of settings, still accepted as flag, variable and file
/// key: (setting, former name).
const ALIASES: &[(&str, &str)] = &[("http_addr", "metrics_addr")];

/// The former name of a setting, if it has one.
fn alias_of(key: &str) -> Option<&'static str> {
    ALIASES.iter().find(|(k, _)| *k == key).map(|(_, a)| *a)
}

/// One setting as the command line sees it.
#[derive(Debug)]
struct Row {
    /// The config-file key and field name; the flag and variable derive
    /// from it.
    key: &'static str,
    /// Its documentation, a line per entry; the first paragraph is its help.
    doc: &'static [&'static str],
    /// Exceptions (see [`Mark`]).
    marks: &'static [Mark],
}

/// What a row of the settings table may be marked with, in brackets
/// before its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// A file key with no flag or variable of its own (`pin`, which the
    /// flag `--no-pin` turns off).
    NoFlag,
    /// Never printed by `--print-config`; the variable's value is hidden in
    /// `--help` (`auth_token`).
    Secret,
}

impl Row {
    fn has(&self, mark: Mark) -> bool {
        self.marks.contains(&mark)
    }

    /// `--max-frame-bytes`'s name.
    fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    /// `RINGCAST_MAX_FRAME_BYTES`.
    fn variable(&self) -> String {
        format!("RINGCAST_{}", self.key.to_ascii_uppercase())
    }

    /// The first paragraph of the documentation, on one line, without its
    /// final full stop.
    fn help(&self) -> String {
        let lines: Vec<&str> = self
            .doc
            .iter()
            .map(|l| l.trim())
            .take_while(|l| !l.is_empty())
            .collect();
        let help = lines.join(" ");
        help.strip_suffix('.').unwrap_or(&help).to_string()
    }
}

/// Registers a setting's flag and variable, its help ending in its
/// default as `--print-config` prints it.
fn add_flag(cmd: Command, row: &Row, parser: ValueParser, default: Option<toml::Value>) -> Command {
    if row.has(Mark::NoFlag) {
        return cmd;
    }
    let mut help = row.help();
    if let Some(d) = default {
        let shown = match d {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        help.push_str(&format!(" [default: {shown}]"));
    }
    let mut arg = Arg::new(row.key)
        .long(row.flag())
        .env(row.variable())
        .hide_env_values(row.has(Mark::Secret))
        .value_name(row.key.to_ascii_uppercase())
        .value_parser(parser)
        .help(help);
    if let Some(old) = alias_of(row.key) {
        // Its variable is read in `ServerArgs::resolve` (clap takes one).
        arg = arg.alias(old.replace('_', "-"));
    }
    cmd.arg(arg)
}

/// The value a setting's flag or variable gave, if any.
fn flag_value<T: Clone + Send + Sync + 'static>(m: &ArgMatches, row: &Row) -> Option<T> {
    if row.has(Mark::NoFlag) {
        return None;
    }
    m.get_one::<T>(row.key).cloned()
}

/// A setting's value as TOML.
fn toml_value<T: Serialize>(v: &T) -> toml::Value {
    toml::Value::try_from(v).expect("settings serialise as TOML")
}

/// Appends `key = value` for a setting that has a value and is no secret.
fn write_line<T: Serialize>(out: &mut String, row: &Row, value: Option<&T>) {
    if let Some(v) = value {
        if !row.has(Mark::Secret) {
            out.push_str(&format!("{} = {}\n", row.key, toml_value(v)));
        }
    }
}

/// How a setting of type `Self` is given by a flag, variable or file key:
/// as itself, or, for an optional setting (`Option<T>`: off unless set), as
/// a `T`. A setting of a new type needs its type added to the list below.
pub trait Given: Sized {
    /// What the flag, variable or key holds.
    type Value: Clone + Send + Sync + Serialize + 'static;
    /// The setting, from what was given.
    fn from_given(v: Self::Value) -> Self;
    /// What would give this setting (None for an optional one that is off).
    fn given(&self) -> Option<Self::Value>;
}

impl<T: Clone + Send + Sync + Serialize + 'static> Given for Option<T> {
    type Value = T;
    fn from_given(v: T) -> Self {
        Some(v)
    }
    fn given(&self) -> Option<T> {
        self.clone()
    }
}

macro_rules! given_as_itself {
    ($($t:ty),* $(,)?) => {$(
        impl Given for $t {
            type Value = $t;
            fn from_given(v: $t) -> Self {
                v
            }
            fn given(&self) -> Option<$t> {
                Some(self.clone())
            }
        }
    )*};
}

given_as_itself!(
    bool,
    u16,
    u32,
    u64,
    i32,
    usize,
    String,
    SocketAddr,
    PathBuf,
    WakeMode,
    IoBackend,
    LogFormat,
    crate::tls::TlsVersion,
    Namespaces,
);

impl Layer {
    /// Reads a config file: TOML whose keys are the flag names with `_`.
    /// Unknown keys and wrong types are errors naming the line.
    pub fn from_file(path: &Path) -> Result<Layer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses config-file text. Errors quote the offending line, except a
    /// line that may hold a secret (it mentions `token` or `secret`), which is
    /// named by number only.
    pub fn from_toml(text: &str) -> Result<Layer, String> {
        let former = ALIASES.iter().find(|(_, old)| {
            text.lines().any(|l| {
                l.trim_start()
                    .strip_prefix(old)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
        });
        if let Some((key, old)) = former {
            // A former key: renamed in the parsed table (line numbers in
            // errors are lost for this file, the names are not).
            let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
            if table.contains_key(*key) {
                return Err(format!(
                    "{old} is the former name of {key}: give one of them"
                ));
            }
            if let Some(v) = table.remove(*old) {
                table.insert((*key).to_string(), v);
            }
            return toml::Value::Table(table)
                .try_into::<Layer>()
                .map_err(|e| e.to_string());
        }
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line_no = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let line = line_no.and_then(|n| text.lines().nth(n - 1)).unwrap_or("");
            let lower = line.to_ascii_lowercase();
            if lower.contains("token") || lower.contains("secret") {
                // Neither the line nor the value (which the message may quote).
                let mut msg = e.message().to_string();
                if let Some((_, value)) = line.split_once('=') {
                    for v in [value.trim(), value.trim().trim_matches(['"', '\''])] {
                        if !v.is_empty() {
                            msg = msg.replace(v, "<redacted>");
                        }
                    }
                }
                format!(
                    "line {}: {msg} (line not shown: it may hold a secret)",
                    line_no.unwrap_or(0)
                )
            } else {
                e.to_string().trim_end().to_string()
            }
        })
    }
}

impl ServerArgs {
    /// Merges the flags and variables (already in `self`) over the config
    /// file (if `--config` names one) over the defaults, and checks the
    /// result.
    pub fn resolve(self) -> Result<Settings, String> {
        let mut given = self.given;
        if self.no_pin {
            given.pin = Some(false);
        }
        if self.no_plain {
            given.plain = Some(false);
        }
        if self.no_compression {
            given.compression = Some(false);
        }
        if given.http_addr.is_none() {
            // The former name's variable (its flag is a clap alias).
            if let Ok(v) = std::env::var("RINGCAST_METRICS_ADDR") {
                given.http_addr = Some(v.parse().map_err(|e| {
                    format!("RINGCAST_METRICS_ADDR: {e} (want an address such as 127.0.0.1:9100)")
                })?);
            }
        }
        if let Some(path) = &self.config {
            let mut file = Layer::from_file(path)?;
            // The token and the token file are one setting: either given
            // by a flag or variable replaces both from the file.
            if given.auth_token.is_some() || given.auth_token_file.is_some() {
                file.auth_token = None;
                file.auth_token_file = None;
            }
            if given.jwt_secret.is_some() || given.jwt_secret_file.is_some() {
                file.jwt_secret = None;
                file.jwt_secret_file = None;
            }
            if given.api_key.is_some() || given.api_key_file.is_some() {
                file.api_key = None;
                file.api_key_file = None;
            }
            given.fill_from(file);
        }
        let mut settings = given.over_defaults();
        settings.server.auth_token =
            match (settings.server.auth_token.take(), &settings.auth_token_file) {
                (Some(_), Some(_)) => {
                    return Err("give the auth token or a file holding it, not both".into())
                }
                (Some(t), None) => Some(t),
                (None, Some(path)) => Some(read_secret(path, "auth token")?),
                (None, None) => None,
            };
        settings.server.jwt_secret =
            match (settings.server.jwt_secret.take(), &settings.jwt_secret_file) {
                (Some(_), Some(_)) => {
                    return Err("give the JWT secret or a file holding it, not both".into())
                }
                (Some(t), None) => Some(t),
                (None, Some(path)) => Some(read_secret(path, "JWT secret")?),
                (None, None) => None,
            };
        if settings.server.auth_token.as_deref() == Some("") {
            return Err("the auth token is empty".into());
        }
        settings.server.api_key = match (settings.server.api_key.take(), &settings.api_key_file) {
            (Some(_), Some(_)) => {
                return Err("give the API key or a file holding it, not both".into())
            }
            (Some(k), None) => Some(k),
            (None, Some(path)) => Some(read_secret(path, "API key")?),
            (None, None) => None,
        };
        settings.server.validate()?;
        Ok(settings)
    }
}

/// Reads a secret (`what`) from a file, without its trailing line break.
fn read_secret(path: &Path, what: &str) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))?;
    Ok(t.trim_end_matches(['\n', '\r']).to_string())
}

impl Settings {
    /// The configuration as a config file that reproduces it. An auth token
    /// given literally is not printed (a comment says one is set); one read
    /// from a file is printed as that file's path. The backplane URL is not
    /// printed either (a comment says one is set).
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# ringcast server: effective configuration (defaults < file < RINGCAST_* < flags)\n",
        );
        Layer::of(self).write_toml(&mut out);
        if self.server.auth_token.is_some() && self.auth_token_file.is_none() {
            out.push_str("# auth_token is set but not printed\n");
        }
        if self.server.jwt_secret.is_some() && self.jwt_secret_file.is_none() {
            out.push_str("# jwt_secret is set but not printed\n");
        }
        if self.server.api_key.is_some() && self.api_key_file.is_none() {
            out.push_str("# api_key is set but not printed\n");
        }
        if self.server.backplane.is_some() {
            out.push_str("# backplane is set but not printed (its URL may hold a password)\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn command() -> Command {
        ServerArgs::augment_args(Command::new("server"))
    }

    fn parse(args: &[&str]) -> ServerArgs {
        let m = command()
            .try_get_matches_from(std::iter::once("server").chain(args.iter().copied()))
            .unwrap();
        ServerArgs::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn flags_and_variables_are_named_after_the_key() {
        let cmd = command();
        let arg = |id: &str| cmd.get_arguments().find(|a| a.get_id() == id);
        let frame = arg("max_frame_bytes").expect("a flag for max_frame_bytes");
        assert_eq!(frame.get_long(), Some("max-frame-bytes"));
        assert_eq!(
            frame.get_env().and_then(|e| e.to_str()),
            Some("RINGCAST_MAX_FRAME_BYTES")
        );
        assert!(arg("io_backend").is_some() && arg("log_format").is_some());
        // `pin` is a file key only (its flag is --no-pin).
        assert!(arg("pin").is_none());
        assert!(arg("no_pin").is_some());
        // The token's variable value is never shown in --help.
        assert!(arg("auth_token").unwrap().is_hide_env_values_set());
    }

    #[test]
    fn flags_fill_the_layer_and_pin_comes_from_no_pin() {
        let a = parse(&["--shards", "3", "--io-backend", "epoll", "--no-pin"]);
        assert_eq!(a.given.shards, Some(3));
        assert_eq!(a.given.io_backend, Some(IoBackend::Epoll));
        assert_eq!(a.given.pin, None);
        let s = a.resolve().unwrap();
        assert_eq!(s.server.shards, 3);
        assert_eq!(s.server.io_backend, IoBackend::Epoll);
        assert!(!s.server.pin);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn printed_settings_read_back_unchanged() {
        let mut s = ServerArgs::default().resolve().unwrap();
        assert_eq!(s.server, ServerConfig::default());
        s.server.wake = WakeMode::Eventfd;
        s.server.io_backend = IoBackend::IoUring;
        s.server.http_addr = Some("127.0.0.1:9100".parse().unwrap());
        s.server.pin = false;
        s.stats_interval_secs = 0;
        let text = s.to_toml();
        assert!(text.contains("io_backend = \"io-uring\"\n"), "{text}");
        let back = Layer::from_toml(&text).unwrap().over_defaults();
        assert_eq!(back, s);
    }
}
