//! What the protocol needs to know about Opus packets: their duration, read from the TOC byte
//! (RFC 6716 §3.1), so chunks and manifests can be checked without a codec.

/// Opus always counts time in 48 kHz samples, whatever the coded bandwidth.
pub const SAMPLES_PER_MS: u32 = 48;

/// The longest duration one Opus packet may carry: 120 ms.
pub const MAX_PACKET_SAMPLES: u32 = 120 * SAMPLES_PER_MS;

/// The largest Opus packet the protocol accepts (RFC 6716: 1275 bytes per frame, up to 48
/// frames; real encoders stay far below).
pub const MAX_PACKET_BYTES: usize = 1275 * 48;

/// Why bytes are not an Opus packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Zero bytes.
    #[error("empty Opus packet")]
    Empty,
    /// A code-3 packet without its frame-count byte.
    #[error("Opus code-3 packet has no frame count byte")]
    MissingFrameCount,
    /// A code-3 packet that declares zero frames.
    #[error("Opus packet declares zero frames")]
    ZeroFrames,
    /// More than 120 ms of audio in one packet.
    #[error("Opus packet lasts {samples} samples, more than the 5760 (120 ms) allowed")]
    TooLong {
        /// Declared duration in 48 kHz samples.
        samples: u32,
    },
}

/// Duration of one frame for a TOC configuration number (0..=31), in 48 kHz samples.
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// Duration of an Opus packet in 48 kHz samples, from its TOC byte (and frame-count byte).
pub fn packet_samples(packet: &[u8]) -> Result<u32, PacketError> {
    let toc = *packet.first().ok_or(PacketError::Empty)?;
    let frames = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let count = packet.get(1).ok_or(PacketError::MissingFrameCount)? & 0x3f;
            if count == 0 {
                return Err(PacketError::ZeroFrames);
            }
            u32::from(count)
        }
    };
    let samples = frames * frame_samples(toc >> 3);
    if samples > MAX_PACKET_SAMPLES {
        return Err(PacketError::TooLong { samples });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celt_fullband_20ms_single_frame() {
        // config 31 (CELT FB 20 ms), stereo, code 0: what libopus emits at 128 kbit/s.
        let toc = (31 << 3) | (1 << 2);
        assert_eq!(packet_samples(&[toc, 0xaa]), Ok(960));
    }

    #[test]
    fn frame_counts() {
        let toc = 31 << 3; // 20 ms frames
        assert_eq!(packet_samples(&[toc | 1]), Ok(1920));
        assert_eq!(packet_samples(&[toc | 2]), Ok(1920));
        assert_eq!(packet_samples(&[toc | 3, 6]), Ok(5760));
        assert_eq!(
            packet_samples(&[toc | 3, 7]),
            Err(PacketError::TooLong { samples: 6720 })
        );
        assert_eq!(packet_samples(&[toc | 3, 0]), Err(PacketError::ZeroFrames));
        assert_eq!(
            packet_samples(&[toc | 3]),
            Err(PacketError::MissingFrameCount)
        );
        assert_eq!(packet_samples(&[]), Err(PacketError::Empty));
    }

    #[test]
    fn silk_and_hybrid_sizes() {
        assert_eq!(packet_samples(&[3 << 3]), Ok(2880)); // SILK NB 60 ms
        assert_eq!(packet_samples(&[12 << 3]), Ok(480)); // hybrid SWB 10 ms
        assert_eq!(packet_samples(&[16 << 3]), Ok(120)); // CELT NB 2.5 ms
    }

    #[test]
    fn every_toc_byte_is_handled() {
        for toc in 0..=255u8 {
            let _ = packet_samples(&[toc, 0xff]);
        }
    }
}
