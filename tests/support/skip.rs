//! A test that cannot run says so where nobody misses it.
//!
//! libtest has no "skipped" outcome: a test that returns early reads `ok`,
//! and what it prints is swallowed unless it fails. So a skip is written to
//! the file named by `RINGCAST_SKIP_LOG` as well (scripts/test.sh sets it
//! and prints the file at the end of the run, in plain sight), and with
//! `RINGCAST_REQUIRE_ALL=1` a skip fails the test instead.

use std::io::Write;

/// The variable naming the skip log.
pub const SKIP_LOG_ENV: &str = "RINGCAST_SKIP_LOG";
/// With this set to 1, a test that would skip fails.
pub const REQUIRE_ALL_ENV: &str = "RINGCAST_REQUIRE_ALL";

/// Records that `test` is skipped and why. Panics instead under
/// `RINGCAST_REQUIRE_ALL=1`.
pub fn skip(test: &str, why: &str) {
    if std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run: {why} ({REQUIRE_ALL_ENV}=1 makes this a failure)");
    }
    eprintln!("{test}: SKIPPED: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}
