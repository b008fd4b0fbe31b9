//! What `ringcast top` reads: `GET /v1/stats` and `GET /v1/connections`
//! over plain HTTP/1.1 with keep-alive (ureq, blocking; one agent reused).

use crate::protocol::ServerStats;
use serde::Deserialize;
use std::time::Duration;

/// Why a read failed, worded for the status line.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection, a timeout, a broken answer.
    #[error("cannot reach http://{addr}: {source}")]
    Transport {
        /// The `--http-addr`.
        addr: String,
        /// What ureq said.
        source: Box<ureq::Error>,
    },
    /// 401 or 403: the key is missing or wrong.
    #[error("{path}: refused ({status}): {message}; pass --api-key (or RINGCAST_API_KEY)")]
    Refused {
        /// The endpoint.
        path: &'static str,
        /// 401 or 403.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// Any other non-2xx answer.
    #[error("{path}: HTTP {status}: {message}")]
    Status {
        /// The endpoint.
        path: &'static str,
        /// The status code.
        status: u16,
        /// The server's error message, or the body's start.
        message: String,
    },
    /// A 200 whose body is not the JSON the API documents.
    #[error("{path}: unexpected answer: {source}")]
    Json {
        /// The endpoint.
        path: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// One row of `GET /v1/connections` (only the fields `top` shows).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Connection {
    /// The server's id for the connection.
    pub client_id: String,
    /// Authenticated user, when there is one.
    #[serde(default)]
    pub user: Option<String>,
    /// The shard serving it.
    #[serde(default)]
    pub shard: u64,
    /// Milliseconds since its last frame.
    #[serde(default)]
    pub idle_ms: u64,
    /// Subscriptions held (a number, or a list with `subs=1`).
    #[serde(default, deserialize_with = "count_or_list")]
    pub subscriptions: u64,
    /// Requests received.
    #[serde(default)]
    pub msgs_in: u64,
    /// Frames queued to it.
    #[serde(default)]
    pub msgs_out: u64,
    /// Bytes sent to it.
    #[serde(default)]
    pub bytes_out: u64,
    /// Bytes queued for it, not yet sent.
    #[serde(default)]
    pub pending_bytes: u64,
}

fn count_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Subs {
        Count(u64),
        List(Vec<serde_json::Value>),
    }
    Ok(match Subs::deserialize(d)? {
        Subs::Count(n) => n,
        Subs::List(l) => l.len() as u64,
    })
}

/// `GET /v1/connections`'s answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Connections {
    /// Open connections matching (all of them: `top` sends no filter).
    #[serde(default)]
    pub total: u64,
    /// The page asked for.
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// A blocking client for one server's HTTP API.
pub struct Api {
    agent: ureq::Agent,
    addr: String,
    auth: Option<String>,
}

/// Time an answer may take before the status line says the server is not
/// answering; under the refresh interval's default so a stuck server does
/// not freeze the screen for long.
const TIMEOUT: Duration = Duration::from_secs(2);

impl Api {
    /// A client for `http://addr`, sending `key` as a bearer token.
    pub fn new(addr: &str, key: Option<&str>) -> Api {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Api {
            agent,
            addr: addr.to_string(),
            auth: key.map(|k| format!("Bearer {k}")),
        }
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Result<ServerStats, ApiError> {
        self.get_json("/v1/stats", "/v1/stats")
    }

    /// The first `limit` open connections by `sort` (an API sort key),
    /// largest first.
    pub fn connections(&self, sort: &str, limit: usize) -> Result<Connections, ApiError> {
        let query = format!("/v1/connections?state=open&sort={sort}&order=desc&limit={limit}");
        self.get_json("/v1/connections", &query)
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
        path_and_query: &str,
    ) -> Result<T, ApiError> {
        let mut req = self
            .agent
            .get(format!("http://{}{path_and_query}", self.addr));
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let transport = |e: ureq::Error| ApiError::Transport {
            addr: self.addr.clone(),
            source: Box::new(e),
        };
        let mut res = req.call().map_err(transport)?;
        let status = res.status().as_u16();
        let body = res
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(transport)?;
        if !(200..300).contains(&status) {
            let message = error_message(&body);
            return Err(if status == 401 || status == 403 {
                ApiError::Refused {
                    path,
                    status,
                    message,
                }
            } else {
                ApiError::Status {
                    path,
                    status,
                    message,
                }
            });
        }
        serde_json::from_str(&body).map_err(|source| ApiError::Json { path, source })
    }
}

/// The message of an API error body (`{"error": {"code", "message"}}`), or
/// the body's first line.
fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Wrapper>(body) {
        Ok(w) => format!("{}: {}", w.error.code, w.error.message),
        Err(_) => body
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_row_reads_a_count_or_a_list_of_subscriptions() {
        let n: Connection =
            serde_json::from_str(r#"{"client_id":"a","subscriptions":3,"extra":1}"#).unwrap();
        assert_eq!(n.subscriptions, 3);
        let l: Connection =
            serde_json::from_str(r#"{"client_id":"a","subscriptions":["x","y"]}"#).unwrap();
        assert_eq!(l.subscriptions, 2);
    }

    #[test]
    fn api_errors_read_their_message() {
        let m = error_message(r#"{"error":{"code":"unauthorized","message":"no key"}}"#);
        assert_eq!(m, "unauthorized: no key");
        assert_eq!(error_message("plain text\nmore"), "plain text");
    }
}
