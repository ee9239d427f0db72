//! Chunks a stream of Opus packets, builds its manifest and prints the TrackId and chunk table.
//!
//! `cargo run -p shoal-protocol --example chunk_track [SECONDS] [KBIT/S]`
//!
//! The packets are synthetic CELT 20 ms frames of the size the bitrate implies (real audio
//! comes with `shoal-tracker import`); what this shows is the content addressing itself.
#![allow(clippy::unwrap_used)]

use shoal_protocol::{Chunker, ChunkerConfig, Manifest, parse_chunk, verify};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let kbps: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let packet_len = (kbps * 1000 / 8 / 50) as usize; // 50 packets per second
    let toc = (31 << 3) | (1 << 2); // CELT fullband 20 ms stereo, one frame

    let mut chunker = Chunker::new(ChunkerConfig::default());
    let mut chunks = Vec::new();
    for i in 0..seconds * 50 {
        let mut packet = vec![(i % 251) as u8; packet_len.max(2)];
        packet[0] = toc;
        chunks.extend(chunker.push(&packet, 960)?);
    }
    chunks.extend(chunker.finish());

    let pre_skip = 312;
    let total = u64::from(seconds) * 48_000;
    let manifest = Manifest::new(
        2,
        pre_skip,
        total - u64::from(pre_skip),
        chunks.iter().map(|c| c.info()).collect(),
    )?;
    for c in &chunks {
        verify(&c.bytes, &c.id)?;
        parse_chunk(&c.bytes)?;
    }
    let bytes = manifest.encode();
    println!("track    {}", manifest.track_id());
    println!(
        "duration {:.3} s, {} chunks, {} bytes of audio, manifest {} bytes",
        manifest.duration().as_secs_f64(),
        manifest.chunks.len(),
        manifest.total_bytes(),
        bytes.len()
    );
    for (i, c) in manifest.chunks.iter().enumerate().take(4) {
        println!(
            "chunk {i:>3} {} {:>6} bytes from {:>8.3} s for {:.3} s",
            c.id,
            c.len,
            c.start as f64 / 48_000.0,
            f64::from(c.samples) / 48_000.0
        );
    }
    assert_eq!(Manifest::decode(&bytes)?, manifest);
    Ok(())
}
