//! The relay limits an operator sets, sized for streaming audio.
//!
//! libp2p's relay defaults (2 minutes and 128 KiB per circuit, 16 circuits) end a song after a
//! few seconds; a 160 kbit/s stream moves 128 KiB in under 7 s. These defaults let a circuit
//! carry a whole listening session.

use std::time::Duration;

/// Relay admission limits. The driver maps them onto libp2p's `relay::Config`; the bandwidth
/// cap is enforced by the driver on the relayed streams' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations (leaves reachable through this super-peer) at once (default 1,024).
    pub max_reservations: usize,
    /// Reservations one peer may hold at once (default 4).
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the leaf must renew it (default 1 h; libp2p's
    /// relay client renews on its own).
    pub reservation_duration: Duration,
    /// Relayed circuits open at once (default 2,048).
    pub max_circuits: usize,
    /// Circuits open at once to or from one peer (default 16).
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit (default 6 h).
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry, both directions together; 0 = unlimited (default).
    pub max_circuit_bytes: u64,
    /// Total relayed bandwidth in Mbit/s, all circuits together; 0 = unlimited (default).
    pub relay_bandwidth_mbit: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 2048,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(6 * 3600),
            max_circuit_bytes: 0,
            relay_bandwidth_mbit: 0,
        }
    }
}

/// A limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct LimitError {
    /// The config key.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl RelayLimits {
    /// Checks the values are usable (libp2p requires positive counts and a circuit duration
    /// that fits a u32 of seconds).
    pub fn validate(&self) -> Result<(), LimitError> {
        let positive = [
            ("max_reservations", self.max_reservations),
            ("max_reservations_per_peer", self.max_reservations_per_peer),
            ("max_circuits", self.max_circuits),
            ("max_circuits_per_peer", self.max_circuits_per_peer),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(LimitError {
                    key,
                    value: v.to_string(),
                    reason: "must be at least 1",
                });
            }
        }
        for (key, d) in [
            ("reservation_duration_secs", self.reservation_duration),
            ("max_circuit_duration_secs", self.max_circuit_duration),
        ] {
            if d.is_zero() || d.as_secs() > u64::from(u32::MAX) {
                return Err(LimitError {
                    key,
                    value: d.as_secs().to_string(),
                    reason: "must be 1..=4294967295 seconds",
                });
            }
        }
        if self.relay_bandwidth_mbit > 1_000_000 {
            return Err(LimitError {
                key: "relay_bandwidth_mbit",
                value: self.relay_bandwidth_mbit.to_string(),
                reason: "must be at most 1000000 (1 Tbit/s); 0 means unlimited",
            });
        }
        Ok(())
    }

    /// The bandwidth cap in bytes per second, `None` when unlimited.
    pub fn relay_bytes_per_sec(&self) -> Option<u64> {
        (self.relay_bandwidth_mbit > 0).then(|| self.relay_bandwidth_mbit * 1_000_000 / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sized_for_streaming() {
        let l = RelayLimits::default();
        assert_eq!(l.validate(), Ok(()));
        assert!(l.max_circuit_duration >= Duration::from_secs(3600));
        assert_eq!(l.max_circuit_bytes, 0);
        assert_eq!(l.relay_bytes_per_sec(), None);
    }

    #[test]
    fn bad_values_name_the_key() {
        let l = RelayLimits {
            max_circuits: 0,
            ..RelayLimits::default()
        };
        assert!(
            l.validate()
                .unwrap_err()
                .to_string()
                .contains("max_circuits")
        );
        let l = RelayLimits {
            max_circuit_duration: Duration::ZERO,
            ..RelayLimits::default()
        };
        assert_eq!(l.validate().unwrap_err().key, "max_circuit_duration_secs");
        let l = RelayLimits {
            relay_bandwidth_mbit: 8,
            ..RelayLimits::default()
        };
        assert_eq!(l.relay_bytes_per_sec(), Some(1_000_000));
    }
}
