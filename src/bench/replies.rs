//! What comes back: each reply frame classified from its first bytes, and
//! counted into the thread's [`Outcome`] (latency, responses, deliveries,
//! errors).

use super::plan::{Outcome, Role};
use super::requests::publish_time;
use crate::protocol::codec::Codec;
use crate::protocol::FrameDecoder;
use std::collections::VecDeque;

/// Largest frame the generator accepts (compressed, or decompressed),
/// on the ring and in its blocking set-up reads alike.
pub(super) const MAX_FRAME: usize = 64 << 20;

/// A decoder for a connection's replies: flagged frames are compressed
/// ones when a codec was negotiated.
pub(super) fn decoder_for(codec: Option<(Codec, usize)>) -> FrameDecoder {
    let mut d = FrameDecoder::new(MAX_FRAME);
    if codec.is_some() {
        d.accept_compressed();
    }
    d
}

/// What kind of frame a response is, from its first bytes (servers write
/// `type` first); anything else is parsed to be sure.
fn frame_type(payload: &[u8]) -> FrameKind {
    if payload.starts_with(br#"{"type":"broadcast_message""#)
        || payload.starts_with(br#"{"type":"channel_message""#)
    {
        return FrameKind::Broadcast;
    }
    if payload.starts_with(br#"{"type":"error""#) {
        return FrameKind::Error;
    }
    if payload.starts_with(br#"{"type":""#) {
        return FrameKind::Response;
    }
    // Not our layout: look properly.
    let v: Result<serde_json::Value, _> = serde_json::from_slice(payload);
    match v
        .as_ref()
        .ok()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("broadcast_message" | "channel_message") => FrameKind::Broadcast,
        Some("error") | None => FrameKind::Error,
        Some(_) => FrameKind::Response,
    }
}

/// Whether a payload is a broadcast or channel message (it answers no
/// request).
pub fn is_delivery(payload: &[u8]) -> bool {
    frame_type(payload) == FrameKind::Broadcast
}

#[derive(PartialEq, Eq)]
enum FrameKind {
    Response,
    Broadcast,
    Error,
}

/// Counts the frames of one receive into the thread's outcome.
pub(super) struct Tally<'a> {
    /// Where the counts go.
    pub(super) out: &'a mut Outcome,
    /// Whether this receive falls in the measured window.
    pub(super) measuring: bool,
    /// When it was received (ns on the run's clock).
    pub(super) now: u64,
}

impl Tally<'_> {
    /// A frame that could not be decompressed: an error, and (if a request
    /// is waiting) taken for its answer so the connection keeps going.
    /// Returns whether it answered one.
    pub(super) fn bad_frame(&mut self, sent: &mut VecDeque<u64>, why: &str) -> bool {
        self.out.error(|| format!("bad compressed frame: {why}"));
        sent.pop_front().is_some()
    }

    /// Counts one frame received on a connection of `role`; returns whether
    /// it answered a request (so another may be issued).
    pub(super) fn frame(&mut self, role: Role, sent: &mut VecDeque<u64>, payload: &[u8]) -> bool {
        let out = &mut *self.out;
        match frame_type(payload) {
            FrameKind::Broadcast => {
                if role == Role::Subscriber && self.measuring {
                    if let Some(t) = publish_time(payload) {
                        out.hist
                            .saturating_record(self.now.saturating_sub(t) / 1000);
                        out.deliveries += 1;
                    }
                }
                false
            }
            kind => {
                if kind == FrameKind::Error {
                    out.error(|| String::from_utf8_lossy(payload).into_owned());
                }
                let Some(t) = sent.pop_front() else {
                    return false;
                };
                if self.measuring {
                    if kind == FrameKind::Response && role == Role::Requester {
                        out.hist
                            .saturating_record(self.now.saturating_sub(t) / 1000);
                    }
                    out.responses += 1;
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified() {
        assert!(frame_type(br#"{"type":"error","code":"x"}"#) == FrameKind::Error);
        assert!(frame_type(br#"{"type":"pong"}"#) == FrameKind::Response);
        assert!(frame_type(br#"{"code":"x","type":"error"}"#) == FrameKind::Error);
        assert!(frame_type(br#"{"from":"a","type":"broadcast_message"}"#) == FrameKind::Broadcast);
        assert!(frame_type(br#"{"id":1,"type":"echo_response"}"#) == FrameKind::Response);
    }
}
