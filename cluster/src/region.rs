//! Regions in IMVU ids: every id carries the tag of the region that created it (its home,
//! whose canon holds the IMVU), so that any node of any region can route a message for it
//! without a directory lookup.
//!
//! A tag is a fixed hash of the region's name, so every node computes the same one without
//! agreeing on anything: regions are separate Raft groups and share no counter. Two names
//! could hash to one tag; a node refuses to start in a region whose tag another region it
//! knows already has ([`tag_collision`]), so that an id never names two homes.

use vcos_actors::ImvuId;

/// The region whose ids carry no tag (tag 0): `vcos up`'s default, so that a lone node
/// numbers its IMVUs 1, 2, 3, …
pub const UNTAGGED_REGION: &str = "local";

/// The tag of `region`: 0 for [`UNTAGGED_REGION`], else 1 ..= [`ImvuId::REGION_TAG_MAX`].
pub fn region_tag(region: &str) -> u16 {
    if region == UNTAGGED_REGION {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in region.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tags = u64::from(ImvuId::REGION_TAG_MAX);
    // In range by construction: 1 + (x mod 8191) ≤ 8191.
    1 + u16::try_from(hash % tags).unwrap_or(0)
}

/// The first region among `others` (not `home` itself) that has `home`'s tag.
pub fn tag_collision<'a>(home: &str, others: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let tag = region_tag(home);
    others.into_iter().find(|other| *other != home && region_tag(other) == tag)
}

/// Where an id's IMVU lives, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// In this node's region (or untagged: made before tags, by this region).
    Here,
    /// In another region, by name.
    Region(String),
}

/// The home of `id` for a node of region `here`, among the `known` region names (this node's
/// canon groups and the members' regions). `None`: no known region has the id's tag. An
/// untagged id belongs to [`UNTAGGED_REGION`] if the cluster has one, else to the region asked
/// (ids made before tags).
pub fn home_of<'a>(id: ImvuId, here: &str, known: impl IntoIterator<Item = &'a str>) -> Option<Home> {
    let tag = id.region_tag();
    if tag == region_tag(here) {
        return Some(Home::Here);
    }
    let found = known.into_iter().find(|region| region_tag(region) == tag).map(|region| Home::Region(region.to_owned()));
    if tag == 0 {
        return Some(found.unwrap_or(Home::Here));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_in_range_and_stable() {
        for name in ["eu", "us", "ap-south-1", "a", "region_with_a_long_name_0123456789", "locals"] {
            let tag = region_tag(name);
            assert!((1..=ImvuId::REGION_TAG_MAX).contains(&tag), "{name}: {tag}");
            assert_eq!(tag, region_tag(name));
        }
        assert_ne!(region_tag("eu"), region_tag("us"));
    }

    #[test]
    fn homes_follow_the_tag() {
        let us = ImvuId::tagged(region_tag("us"), 7).expect("in range");
        let eu = ImvuId::tagged(region_tag("eu"), 7).expect("in range");
        let known = ["eu", "us"];
        assert_eq!(home_of(us, "eu", known), Some(Home::Region("us".into())));
        assert_eq!(home_of(eu, "eu", known), Some(Home::Here));
        assert_eq!(home_of(ImvuId(7), "eu", known), Some(Home::Here), "untagged ids belong to the region asked");
        assert_eq!(home_of(ImvuId(7), "eu", ["eu", "local"]), Some(Home::Region("local".into())), "…or to `local`, if there is one");
        assert_eq!(home_of(ImvuId(7), "local", ["eu", "local"]), Some(Home::Here));
        assert_eq!(region_tag(UNTAGGED_REGION), 0);
        let nowhere = ImvuId::tagged(region_tag("ap"), 7).expect("in range");
        assert_eq!(home_of(nowhere, "eu", known), None);
        assert_eq!(home_of(ImvuId(u64::MAX), "eu", known), None, "an id from outside with a tag out of range");
    }

    #[test]
    fn ids_stay_exact_in_json_clients() {
        let largest = ImvuId::tagged(ImvuId::REGION_TAG_MAX, (1 << ImvuId::SEQUENCE_BITS) - 1).expect("in range");
        assert!(largest.0 < 1 << 53);
        assert_eq!(largest.region_tag(), ImvuId::REGION_TAG_MAX);
        assert!(ImvuId::tagged(ImvuId::REGION_TAG_MAX + 1, 1).is_none());
        assert!(ImvuId::tagged(1, 1 << ImvuId::SEQUENCE_BITS).is_none());
    }

    #[test]
    fn a_colliding_name_is_found() {
        // Search a name that collides with "eu" (13-bit tags: a few thousand tries).
        let twin = (0..200_000).map(|i| format!("r{i}")).find(|name| region_tag(name) == region_tag("eu")).expect("a collision exists");
        assert_eq!(tag_collision("eu", ["us", twin.as_str()]), Some(twin.as_str()));
        assert_eq!(tag_collision("eu", ["eu", "us"]), None);
    }
}
