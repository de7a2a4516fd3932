//! Rendezvous (highest random weight) hashing of buckets onto the alive members of a region.
//!
//! Deterministic: the score is a fixed mix of the bucket and the node id (no per-process hash
//! seed), and ties break on the node id, so every node with the same view picks the same
//! owner.

/// Buckets per region. A power of two; IMVUs map to buckets by a fixed hash of their key.
pub const BUCKETS: u16 = 256;

const _: () = assert!(BUCKETS.is_power_of_two());

/// FNV-1a over the tenant name and the id: stable across processes and versions.
pub fn bucket_of(tenant: &str, id: u64) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in tenant.as_bytes().iter().copied().chain([b'/']).chain(id.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone mix poorly for short inputs.
    ((hash ^ (hash >> 32) ^ (hash >> 16)) & u64::from(BUCKETS - 1)) as u16
}

/// splitmix64's finaliser: a strong, fixed 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The rendezvous score of `node` for `bucket`.
pub fn score(bucket: u16, node: u64) -> u64 {
    mix(mix(node) ^ u64::from(bucket).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The member with the highest score for `bucket`; `None` when there is none.
pub fn owner_of(bucket: u16, members: impl IntoIterator<Item = u64>) -> Option<u64> {
    members.into_iter().max_by_key(|&node| (score(bucket, node), node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(members: &[u64]) -> Vec<Option<u64>> {
        (0..BUCKETS).map(|b| owner_of(b, members.iter().copied())).collect()
    }

    #[test]
    fn buckets_spread_evenly_over_keys() {
        let mut counts = vec![0u32; usize::from(BUCKETS)];
        for id in 1..=256_000u64 {
            counts[usize::from(bucket_of("default", id))] += 1;
        }
        let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        assert!(min > 800 && max < 1200, "1,000 keys per bucket expected, got {min}..{max}");
    }

    #[test]
    fn owners_spread_evenly_over_members() {
        let members: Vec<u64> = (1..=5).collect();
        let mut counts = [0u32; 6];
        for owner in owners(&members).into_iter().flatten() {
            counts[owner as usize] += 1;
        }
        for node in 1..=5 {
            assert!((30..=75).contains(&counts[node]), "node {node} owns {} of 256 buckets", counts[node]);
        }
    }

    /// Keys moved when a member joins or leaves: about 1/N, and only to (or from) that member.
    #[test]
    fn a_join_or_leave_moves_about_one_nth() {
        for n in [3u64, 5, 10, 20] {
            let before: Vec<u64> = (1..=n).collect();
            let after: Vec<u64> = (1..=n + 1).collect();
            let (old, new) = (owners(&before), owners(&after));
            let moved: Vec<usize> = (0..old.len()).filter(|&b| old[b] != new[b]).collect();
            for &b in &moved {
                assert_eq!(new[b], Some(n + 1), "a join moves buckets only to the new member");
            }
            let fraction = moved.len() as f64 / f64::from(BUCKETS);
            let ideal = 1.0 / (n + 1) as f64;
            assert!((fraction - ideal).abs() < ideal * 0.6, "n={n}: moved {fraction:.3}, ideal {ideal:.3}");
            // Leaving is the same computation read backwards: only the leaver's buckets move.
            for b in 0..old.len() {
                if new[b] != Some(n + 1) {
                    assert_eq!(old[b], new[b]);
                }
            }
        }
    }

    #[test]
    fn no_members_no_owner_and_ties_are_stable() {
        assert_eq!(owner_of(7, std::iter::empty()), None);
        assert_eq!(owner_of(7, [4]), Some(4));
        let a = owner_of(9, [1, 2, 3]);
        let b = owner_of(9, [3, 2, 1]);
        assert_eq!(a, b, "the order of the view does not matter");
    }
}
