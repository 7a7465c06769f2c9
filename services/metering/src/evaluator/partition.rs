//! Aodh's consistent hash ring, which splits alarms between evaluators (`aodh/coordination.py`,
//! `HashRing`): each member is hashed [`REPLICAS`] times as `md5("<member>-<r>")`, first four
//! bytes big-endian; an id belongs to the member of the first ring key greater than the id's
//! hash, wrapping around to the smallest key.
//!
//! Every evaluator that builds the ring from the same members assigns every id to the same
//! member, and when a member leaves only the ids it held move. This module owns the ring only;
//! who the members are is `membership`'s business.

use std::collections::BTreeMap;
use std::ops::Bound;

use md5::{Digest, Md5};

/// Ring keys per member, as in Aodh.
pub const REPLICAS: u32 = 100;

/// A consistent hash ring over evaluator member ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashRing {
    /// Ring key → member. On a (rare) 32-bit collision the member inserted last wins, as in
    /// Aodh's dict; members are inserted in sorted order so the outcome does not depend on
    /// the order they were given in.
    ring: BTreeMap<u32, String>,
}

impl HashRing {
    /// A ring of `members` with [`REPLICAS`] keys each. Duplicates count once.
    pub fn new<I, S>(members: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sorted: Vec<String> = members.into_iter().map(|m| m.as_ref().to_owned()).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ring = BTreeMap::new();
        for member in sorted {
            for replica in 0..REPLICAS {
                ring.insert(hash(&format!("{member}-{replica}")), member.clone());
            }
        }
        Self { ring }
    }

    /// The member that owns `id`; `None` for an empty ring.
    pub fn node(&self, id: &str) -> Option<&str> {
        let key = hash(id);
        self.ring
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .or_else(|| self.ring.iter().next())
            .map(|(_, member)| member.as_str())
    }

    /// Whether `member` owns `id`.
    pub fn belongs_to(&self, member: &str, id: &str) -> bool {
        self.node(id) == Some(member)
    }

    /// True when the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// Aodh's ring hash: the first four bytes of the MD5 digest, big-endian.
pub fn hash(key: &str) -> u32 {
    let digest = Md5::digest(key.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_python_struct_unpack_of_md5() {
        // struct.unpack_from('>I', hashlib.md5(key).digest())[0]
        assert_eq!(hash("evaluator-a-0"), 1_245_168_199);
        assert_eq!(hash("evaluator-b-99"), 959_029_501);
        assert_eq!(hash("alarm-1"), 976_526_900);
    }

    #[test]
    fn assignment_matches_aodh_hash_ring() {
        // Computed with Aodh's HashRing(['evaluator-a', 'evaluator-b', 'evaluator-c']).
        let ring = HashRing::new(["evaluator-c", "evaluator-a", "evaluator-b"]);
        let got: Vec<_> = (0..10)
            .map(|i| {
                ring.node(&format!("alarm-{i}"))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let want =
            ["a", "c", "c", "c", "b", "b", "b", "a", "a", "a"].map(|m| format!("evaluator-{m}"));
        assert_eq!(got, want);
    }

    #[test]
    fn empty_ring_owns_nothing() {
        let ring = HashRing::new(Vec::<String>::new());
        assert!(ring.is_empty());
        assert_eq!(ring.node("x"), None);
    }
}
