//! A fixed-size pool of [`Client`]s (the seed's "connection pooling").

use super::{Client, ClientConfig, ClientError, Result};
use crate::sync::{lock, wait_timeout};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

struct Slots {
    idle: Vec<Client>,
    /// Slots with no client (never made, dropped dead, or discarded).
    vacant: usize,
}

/// Up to `size` connected clients, lent out one at a time.
///
/// [`Pool::get`] lends an idle client (or waits for one to come back);
/// the [`PooledClient`] guard returns it on drop. A client found dead
/// (its connection lost and not back) is dropped and replaced by a fresh
/// connection, so callers always get a live one or an error. Every pooled
/// connection has answered a `ping` (or `auth`) before it is first lent.
pub struct Pool {
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    size: usize,
    slots: Mutex<Slots>,
    returned: Condvar,
    get_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.slots);
        f.debug_struct("Pool")
            .field("addrs", &self.addrs)
            .field("size", &self.size)
            .field("idle", &s.idle.len())
            .field("vacant", &s.vacant)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Connects `size` clients with `config`. Fails if any connect fails.
    /// [`Pool::get`] waits up to `config.request_timeout` for a free client.
    pub fn new(addr: impl ToSocketAddrs, size: usize, config: ClientConfig) -> Result<Pool> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if size == 0 {
            return Err(ClientError::InvalidArgument(
                "pool size must be at least 1".into(),
            ));
        }
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(Client::connect_addrs(addrs.clone(), config.clone(), true)?);
        }
        Ok(Pool {
            addrs,
            get_timeout: config.request_timeout,
            config,
            size,
            slots: Mutex::new(Slots { idle, vacant: 0 }),
            returned: Condvar::new(),
        })
    }

    /// Sets how long [`Pool::get`] waits for a client to come back.
    pub fn with_get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }

    /// The number of slots.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Clients idle in the pool now.
    pub fn idle(&self) -> usize {
        lock(&self.slots).idle.len()
    }

    /// Lends a live client, waiting up to the get timeout for one to be
    /// returned ([`ClientError::PoolExhausted`] after that). Dead clients
    /// are replaced by new connections (whose errors are returned).
    pub fn get(&self) -> Result<PooledClient<'_>> {
        let deadline = Instant::now() + self.get_timeout;
        let mut s = lock(&self.slots);
        loop {
            while let Some(c) = s.idle.pop() {
                if c.is_connected() {
                    return Ok(self.lend(c));
                }
                tracing::debug!("pool: dropping a dead client");
                s.vacant += 1;
                drop(s);
                drop(c); // joins its threads: not under the lock
                s = lock(&self.slots);
            }
            if s.vacant > 0 {
                s.vacant -= 1;
                drop(s);
                return match Client::connect_addrs(self.addrs.clone(), self.config.clone(), true) {
                    Ok(c) => Ok(self.lend(c)),
                    Err(e) => {
                        lock(&self.slots).vacant += 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::PoolExhausted(self.get_timeout));
            }
            s = wait_timeout(&self.returned, s, deadline - now);
        }
    }

    fn lend(&self, client: Client) -> PooledClient<'_> {
        PooledClient {
            pool: self,
            client: Some(client),
        }
    }

    fn give_back(&self, client: Client) {
        let mut s = lock(&self.slots);
        if client.is_connected() {
            s.idle.push(client);
        } else {
            s.vacant += 1;
            drop(s);
            drop(client);
        }
        self.returned.notify_one();
    }
}

/// A client lent by a [`Pool`]; derefs to [`Client`] and goes back on drop.
pub struct PooledClient<'p> {
    pool: &'p Pool,
    client: Option<Client>,
}

impl PooledClient<'_> {
    /// Closes this client instead of returning it; the pool makes a new
    /// one when next needed.
    pub fn discard(mut self) {
        if let Some(c) = self.client.take() {
            c.disconnect();
            lock(&self.pool.slots).vacant += 1;
            self.pool.returned.notify_one();
        }
    }
}

impl std::fmt::Debug for PooledClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PooledClient").field(&self.client).finish()
    }
}

impl Deref for PooledClient<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Only `discard` and `drop` take the client, and both consume self.
        self.client
            .as_ref()
            .expect("pooled client present until dropped")
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.pool.give_back(c);
        }
    }
}
