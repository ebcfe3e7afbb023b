//! Quorum verifiers: ZooKeeper's `QuorumMaj` and `QuorumHierarchical`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::{Error, Result};
use crate::types::ServerId;

/// Decides which sets of servers form a quorum, and who may be elected.
///
/// This is ZooKeeper's `QuorumVerifier`, reduced to what the election needs.
/// Implementations must be deterministic: the same set always gives the
/// same answer.
pub trait QuorumVerifier: fmt::Debug {
    /// Whether `id` is a voting member (ZooKeeper's `validVoter`).
    fn is_voter(&self, id: ServerId) -> bool;
    /// Whether `id` is a member at all: a voter or an observer.
    fn is_member(&self, id: ServerId) -> bool;
    /// The weight of a voter; 0 for a non-member. A server of weight 0
    /// never wins an election.
    fn weight(&self, id: ServerId) -> u64;
    /// Every voting member, ascending.
    fn voters(&self) -> Vec<ServerId>;
    /// Whether `set` contains a quorum. Non-voters in `set` count for nothing.
    fn contains_quorum(&self, set: &BTreeSet<ServerId>) -> bool;
}

/// Simple majority of the voters (ZooKeeper's `QuorumMaj`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Majority {
    voters: BTreeSet<ServerId>,
    observers: BTreeSet<ServerId>,
}

impl Majority {
    /// A majority quorum over `voters`, with no observers.
    pub fn new(voters: impl IntoIterator<Item = ServerId>) -> Result<Self> {
        Self::with_observers(voters, [])
    }

    /// A majority quorum over `voters`; `observers` are members that never vote.
    pub fn with_observers(
        voters: impl IntoIterator<Item = ServerId>,
        observers: impl IntoIterator<Item = ServerId>,
    ) -> Result<Self> {
        let voters: BTreeSet<_> = voters.into_iter().collect();
        let observers: BTreeSet<_> = observers.into_iter().collect();
        if voters.is_empty() {
            return Err(Error::InvalidQuorum("no voters".into()));
        }
        if let Some(id) = voters.intersection(&observers).next() {
            return Err(Error::InvalidQuorum(format!(
                "server {id} is both a voter and an observer"
            )));
        }
        Ok(Majority { voters, observers })
    }
}

impl QuorumVerifier for Majority {
    fn is_voter(&self, id: ServerId) -> bool {
        self.voters.contains(&id)
    }
    fn is_member(&self, id: ServerId) -> bool {
        self.voters.contains(&id) || self.observers.contains(&id)
    }
    fn weight(&self, id: ServerId) -> u64 {
        u64::from(self.voters.contains(&id))
    }
    fn voters(&self) -> Vec<ServerId> {
        self.voters.iter().copied().collect()
    }
    fn contains_quorum(&self, set: &BTreeSet<ServerId>) -> bool {
        let n = set.iter().filter(|id| self.voters.contains(id)).count();
        n > self.voters.len() / 2
    }
}

/// Weighted, hierarchical quorums (ZooKeeper's `QuorumHierarchical`).
///
/// Voters are split into disjoint groups and each has a weight. A set is a
/// quorum when it holds more than half of the weight of more than half of
/// the groups; groups of total weight 0 are not counted. A voter of weight 0
/// takes part in the election but can never be elected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hierarchical {
    server_group: BTreeMap<ServerId, u64>,
    server_weight: BTreeMap<ServerId, u64>,
    group_weight: BTreeMap<u64, u64>,
    groups_with_weight: usize,
    observers: BTreeSet<ServerId>,
}

impl Hierarchical {
    /// Groups as `(group id, members)`, weights as `(server, weight)`; a
    /// voter without a weight weighs 1, as in ZooKeeper.
    pub fn new(
        groups: impl IntoIterator<Item = (u64, Vec<ServerId>)>,
        weights: impl IntoIterator<Item = (ServerId, u64)>,
    ) -> Result<Self> {
        let mut server_group = BTreeMap::new();
        for (gid, members) in groups {
            for sid in members {
                if let Some(prev) = server_group.insert(sid, gid) {
                    return Err(Error::InvalidQuorum(format!(
                        "server {sid} is in groups {prev} and {gid}"
                    )));
                }
            }
        }
        if server_group.is_empty() {
            return Err(Error::InvalidQuorum("no groups".into()));
        }
        let mut server_weight: BTreeMap<ServerId, u64> =
            server_group.keys().map(|&s| (s, 1)).collect();
        for (sid, w) in weights {
            match server_weight.get_mut(&sid) {
                Some(slot) => *slot = w,
                None => {
                    return Err(Error::InvalidQuorum(format!(
                        "weight given for server {sid}, which is in no group"
                    )));
                }
            }
        }
        let mut group_weight: BTreeMap<u64, u64> = BTreeMap::new();
        for (sid, gid) in &server_group {
            let total = group_weight.entry(*gid).or_default();
            // A quorum's weights are subsets of these sums, so checking them
            // here keeps `contains_quorum` from overflowing too.
            *total = total.checked_add(server_weight[sid]).ok_or_else(|| {
                Error::InvalidQuorum(format!(
                    "the weights of group {gid} overflow at server {sid}"
                ))
            })?;
        }
        let groups_with_weight = group_weight.values().filter(|&&w| w > 0).count();
        if groups_with_weight == 0 {
            return Err(Error::InvalidQuorum("every group weighs 0".into()));
        }
        Ok(Hierarchical {
            server_group,
            server_weight,
            group_weight,
            groups_with_weight,
            observers: BTreeSet::new(),
        })
    }

    /// Adds non-voting members.
    pub fn with_observers(mut self, observers: impl IntoIterator<Item = ServerId>) -> Result<Self> {
        for id in observers {
            if self.server_group.contains_key(&id) {
                return Err(Error::InvalidQuorum(format!(
                    "server {id} is both a voter and an observer"
                )));
            }
            self.observers.insert(id);
        }
        Ok(self)
    }
}

impl QuorumVerifier for Hierarchical {
    fn is_voter(&self, id: ServerId) -> bool {
        self.server_group.contains_key(&id)
    }
    fn is_member(&self, id: ServerId) -> bool {
        self.is_voter(id) || self.observers.contains(&id)
    }
    fn weight(&self, id: ServerId) -> u64 {
        self.server_weight.get(&id).copied().unwrap_or(0)
    }
    fn voters(&self) -> Vec<ServerId> {
        self.server_group.keys().copied().collect()
    }
    fn contains_quorum(&self, set: &BTreeSet<ServerId>) -> bool {
        if set.is_empty() {
            return false;
        }
        let mut expansion: BTreeMap<u64, u64> = BTreeMap::new();
        for sid in set {
            if let Some(gid) = self.server_group.get(sid) {
                *expansion.entry(*gid).or_default() += self.server_weight[sid];
            }
        }
        // Integer division, as in ZooKeeper: weight 3 needs 2, weight 4 needs 3.
        let majority_groups = expansion
            .iter()
            .filter(|(gid, w)| **w > self.group_weight[gid] / 2)
            .count();
        majority_groups > self.groups_with_weight / 2
    }
}

/// Either verifier, so that one concrete type can be configured at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Quorum {
    /// A simple majority.
    Majority(Majority),
    /// Weighted groups.
    Hierarchical(Hierarchical),
}

impl From<Majority> for Quorum {
    fn from(q: Majority) -> Self {
        Quorum::Majority(q)
    }
}

impl From<Hierarchical> for Quorum {
    fn from(q: Hierarchical) -> Self {
        Quorum::Hierarchical(q)
    }
}

impl QuorumVerifier for Quorum {
    fn is_voter(&self, id: ServerId) -> bool {
        match self {
            Quorum::Majority(q) => q.is_voter(id),
            Quorum::Hierarchical(q) => q.is_voter(id),
        }
    }
    fn is_member(&self, id: ServerId) -> bool {
        match self {
            Quorum::Majority(q) => q.is_member(id),
            Quorum::Hierarchical(q) => q.is_member(id),
        }
    }
    fn weight(&self, id: ServerId) -> u64 {
        match self {
            Quorum::Majority(q) => q.weight(id),
            Quorum::Hierarchical(q) => q.weight(id),
        }
    }
    fn voters(&self) -> Vec<ServerId> {
        match self {
            Quorum::Majority(q) => q.voters(),
            Quorum::Hierarchical(q) => q.voters(),
        }
    }
    fn contains_quorum(&self, set: &BTreeSet<ServerId>) -> bool {
        match self {
            Quorum::Majority(q) => q.contains_quorum(set),
            Quorum::Hierarchical(q) => q.contains_quorum(set),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[ServerId]) -> BTreeSet<ServerId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn majority_needs_more_than_half_of_the_voters() {
        let q = Majority::with_observers([1, 2, 3, 4], [9]).unwrap();
        assert!(!q.contains_quorum(&set(&[1, 2])));
        assert!(
            !q.contains_quorum(&set(&[1, 2, 9])),
            "observers count for nothing"
        );
        assert!(q.contains_quorum(&set(&[1, 2, 3])));
        assert!(q.is_member(9) && !q.is_voter(9));
        assert_eq!(q.weight(9), 0);
    }

    #[test]
    fn majority_rejects_bad_descriptions() {
        assert!(Majority::new([]).is_err());
        assert!(Majority::with_observers([1, 2], [2]).is_err());
    }

    #[test]
    fn hierarchical_needs_a_majority_of_groups_each_by_weight() {
        // ZooKeeper's HierarchicalQuorumTest shape: three groups of three.
        let q = Hierarchical::new(
            [(1, vec![1, 2, 3]), (2, vec![4, 5, 6]), (3, vec![7, 8, 9])],
            [],
        )
        .unwrap();
        assert!(q.contains_quorum(&set(&[1, 2, 4, 5])));
        assert!(!q.contains_quorum(&set(&[1, 2, 4, 7])));
        assert!(!q.contains_quorum(&set(&[1, 2, 3])));
        assert!(!q.contains_quorum(&set(&[])));
    }

    #[test]
    fn hierarchical_ignores_zero_weight_servers_and_groups() {
        let q = Hierarchical::new(
            [(1, vec![1, 2, 3]), (2, vec![4, 5, 6]), (3, vec![7])],
            [(3, 0), (7, 0)],
        )
        .unwrap();
        assert_eq!(q.weight(3), 0);
        // Group 3 weighs 0: only groups 1 and 2 count, both are needed.
        assert!(!q.contains_quorum(&set(&[1, 2, 7])));
        assert!(q.contains_quorum(&set(&[1, 2, 4, 5])));
        // Server 3 weighs nothing: {1, 3} is not a majority of group 1 (weight 2 needs 2).
        assert!(!q.contains_quorum(&set(&[1, 3, 4, 5])));
    }

    #[test]
    fn hierarchical_rejects_bad_descriptions() {
        assert!(Hierarchical::new([(1, vec![1]), (2, vec![1])], []).is_err());
        assert!(Hierarchical::new([(1, vec![1])], [(2, 1)]).is_err());
        assert!(Hierarchical::new([(1, vec![1])], [(1, 0)]).is_err());
        let e = Hierarchical::new([(7, vec![1, 2])], [(1, u64::MAX), (2, 1)]).unwrap_err();
        assert!(e.to_string().contains("group 7"), "{e}");
    }
}
