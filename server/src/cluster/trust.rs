//! What the cluster port trusts: which peers may call it at all, how a peer's certificate
//! names the node it speaks for, and which Raft terms are believable. The decisions are pure
//! functions here; `service.rs` applies them before anything reaches openraft.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, Vote};
use rustls::pki_types::{CertificateDer, ServerName};

use super::types::{Member, NodeId, TypeConfig};

/// The answer to a peer that is neither on loopback nor authenticated.
pub const UNAUTHENTICATED_PEER: &str =
    "cluster peers need cluster.token or cluster.tls.client_cas (mutual TLS)";

/// No term at or above this is accepted from a peer (2^62).
///
/// A term grows by one per election round, and a round takes at least the election timeout
/// (1.5 s): at one round per second a cluster needs about 1.5 × 10^11 years to get here, so
/// only a forged message carries such a term. It leaves openraft's `term + 1` far from
/// `u64::MAX` (a term of `u64::MAX` made the core panic on the overflow, and the persisted term
/// made it panic again after every restart).
pub const MAX_TERM: u64 = 1 << 62;

/// No peer's term may be more than this (2^32) ahead of this node's own.
///
/// A node that was away (partitioned, stopped, restored from an old data dir, or new with
/// term 0) is behind the cluster by the elections held meanwhile: at one per second that is
/// 2^32 after 136 years. A forged term further ahead would end the cluster's progress: every
/// later legitimate message would look stale to this node.
pub const MAX_TERM_LEAD: u64 = 1 << 32;

/// Whether `term`, sent by a peer to a node whose own term is `local`, is believable.
pub fn term_acceptable(term: u64, local: u64) -> bool {
    term < MAX_TERM && term <= local.saturating_add(MAX_TERM_LEAD)
}

/// Who may reach the cluster port at all: any peer once the cluster authenticates its
/// peers (a shared token or mutual TLS) or the operator opted out; otherwise loopback only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// `cluster.token` is set.
    pub token: bool,
    /// `cluster.tls.client_cas` is set: every peer presents a certificate of the cluster's CA.
    pub mutual_tls: bool,
    /// `cluster.allow_unauthenticated_peers`: any peer that can reach the port is trusted.
    pub allow_unauthenticated: bool,
}

impl PeerPolicy {
    /// Whether peers prove they belong to the cluster (token or mutual TLS).
    pub fn authenticated(&self) -> bool {
        self.token || self.mutual_tls
    }

    /// Whether a connection from `remote` may call the cluster port.
    pub fn admits(&self, remote: SocketAddr) -> bool {
        self.authenticated()
            || self.allow_unauthenticated
            // `::ffff:127.0.0.1` is loopback too (a dual-stack listener).
            || remote.ip().to_canonical().is_loopback()
    }
}

/// The host of a `host:port` address: `[::1]:8003` → `::1`, `piko-0.piko:8003` → `piko-0.piko`.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether the leaf of `chain` (a peer's verified client certificate) is valid for `host`,
/// a DNS name or an IP: the check a node makes on the server certificate when it dials
/// `host`. A wildcard name in the certificate matches as it would there.
pub fn certificate_names(chain: &[CertificateDer<'_>], host: &str) -> bool {
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok(cert) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    rustls::client::verify_server_name(&cert, &name).is_ok()
}

/// Whether `chain` speaks for `member`: it names the host of the member's cluster address.
pub fn certificate_is(chain: &[CertificateDer<'_>], member: &Member) -> bool {
    certificate_names(chain, host_of(&member.cluster_addr))
}

/// The members this node knows, and which of them vote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownPeers {
    /// Raft id → member (voters and learners).
    pub members: BTreeMap<NodeId, Member>,
    /// Raft ids of the voters.
    pub voters: BTreeSet<NodeId>,
}

impl KnownPeers {
    /// Add `other`'s members; records already here win.
    pub fn extend(&mut self, other: &KnownPeers) {
        for (id, m) in &other.members {
            self.members.entry(*id).or_insert_with(|| m.clone());
        }
        self.voters.extend(other.voters.iter().copied());
    }

    /// The member that `chain` speaks for, if any.
    pub fn named_by(&self, chain: &[CertificateDer<'_>]) -> Option<&Member> {
        self.members.values().find(|m| certificate_is(chain, m))
    }
}

/// A Raft request: who sends it (the candidate, or the leader) and the largest term in it.
pub trait RaftRequest {
    /// The sender's Raft id.
    fn sender(&self) -> NodeId;
    /// The largest term the request carries.
    fn max_term(&self) -> u64;
    /// Whether only voters send it (a vote), or any leader (which is a voter of some
    /// configuration this node may not have seen yet).
    const VOTERS_ONLY: bool;
}

fn log_term(id: &Option<LogId<NodeId>>) -> u64 {
    id.as_ref().map_or(0, |l| l.leader_id.term)
}

fn vote_term(v: &Vote<NodeId>) -> u64 {
    v.leader_id.term
}

impl RaftRequest for VoteRequest<NodeId> {
    fn sender(&self) -> NodeId {
        self.vote.leader_id.node_id
    }
    fn max_term(&self) -> u64 {
        vote_term(&self.vote).max(log_term(&self.last_log_id))
    }
    const VOTERS_ONLY: bool = true;
}

impl RaftRequest for AppendEntriesRequest<TypeConfig> {
    fn sender(&self) -> NodeId {
        self.vote.leader_id.node_id
    }
    fn max_term(&self) -> u64 {
        let entries = self.entries.iter().map(|e| e.log_id.leader_id.term);
        entries
            .chain([
                vote_term(&self.vote),
                log_term(&self.prev_log_id),
                log_term(&self.leader_commit),
            ])
            .max()
            .unwrap_or(0)
    }
    const VOTERS_ONLY: bool = false;
}

impl RaftRequest for InstallSnapshotRequest<TypeConfig> {
    fn sender(&self) -> NodeId {
        self.vote.leader_id.node_id
    }
    fn max_term(&self) -> u64 {
        vote_term(&self.vote)
            .max(log_term(&self.meta.last_log_id))
            .max(log_term(self.meta.last_membership.log_id()))
    }
    const VOTERS_ONLY: bool = false;
}

/// A Raft answer from a peer: the largest term in it, checked like a request's so that a
/// peer cannot push this node's term out of range through its answers either.
pub trait RaftAnswer {
    /// The largest term the answer carries.
    fn max_term(&self) -> u64;
}

impl RaftAnswer for VoteResponse<NodeId> {
    fn max_term(&self) -> u64 {
        vote_term(&self.vote).max(log_term(&self.last_log_id))
    }
}

impl RaftAnswer for AppendEntriesResponse<NodeId> {
    fn max_term(&self) -> u64 {
        match self {
            AppendEntriesResponse::HigherVote(v) => vote_term(v),
            AppendEntriesResponse::PartialSuccess(l) => log_term(l),
            _ => 0,
        }
    }
}

impl RaftAnswer for InstallSnapshotResponse<NodeId> {
    fn max_term(&self) -> u64 {
        vote_term(&self.vote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_token_or_mutual_tls_only_loopback_peers_are_admitted() {
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        let open = PeerPolicy::default();
        let token = PeerPolicy {
            token: true,
            ..open
        };
        let mtls = PeerPolicy {
            mutual_tls: true,
            ..open
        };
        let opted_out = PeerPolicy {
            allow_unauthenticated: true,
            ..open
        };
        let cases = [
            (open, "127.0.0.1:5000", true),
            (open, "127.8.9.10:5000", true),
            (open, "[::1]:5000", true),
            (open, "[::ffff:127.0.0.1]:5000", true),
            (open, "10.0.0.7:5000", false),
            (open, "192.168.1.2:5000", false),
            (open, "[::ffff:10.0.0.7]:5000", false),
            (open, "[2001:db8::1]:5000", false),
            (open, "0.0.0.0:5000", false),
            (token, "10.0.0.7:5000", true),
            (mtls, "[2001:db8::1]:5000", true),
            (opted_out, "10.0.0.7:5000", true),
        ];
        for (policy, addr, want) in cases {
            assert_eq!(policy.admits(peer(addr)), want, "{policy:?} {addr}");
        }
        assert!(!open.authenticated() && !opted_out.authenticated());
        assert!(token.authenticated() && mtls.authenticated());
    }

    #[test]
    fn terms_far_ahead_or_near_overflow_are_refused() {
        let cases = [
            (0, 0, true),
            (5, 3, true),
            (1, 100, true),
            (MAX_TERM_LEAD, 0, true),
            (MAX_TERM_LEAD + 1, 0, false),
            (1000 + MAX_TERM_LEAD, 1000, true),
            (MAX_TERM - 1, MAX_TERM - 2, true),
            (MAX_TERM, MAX_TERM - 1, false),
            (u64::MAX, 7, false),
            (u64::MAX, u64::MAX, false),
        ];
        for (term, local, want) in cases {
            assert_eq!(
                term_acceptable(term, local),
                want,
                "term {term}, local {local}"
            );
        }
    }

    #[test]
    fn hosts_of_addresses() {
        for (addr, host) in [
            ("piko-0.piko:8003", "piko-0.piko"),
            ("10.0.0.1:8003", "10.0.0.1"),
            ("[::1]:8003", "::1"),
            ("nohost", "nohost"),
        ] {
            assert_eq!(host_of(addr), host, "{addr}");
        }
    }

    #[test]
    fn a_certificate_names_the_hosts_in_its_subject_alt_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![
            "piko-0.piko.default.svc".to_string(),
            "*.nodes.example".to_string(),
            "10.1.2.3".to_string(),
        ])
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let chain = [cert.der().clone()];
        for (host, want) in [
            ("piko-0.piko.default.svc", true),
            ("piko-1.piko.default.svc", false),
            ("a.nodes.example", true),
            ("a.b.nodes.example", false),
            ("10.1.2.3", true),
            ("10.1.2.4", false),
            ("", false),
        ] {
            assert_eq!(certificate_names(&chain, host), want, "{host}");
        }
        assert!(
            !certificate_names(&[], "10.1.2.3"),
            "no certificate names nothing"
        );
        let member = Member {
            name: "piko-0".into(),
            cluster_addr: "piko-0.piko.default.svc:8003".into(),
            ..Member::default()
        };
        assert!(certificate_is(&chain, &member));
        let other = Member {
            cluster_addr: "piko-9.piko.default.svc:8003".into(),
            ..member
        };
        assert!(!certificate_is(&chain, &other));
    }
}
