//! The frame codec path, as a peer that negotiated compression can drive
//! it: arbitrary bytes as a stream of frames through a `FrameDecoder` that
//! accepts the compressed flag, each flagged payload decompressed with the
//! codec the first byte picks, bounded at 64 KiB. Checks, beyond "no
//! panic": decompression never yields more than the limit and never holds
//! much more buffer than it; a payload that decompresses is compressed
//! again and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::codec::{Codec, Compressor, DecompressError, Decompressor};
use ringcast::protocol::frame::{FrameDecoder, NoPool};
use std::ops::ControlFlow;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let codec = Codec::ALL[pick as usize % Codec::COUNT];
    let mut dec = FrameDecoder::new(LIMIT);
    dec.accept_compressed();
    let mut d = Decompressor::new();
    let mut c = Compressor::new();
    let mut stream = rest.to_vec();
    let _ = dec.feed_flagged(&mut stream, &mut NoPool, usize::MAX, |payload, packed| {
        let mut out = Vec::new();
        let r = if packed {
            d.decompress(codec, payload, &mut out, LIMIT)
        } else {
            out.extend_from_slice(payload);
            Ok(())
        };
        match r {
            Ok(()) => {
                assert!(out.len() <= LIMIT);
                let mut again = Vec::new();
                if c.compress_frame(codec, &out, &mut again) {
                    let mut back = Vec::new();
                    d.decompress(codec, &again[4..], &mut back, LIMIT)
                        .expect("our own stream decompresses");
                    assert_eq!(back, out);
                }
                ControlFlow::Continue(())
            }
            Err(DecompressError::TooLarge { .. }) => {
                assert!(out.capacity() <= LIMIT + 1 + 64 * 1024);
                ControlFlow::Break(())
            }
            Err(DecompressError::Corrupt { .. }) => ControlFlow::Break(()),
        }
    });
});
