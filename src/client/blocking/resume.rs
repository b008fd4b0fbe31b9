//! Resuming channels: the client follows each channel it holds and its
//! position (offset and epoch) from the frames it receives, subscribes
//! again after a reconnection (with `recover` where it has a position) and
//! reports each channel recovered or lost.

use super::*;

impl Inner {
    /// Follows the channels held and their positions from the frames
    /// received; reports a live loss. Returns false for a publication
    /// already received (a duplicate: not delivered again).
    pub(super) fn track_channels(&self, m: &Message) -> bool {
        let Some(channel) = m.get_str("channel") else {
            return true;
        };
        let position = match (m.get_u64("offset"), m.get_str("epoch")) {
            (Some(o), Some(e)) => Some((o, e.to_owned())),
            _ => None,
        };
        let mut lost = None;
        {
            let mut channels = lock(&self.channels);
            match m.kind() {
                // A granted recovery keeps the position it recovers from:
                // the replay that follows moves it on.
                "subscribed" if m.get("recovered") == Some(&Value::Bool(true)) => {}
                "subscribed" => {
                    channels.insert(channel.to_owned(), position);
                }
                "unsubscribed" => {
                    channels.remove(channel);
                }
                "channel_message" => {
                    if let (Some(Some((last, epoch))), Some((o, e))) =
                        (channels.get_mut(channel), position)
                    {
                        if e != *epoch {
                            lost = Some(LostReason::Epoch);
                        } else if o <= *last {
                            return false;
                        } else if o > *last + 1 {
                            lost = Some(LostReason::Gap);
                        }
                        *last = o;
                        *epoch = e;
                    }
                }
                _ => {}
            }
        }
        if let Some(reason) = lost {
            self.emit(Event::Lost {
                channel: channel.to_owned(),
                reason,
            });
        }
        true
    }

    /// Subscribes again on a new connection to every channel held, with
    /// `recover` where a position is known.
    pub(super) fn resubscribe(&self, conn: &Conn) {
        let held: Vec<(String, Option<(u64, String)>)> = lock(&self.channels)
            .iter()
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect();
        let mut waiting = lock(&self.resubscribing);
        waiting.clear();
        for (channel, position) in held {
            let mut f = Map::new();
            f.insert("channel".into(), Value::from(channel.as_str()));
            if let Some((offset, epoch)) = position {
                f.insert(
                    "recover".into(),
                    serde_json::json!({"offset": offset, "epoch": epoch}),
                );
            }
            match conn.send(&self.next_id, "subscribe", &f) {
                Ok((_, rx)) => waiting.push((channel, rx)),
                // The new connection is already gone: the next one retries.
                Err(_) => return,
            }
        }
    }

    /// Reports the resubscriptions answered so far: recovered or lost. Run
    /// after each frame is routed, so that `Recovered` comes before the
    /// replay that follows `subscribed`.
    pub(super) fn settle_resubscriptions(&self) {
        let mut waiting = lock(&self.resubscribing);
        if waiting.is_empty() {
            return;
        }
        let mut events = Vec::new();
        waiting.retain(|(channel, rx)| match rx.try_recv() {
            Ok(Ok(m)) if m.get("recovered") == Some(&Value::Bool(true)) => {
                events.push(Event::Recovered {
                    channel: channel.clone(),
                });
                false
            }
            Ok(reply) => {
                if reply.is_err() {
                    // Refused: the channel is no longer held.
                    lock(&self.channels).remove(channel);
                }
                events.push(Event::Lost {
                    channel: channel.clone(),
                    reason: LostReason::Reconnect,
                });
                false
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => true,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => false,
        });
        drop(waiting);
        for e in events {
            self.emit(e);
        }
    }
}
