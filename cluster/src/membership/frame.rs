//! The membership datagram frame: a 12-byte header before foca's payload.
//!
//! ```text
//! 0..2   magic "VM"
//! 2      version (1)
//! 3      kind: 0 foca payload, 1 join request, 2 leaving notice, 3 id conflict
//! 4..12  cluster id (FNV-1a of the cluster name, little endian; the canon uses the same hash)
//! 12..   body
//! -16..  HMAC-SHA256 tag of all the above under the cluster secret (truncated to 16 bytes)
//! ```
//!
//! A datagram that is too short, too long, of another magic, version or cluster, or of an
//! unknown kind is dropped and counted (`cluster_datagrams_dropped_total{reason}`), never
//! answered and never a panic.

/// Bytes of the header.
pub const HEADER_LEN: usize = 12;
/// Bytes of the HMAC tag that ends every datagram of a cluster with a secret (HMAC-SHA256 of
/// header and body under the cluster secret, truncated).
pub const TAG_LEN: usize = 16;
/// Largest datagram sent or accepted, header included (fits a 1,500-byte MTU with room to spare).
pub const DATAGRAM_LEN_MAX: usize = 1_400;
/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"VM";
/// The frame layout's version.
pub const VERSION: u8 = 1;

/// The cluster id frames carry: FNV-1a 64 of the cluster name (the same function as
/// `vcos_canon_raft::node::cluster_id`, so one name gives one id everywhere).
pub fn cluster_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A foca message.
    Foca = 0,
    /// "Announce to me": the body is the sender's identity (postcard). Seeds are known only by
    /// address, and foca accepts an announce only when it names the receiver's identity, so
    /// the joiner asks the seed to announce to it instead.
    Join = 1,
    /// "I am leaving": the body is the sender's identity (postcard); receivers mark it left.
    Leaving = 2,
    /// "Your node id belongs to another process": the body is the winning identity
    /// (postcard), sent by a member that holds it as current to a sender that lost to it.
    Conflict = 3,
}

/// Why a datagram was dropped (the `reason` label of the drop counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than the header.
    Short,
    /// Longer than [`DATAGRAM_LEN_MAX`].
    Oversized,
    /// Not our magic.
    Magic,
    /// Another frame version.
    Version,
    /// Another cluster.
    Foreign,
    /// Unknown frame kind.
    Kind,
    /// The body did not decode or foca refused it.
    Malformed,
    /// From a node whose identity lost a duplicate-id conflict, or to a core that lost one.
    Conflict,
    /// No valid tag: sent without the cluster secret (or altered on the way).
    Unauthenticated,
}

impl DropReason {
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Oversized => "oversized",
            Self::Magic => "magic",
            Self::Version => "version",
            Self::Foreign => "foreign_cluster",
            Self::Kind => "kind",
            Self::Malformed => "malformed",
            Self::Conflict => "conflict",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Writes a header for `kind` into a fresh buffer sized for a whole datagram.
pub fn header(cluster: u64, kind: FrameKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATAGRAM_LEN_MAX);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&cluster.to_le_bytes());
    out
}

/// Checks a datagram's header; returns its kind and body.
pub fn parse(cluster: u64, datagram: &[u8]) -> Result<(FrameKind, &[u8]), DropReason> {
    if datagram.len() > DATAGRAM_LEN_MAX {
        return Err(DropReason::Oversized);
    }
    let (head, body) = datagram.split_at_checked(HEADER_LEN).ok_or(DropReason::Short)?;
    if head[0..2] != MAGIC {
        return Err(DropReason::Magic);
    }
    if head[2] != VERSION {
        return Err(DropReason::Version);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[4..12]);
    if u64::from_le_bytes(id) != cluster {
        return Err(DropReason::Foreign);
    }
    let kind = match head[3] {
        0 => FrameKind::Foca,
        1 => FrameKind::Join,
        2 => FrameKind::Leaving,
        3 => FrameKind::Conflict,
        _ => return Err(DropReason::Kind),
    };
    Ok((kind, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_fnv1a() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(cluster_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(cluster_id("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn headers_round_trip_and_bad_ones_name_their_reason() {
        let cluster = cluster_id("prod");
        let mut frame = header(cluster, FrameKind::Join);
        frame.extend_from_slice(b"body");
        assert_eq!(parse(cluster, &frame), Ok((FrameKind::Join, &b"body"[..])));
        assert_eq!(parse(cluster_id("other"), &frame), Err(DropReason::Foreign));
        assert_eq!(parse(cluster, &frame[..5]), Err(DropReason::Short));
        assert_eq!(parse(cluster, &vec![0u8; DATAGRAM_LEN_MAX + 1]), Err(DropReason::Oversized));
        let mut bad = frame.clone();
        bad[0] = b'X';
        assert_eq!(parse(cluster, &bad), Err(DropReason::Magic));
        let mut bad = frame.clone();
        bad[2] = 9;
        assert_eq!(parse(cluster, &bad), Err(DropReason::Version));
        let mut bad = frame;
        bad[3] = 7;
        assert_eq!(parse(cluster, &bad), Err(DropReason::Kind));
    }
}
