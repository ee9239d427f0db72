//! The announce policy: when a peer tells the tracker (`/shoal/announce/1`) which tracks it
//! holds. Sans-IO: the driver reports holdings and answers, asks what to send and when to wake.
//!
//! - The first announce after start-up (or after the tracker forgot us: a failed or rejected
//!   announce, a lost connection) is a full `replace` of the holding set, so tracker and peer
//!   agree whatever happened before.
//! - Later changes are batched for `batch_ms` and sent as additions and removals.
//! - Before the TTL the tracker answered runs out, the full set is sent again (at
//!   `refresh_fraction` of it), so a live peer never drops out of the registry.
//! - At most one announce is in flight; the next waits for its answer.
//! - While **delegated** (a leaf whose super-peer answered `Aggregated`: the super-peer announces
//!   its cluster's holdings to the tracker), nothing is sent; holdings are still tracked, and
//!   ending the delegation (detached, or the super-peer stopped aggregating) sends the full set
//!   at once.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_protocol::wire::MAX_ANNOUNCE_TRACKS;
use shoal_protocol::{Time, TrackId};

/// Timing of announces.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnounceConfig {
    /// Changes wait this long for more before they are sent together (default 1 s).
    pub batch_ms: u64,
    /// After a failed or rejected announce, the full set is re-sent after this long (default
    /// 5 s, the tracker's sustained announce interval).
    pub retry_ms: u64,
    /// The full set is re-sent after this share of the tracker's TTL (default 0.5).
    pub refresh_fraction: f64,
    /// The TTL assumed until the tracker answers one (default 300 s).
    pub default_ttl_secs: u32,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            batch_ms: 1_000,
            retry_ms: 5_000,
            refresh_fraction: 0.5,
            default_ttl_secs: 300,
        }
    }
}

/// One announce to send: the driver adds its addresses, super-peer and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncePlan {
    /// `tracks` is the whole holding set.
    pub replace: bool,
    /// Tracks held (all of them when `replace`, else the additions).
    pub tracks: Vec<TrackId>,
    /// Tracks no longer held (empty when `replace`).
    pub removed: Vec<TrackId>,
}

/// The announce state of one peer.
#[derive(Debug, Clone)]
pub struct Announcer {
    config: AnnounceConfig,
    held: BTreeSet<TrackId>,
    added: BTreeSet<TrackId>,
    removed: BTreeSet<TrackId>,
    /// The tracker has our full set (as of the last accepted announce plus pending changes).
    synced: bool,
    in_flight: bool,
    /// The pending changes may go out from this time.
    changes_due: Time,
    /// The full set is due again (refresh or retry).
    full_due: Time,
    /// A super-peer announces for us.
    delegated: bool,
}

impl Announcer {
    /// Nothing held, nothing announced: the first [`Announcer::poll`] sends a full set.
    pub fn new(config: AnnounceConfig) -> Self {
        Self {
            config,
            held: BTreeSet::new(),
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
            synced: false,
            in_flight: false,
            changes_due: Time::NEVER,
            full_due: Time::ZERO,
            delegated: false,
        }
    }

    /// Hands announcing over to a super-peer (`true`: it aggregates our holdings to the
    /// tracker) or takes it back (`false`: the full set goes out as soon as nothing is in
    /// flight, since the tracker may hold nothing of ours).
    pub fn set_delegated(&mut self, now: Time, delegated: bool) {
        if self.delegated == delegated {
            return;
        }
        self.delegated = delegated;
        if !delegated {
            self.reset(now);
        }
    }

    /// Whether a super-peer announces for us.
    pub fn delegated(&self) -> bool {
        self.delegated
    }

    /// Tracks held now.
    pub fn held(&self) -> &BTreeSet<TrackId> {
        &self.held
    }

    /// True when the tracker has our current holding set (the last announce was accepted and
    /// nothing changed since, or the changes are merely batched).
    pub fn synced(&self) -> bool {
        self.synced && !self.in_flight
    }

    /// The peer now holds all of `track` and can serve it.
    pub fn hold(&mut self, now: Time, track: TrackId) {
        if self.held.len() >= MAX_ANNOUNCE_TRACKS || !self.held.insert(track) {
            return;
        }
        if !self.removed.remove(&track) {
            self.added.insert(track);
        }
        self.changed(now);
    }

    /// The peer no longer holds `track`.
    pub fn release(&mut self, now: Time, track: TrackId) {
        if !self.held.remove(&track) {
            return;
        }
        if !self.added.remove(&track) {
            self.removed.insert(track);
        }
        self.changed(now);
    }

    fn changed(&mut self, now: Time) {
        if self.changes_due == Time::NEVER {
            self.changes_due = now + Duration::from_millis(self.config.batch_ms);
        }
    }

    /// The tracker may have forgotten us (connection lost, tracker restarted): the next
    /// announce is a full set, sent as soon as nothing is in flight.
    pub fn reset(&mut self, now: Time) {
        self.synced = false;
        self.full_due = now;
    }

    /// The announce to send now, if one is due. Call again after [`Announcer::answered`].
    pub fn poll(&mut self, now: Time) -> Option<AnnouncePlan> {
        if self.in_flight || self.delegated {
            return None;
        }
        if !self.synced || now >= self.full_due {
            if now < self.full_due {
                return None;
            }
            self.in_flight = true;
            self.added.clear();
            self.removed.clear();
            self.changes_due = Time::NEVER;
            return Some(AnnouncePlan {
                replace: true,
                tracks: self.held.iter().copied().collect(),
                removed: Vec::new(),
            });
        }
        if now >= self.changes_due {
            self.changes_due = Time::NEVER;
            if self.added.is_empty() && self.removed.is_empty() {
                return None;
            }
            self.in_flight = true;
            return Some(AnnouncePlan {
                replace: false,
                tracks: std::mem::take(&mut self.added).into_iter().collect(),
                removed: std::mem::take(&mut self.removed).into_iter().collect(),
            });
        }
        None
    }

    /// The answer to the announce in flight: `Some(ttl)` when accepted, `None` when rejected
    /// or lost. A lost incremental announce makes the next one a full set.
    pub fn answered(&mut self, now: Time, accepted_ttl_secs: Option<u32>) {
        self.in_flight = false;
        match accepted_ttl_secs {
            Some(ttl) => {
                let ttl = if ttl == 0 {
                    self.config.default_ttl_secs
                } else {
                    ttl
                };
                self.synced = true;
                let refresh = f64::from(ttl) * self.config.refresh_fraction.clamp(0.05, 1.0);
                self.full_due = now + Duration::from_secs_f64(refresh);
            }
            None => {
                self.synced = false;
                self.full_due = now + Duration::from_millis(self.config.retry_ms);
            }
        }
    }

    /// When [`Announcer::poll`] next has something to send ([`Time::NEVER`] while an announce
    /// is in flight: its answer wakes the driver).
    pub fn next_wake(&self) -> Time {
        if self.in_flight || self.delegated {
            Time::NEVER
        } else if self.synced {
            self.full_due.min(self.changes_due)
        } else {
            self.full_due
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    fn track(i: u8) -> TrackId {
        TrackId::of(&[i])
    }

    #[test]
    fn first_announce_is_a_full_set_then_batched_changes() {
        let mut a = Announcer::new(AnnounceConfig::default());
        a.hold(t(0), track(1));
        let p = a.poll(t(0)).expect("full set due at start");
        assert!(p.replace);
        assert_eq!(p.tracks, vec![track(1)]);
        assert_eq!(a.poll(t(1)), None, "one in flight at a time");
        a.answered(t(10), Some(60));
        assert_eq!(a.next_wake(), t(10) + Duration::from_secs(30));
        a.hold(t(100), track(2));
        a.hold(t(200), track(3));
        a.release(t(300), track(1));
        assert_eq!(a.poll(t(500)), None, "batched for batch_ms");
        assert_eq!(a.next_wake(), t(1_100));
        let p = a.poll(t(1_100)).expect("changes due");
        assert!(!p.replace);
        let mut want = vec![track(2), track(3)];
        want.sort();
        assert_eq!(p.tracks, want);
        assert_eq!(p.removed, vec![track(1)]);
    }

    #[test]
    fn refresh_before_ttl_and_full_set_after_failure() {
        let mut a = Announcer::new(AnnounceConfig::default());
        a.hold(t(0), track(1));
        a.poll(t(0)).expect("start");
        a.answered(t(0), Some(60));
        assert_eq!(a.poll(t(29_999)), None);
        let p = a.poll(t(30_000)).expect("refresh at half the TTL");
        assert!(p.replace);
        a.answered(t(30_000), None);
        a.hold(t(30_001), track(2));
        assert_eq!(a.poll(t(31_500)), None, "changes wait for the retry");
        let p = a
            .poll(t(35_000))
            .expect("retry after a failure is a full set");
        assert!(p.replace);
        assert_eq!(p.tracks.len(), 2);
    }

    #[test]
    fn delegated_sends_nothing_and_taking_it_back_sends_the_full_set() {
        let mut a = Announcer::new(AnnounceConfig::default());
        a.hold(t(0), track(1));
        a.poll(t(0)).expect("start");
        a.answered(t(0), Some(60));
        a.set_delegated(t(10), true);
        assert!(a.delegated());
        a.hold(t(20), track(2));
        assert_eq!(a.next_wake(), Time::NEVER);
        assert_eq!(
            a.poll(t(40_000)),
            None,
            "no change, no refresh while delegated"
        );
        a.release(t(41_000), track(1));
        a.set_delegated(t(50_000), true);
        assert_eq!(a.poll(t(50_000)), None);
        a.set_delegated(t(60_000), false);
        let p = a.poll(t(60_000)).expect("full set at once");
        assert!(p.replace);
        assert_eq!(p.tracks, vec![track(2)]);
    }

    #[test]
    fn add_then_remove_before_sending_cancels_out() {
        let mut a = Announcer::new(AnnounceConfig::default());
        a.poll(t(0)).expect("start");
        a.answered(t(0), Some(60));
        a.hold(t(1), track(1));
        a.release(t(2), track(1));
        assert_eq!(a.poll(t(2_000)), None, "nothing changed in the end");
        a.reset(t(3_000));
        assert!(a.poll(t(3_000)).expect("reset forces a full set").replace);
    }
}
