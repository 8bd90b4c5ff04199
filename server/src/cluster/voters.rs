//! The leader's voter policy: how many voters the group should have and which learners
//! take a seat. Pure, so that every case is a row of a table test; [`Cluster::lead`]
//! applies what it says.
//!
//! [`Cluster::lead`]: super::Cluster::lead

use std::collections::BTreeSet;

use super::types::NodeId;

/// A change to the voters the leader should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// Promote these learners: the group is short of the voters its live nodes allow.
    Promote {
        /// The learners to promote.
        add: BTreeSet<NodeId>,
        /// The number of voters the group will have.
        voters: usize,
    },
    /// Hand the seats of voters that stopped answering to live learners.
    Replace {
        /// The new voters.
        next: BTreeSet<NodeId>,
        /// The voters that lose their seat (they stay learners).
        out: Vec<NodeId>,
    },
}

/// The voters a group of `up` live nodes should have: 5, 3 or 1 (odd, so that a quorum
/// survives the loss of 2, 1 or 0 of them).
pub fn wanted_voters(up: usize) -> usize {
    if up >= 5 {
        5
    } else if up >= 3 {
        3
    } else {
        1
    }
}

/// What to change about `voters`, given the learners that are alive (in membership order),
/// which voters are `alive` (heard from within the lease) and which were heard from
/// `recent`ly (within half a lease). `None`: nothing to change.
pub fn voter_change(
    voters: &BTreeSet<NodeId>,
    live_learners: &[NodeId],
    alive: impl Fn(NodeId) -> bool,
    recent: impl Fn(NodeId) -> bool,
) -> Option<VoterChange> {
    let live_voters = voters.iter().filter(|v| alive(**v)).count();
    let want = wanted_voters(live_voters + live_learners.len());
    if voters.len() < want && voters.len() + live_learners.len() >= want {
        let add = live_learners
            .iter()
            .copied()
            .take(want - voters.len())
            .collect();
        return Some(VoterChange::Promote { add, voters: want });
    }
    // A voter that stopped answering hands its seat to a live learner (it stays a learner
    // itself, and may be promoted again when it is back). Only while the live voters are a
    // quorum: without one no change can commit, and trying would leave the group stuck in a
    // joint configuration.
    let dead: Vec<NodeId> = voters.iter().copied().filter(|v| !alive(*v)).collect();
    // Live here means heard from within half a lease: voters that died together run out of
    // their leases a heartbeat or so apart, and the first to do so must not find the others
    // still counted alive.
    let quorum_alive = voters.iter().filter(|v| recent(**v)).count() * 2 > voters.len();
    if dead.is_empty() || live_learners.is_empty() || !quorum_alive {
        return None;
    }
    let mut next = voters.clone();
    for (d, l) in dead.iter().zip(live_learners) {
        next.remove(d);
        next.insert(*l);
    }
    let out = dead.into_iter().take(live_learners.len()).collect();
    Some(VoterChange::Replace { next, out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn wanted_voters_are_one_three_or_five() {
        let table = [(0, 1), (1, 1), (2, 1), (3, 3), (4, 3), (5, 5), (9, 5)];
        for (up, want) in table {
            assert_eq!(wanted_voters(up), want, "{up} nodes up");
        }
    }

    /// A case, its voters, live learners, voters alive, voters heard from recently, and the
    /// change wanted.
    type Row = (
        &'static str,
        &'static [NodeId],
        &'static [NodeId],
        &'static [NodeId],
        &'static [NodeId],
        Option<VoterChange>,
    );

    /// Each row: voters, live learners, voters alive (within the lease), voters heard from
    /// recently (half a lease), and what the leader should do.
    #[test]
    fn the_leader_promotes_learners_and_replaces_dead_voters_only_with_a_quorum() {
        use VoterChange::{Promote, Replace};
        let table: Vec<Row> = vec![
            ("a node of its own", &[1], &[], &[1], &[1], None),
            ("two nodes keep one voter", &[1], &[2], &[1], &[1], None),
            (
                "a third node makes three voters",
                &[1],
                &[2, 3],
                &[1],
                &[1],
                Some(Promote {
                    add: set(&[2, 3]),
                    voters: 3,
                }),
            ),
            (
                "five nodes make five voters",
                &[1, 2, 3],
                &[4, 5],
                &[1, 2, 3],
                &[1, 2, 3],
                Some(Promote {
                    add: set(&[4, 5]),
                    voters: 5,
                }),
            ),
            (
                "four nodes keep three voters",
                &[1, 2, 3],
                &[4],
                &[1, 2, 3],
                &[1, 2, 3],
                None,
            ),
            (
                "a dead voter hands its seat to a live learner",
                &[1, 2, 3],
                &[4],
                &[1, 2],
                &[1, 2],
                Some(Replace {
                    next: set(&[1, 2, 4]),
                    out: vec![3],
                }),
            ),
            (
                "two dead voters, one learner: one seat changes hands",
                &[1, 2, 3, 4, 5],
                &[6],
                &[1, 2, 3],
                &[1, 2, 3],
                Some(Replace {
                    next: set(&[1, 2, 3, 5, 6]),
                    out: vec![4],
                }),
            ),
            (
                "no live learner: nothing to hand over",
                &[1, 2, 3],
                &[],
                &[1, 2],
                &[1, 2],
                None,
            ),
            (
                "no quorum heard from recently: no change could commit",
                &[1, 2, 3],
                &[4],
                &[1, 2],
                &[1],
                None,
            ),
            (
                "every voter alive: nothing to do",
                &[1, 2, 3],
                &[4],
                &[1, 2, 3],
                &[1, 2, 3],
                None,
            ),
        ];
        assert!(!table.is_empty());
        for (case, voters, learners, alive, recent, want) in table {
            let got = voter_change(
                &set(voters),
                learners,
                |id| alive.contains(&id),
                |id| recent.contains(&id),
            );
            assert_eq!(got, want, "{case}");
        }
    }
}
