//! Arbitrary bytes into a TLS session of the server, in memory: as the
//! first flight of a new connection, after a real client's (possibly cut)
//! ClientHello, or after a full handshake as forged records or as
//! plaintext the real client encrypts. The first input byte picks which,
//! the second how the bytes are delivered (piece sizes, short sends, the
//! 1 s tick). Checks, beyond "no panic": after the handshake the server
//! sends only TLS the client accepts and whole, well-formed reply frames;
//! the session keeps going or ends cleanly (closed after EOF and the
//! deadlines, nothing held, not counted as connected or as a handshake in
//! progress, a failed handshake counted exactly once). The driver is
//! `ringcast::session::fuzzing::drive_tls` (the `fuzzing` feature), which
//! `cargo test` also runs with proptest inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::session::fuzzing::{drive_tls, TlsFuzzConfig};
use std::sync::OnceLock;

fn config() -> &'static TlsFuzzConfig {
    static CONFIG: OnceLock<TlsFuzzConfig> = OnceLock::new();
    CONFIG.get_or_init(TlsFuzzConfig::new)
}

fuzz_target!(|data: &[u8]| {
    drive_tls(config(), data);
});
