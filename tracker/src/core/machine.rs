//! [`TrackerCore`]: the peer registry behind the sans-IO [`Core`] contract, so the libp2p
//! driver and the simulator feed it the same inputs: announces and holder lookups in, answers
//! and purge timers out.

use std::collections::VecDeque;

use shoal_protocol::ids::{NodeId, TrackId};
use shoal_protocol::sansio::{Core, Input, Output, Time};
use shoal_protocol::wire::{
    Announce, AnnounceResponse, ClusterAnnounce, LookupRequest, LookupResponse, PeerContact,
};

use super::config::{ConfigError, RegistryConfig};
use super::registry::{AnnounceError, PeerRegistry};

/// Messages the tracker core exchanges. Catalog search is not here: the driver answers
/// [`LookupRequest::Search`] from its database ([`RegistryMessage::from_lookup`] hands it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryMessage {
    /// An [`Announce`] from the authenticated sender, with the contact the *driver* attests for
    /// it (its peer id from the secure channel, the addresses it observed). The wire message
    /// carries no identity; a peer core never builds this variant, its driver does.
    Announce {
        /// The announce as received.
        announce: Announce,
        /// The sender's contact as the driver knows it.
        contact: PeerContact,
    },
    /// A super-peer's [`ClusterAnnounce`], with its contact as the driver attests it (the
    /// cluster is the authenticated sender's; the message names none).
    ClusterAnnounce {
        /// The announce as received.
        announce: ClusterAnnounce,
        /// The super-peer's contact as the driver knows it.
        contact: PeerContact,
    },
    /// The answer to an announce.
    AnnounceResponse(AnnounceResponse),
    /// [`LookupRequest::Holders`]: who holds `track`, nearest to the sender first.
    Holders {
        /// The track.
        track: TrackId,
        /// Most holders wanted (capped by `max_lookup_limit`).
        limit: u16,
    },
    /// The answer to a lookup.
    LookupResponse(LookupResponse),
}

impl RegistryMessage {
    /// The core's form of a lookup request; a catalog search comes back as `Err` for the
    /// driver to answer.
    pub fn from_lookup(request: LookupRequest) -> Result<Self, LookupRequest> {
        match request {
            LookupRequest::Holders { track, limit } => Ok(Self::Holders { track, limit }),
            search @ LookupRequest::Search { .. } => Err(search),
        }
    }
}

/// Commands from the operator or driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerCommand {
    /// Drop this peer and its listings now (ban, clean shutdown).
    Forget(NodeId),
}

/// What the core reports to its driver (for metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerEvent {
    /// An announce was rejected (the sender was told why).
    Rejected {
        /// The sender.
        from: NodeId,
        /// Why.
        error: AnnounceError,
    },
    /// A purge step removed this many expired peers.
    Expired {
        /// Peers removed.
        peers: usize,
    },
}

/// The registry as a sans-IO core. A connection going down changes nothing: the registry is
/// soft state and the TTL decides (peers reconnect, and a relayed peer stays reachable through
/// its super-peer while its own link to the tracker is down).
#[derive(Debug)]
pub struct TrackerCore {
    registry: PeerRegistry,
    out: VecDeque<Output<RegistryMessage, TrackerEvent>>,
    dropped_outputs: u64,
}

impl TrackerCore {
    /// A core with an empty registry.
    pub fn new(config: RegistryConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            registry: PeerRegistry::new(config)?,
            out: VecDeque::new(),
            dropped_outputs: 0,
        })
    }

    /// The registry, for status pages and direct lookups.
    pub fn registry(&self) -> &PeerRegistry {
        &self.registry
    }

    /// The registry, for drivers that also call its plain methods.
    pub fn registry_mut(&mut self) -> &mut PeerRegistry {
        &mut self.registry
    }

    /// Outputs dropped because the queue was full (a driver that does not drain).
    pub fn dropped_outputs(&self) -> u64 {
        self.dropped_outputs
    }

    fn push(&mut self, output: Output<RegistryMessage, TrackerEvent>) {
        if self.out.len() >= self.registry.config().max_queued_outputs {
            self.dropped_outputs += 1;
            return;
        }
        self.out.push_back(output);
    }
}

impl Core for TrackerCore {
    type Message = RegistryMessage;
    type Command = TrackerCommand;
    type Event = TrackerEvent;

    fn handle_input(&mut self, now: Time, input: Input<RegistryMessage, TrackerCommand>) {
        match input {
            Input::Message { from, msg } => match msg {
                RegistryMessage::Announce { announce, contact } => {
                    let answer = match self.registry.announce(from, &contact, &announce, now) {
                        Ok(accepted) => accepted.to_response(),
                        Err(error) => {
                            let answer = error.to_response();
                            self.push(Output::Event(TrackerEvent::Rejected { from, error }));
                            answer
                        }
                    };
                    self.push(Output::Send {
                        to: from,
                        msg: RegistryMessage::AnnounceResponse(answer),
                    });
                }
                RegistryMessage::ClusterAnnounce { announce, contact } => {
                    let answer = match self
                        .registry
                        .announce_cluster(from, &contact, &announce, now)
                    {
                        Ok(accepted) => AnnounceResponse::Accepted {
                            ttl_secs: accepted.ttl_secs,
                        },
                        Err(error) => {
                            let answer = error.to_response();
                            self.push(Output::Event(TrackerEvent::Rejected { from, error }));
                            answer
                        }
                    };
                    self.push(Output::Send {
                        to: from,
                        msg: RegistryMessage::AnnounceResponse(answer),
                    });
                }
                RegistryMessage::Holders { track, limit } => {
                    let holders = self
                        .registry
                        .holders(from, &track, usize::from(limit), now)
                        .iter()
                        .map(|h| h.to_holder())
                        .collect();
                    self.push(Output::Send {
                        to: from,
                        msg: RegistryMessage::LookupResponse(LookupResponse::Holders {
                            track,
                            holders,
                        }),
                    });
                }
                RegistryMessage::AnnounceResponse(_) | RegistryMessage::LookupResponse(_) => {
                    tracing::debug!(peer = %from, "ignoring a response sent to the tracker");
                }
            },
            Input::Timeout => {
                let batch = self.registry.config().purge_batch;
                let peers = self.registry.purge_expired(now, batch);
                if peers > 0 {
                    self.push(Output::Event(TrackerEvent::Expired { peers }));
                }
            }
            Input::Command(TrackerCommand::Forget(node)) => {
                self.registry.forget(&node);
            }
            Input::Connected(_) | Input::Disconnected(_) => {}
        }
    }

    fn poll_output(&mut self) -> Output<RegistryMessage, TrackerEvent> {
        self.out
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.registry.next_deadline()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use shoal_protocol::wire::Holder;

    fn contact(i: u64) -> PeerContact {
        PeerContact {
            peer_id: i.to_be_bytes().to_vec(),
            addrs: vec![format!("/ip4/10.0.0.{i}/udp/7701/quic-v1")],
        }
    }

    fn announce(tracks: Vec<TrackId>) -> Announce {
        Announce {
            replace: true,
            tracks,
            removed: vec![],
            addrs: vec![],
            via: None,
            region: None,
        }
    }

    fn drain(core: &mut TrackerCore) -> (Vec<Output<RegistryMessage, TrackerEvent>>, Time) {
        let mut outs = Vec::new();
        loop {
            match core.poll_output() {
                Output::Timeout(t) => return (outs, t),
                o => outs.push(o),
            }
        }
    }

    #[test]
    fn announce_lookup_and_expiry_through_the_core_contract() {
        let config = RegistryConfig {
            ttl: Duration::from_secs(60),
            ..RegistryConfig::default()
        };
        let mut core = TrackerCore::new(config).unwrap();
        let (a, b) = (NodeId::from_index(1), NodeId::from_index(2));
        let t = TrackId::of(b"t");
        core.handle_input(
            Time::ZERO,
            Input::Message {
                from: a,
                msg: RegistryMessage::Announce {
                    announce: announce(vec![t]),
                    contact: contact(1),
                },
            },
        );
        let (outs, deadline) = drain(&mut core);
        assert_eq!(
            outs,
            vec![Output::Send {
                to: a,
                msg: RegistryMessage::AnnounceResponse(AnnounceResponse::Accepted { ttl_secs: 60 })
            }]
        );
        assert_eq!(deadline, Time::ZERO + Duration::from_secs(60));

        let ask =
            RegistryMessage::from_lookup(LookupRequest::Holders { track: t, limit: 5 }).unwrap();
        core.handle_input(
            Time::from_millis(1000),
            Input::Message {
                from: b,
                msg: ask.clone(),
            },
        );
        let (outs, _) = drain(&mut core);
        assert_eq!(
            outs,
            vec![Output::Send {
                to: b,
                msg: RegistryMessage::LookupResponse(LookupResponse::Holders {
                    track: t,
                    holders: vec![Holder {
                        peer: contact(1),
                        via: None,
                        region: None,
                        superpeer: false,
                    }]
                })
            }]
        );

        // The timer fires: the entry goes, and the next lookup finds nobody.
        core.handle_input(deadline, Input::Timeout);
        let (outs, next) = drain(&mut core);
        assert_eq!(
            outs,
            vec![Output::Event(TrackerEvent::Expired { peers: 1 })]
        );
        assert_eq!(next, Time::NEVER);
        core.handle_input(deadline, Input::Message { from: b, msg: ask });
        let (outs, _) = drain(&mut core);
        assert_eq!(
            outs,
            vec![Output::Send {
                to: b,
                msg: RegistryMessage::LookupResponse(LookupResponse::Holders {
                    track: t,
                    holders: vec![]
                })
            }]
        );
        assert!(
            RegistryMessage::from_lookup(LookupRequest::Search {
                query: "x".into(),
                limit: 1
            })
            .is_err()
        );
    }

    #[test]
    fn rejections_are_answered_and_reported() {
        let config = RegistryConfig {
            max_tracks_per_peer: 1,
            ..RegistryConfig::default()
        };
        let mut core = TrackerCore::new(config).unwrap();
        let a = NodeId::from_index(1);
        core.handle_input(
            Time::ZERO,
            Input::Message {
                from: a,
                msg: RegistryMessage::Announce {
                    announce: announce(vec![TrackId::of(b"1"), TrackId::of(b"2")]),
                    contact: contact(1),
                },
            },
        );
        let (outs, _) = drain(&mut core);
        assert_eq!(outs.len(), 2, "{outs:?}");
        assert!(matches!(
            &outs[0],
            Output::Event(TrackerEvent::Rejected {
                from,
                error: AnnounceError::TooManyTracks { count: 2, max: 1 }
            }) if *from == a
        ));
        assert!(matches!(
            &outs[1],
            Output::Send { to, msg: RegistryMessage::AnnounceResponse(AnnounceResponse::Rejected { reason }) }
                if *to == a && reason.contains("more than the 1 allowed")
        ));
        core.handle_input(Time::ZERO, Input::Command(TrackerCommand::Forget(a)));
        assert_eq!(core.registry().stats().peers, 0);
    }

    #[test]
    fn output_queue_is_bounded() {
        let config = RegistryConfig {
            max_queued_outputs: 3,
            ..RegistryConfig::default()
        };
        let mut core = TrackerCore::new(config).unwrap();
        for i in 0..5 {
            core.handle_input(
                Time::ZERO,
                Input::Message {
                    from: NodeId::from_index(i),
                    msg: RegistryMessage::Holders {
                        track: TrackId::of(b"x"),
                        limit: 1,
                    },
                },
            );
        }
        let (outs, _) = drain(&mut core);
        assert_eq!(outs.len(), 3);
        assert_eq!(core.dropped_outputs(), 2);
    }
}
