//! Node-to-node authentication: the cluster secret and the handshake every canon connection
//! opens with.
//!
//! Every node of a cluster holds the same secret (256 bits; `vcos up` keeps it in
//! `<data-dir>/cluster.secret`). Before any frame, the two ends of a canon connection prove to
//! each other that they hold it, without sending it (HMAC-SHA256 challenge-response):
//!
//! ```text
//! client → server   "VCOSAUTH" 1 nonce_c[32]
//! server → client   nonce_s[32] HMAC(k, "vcos-canon-server" nonce_c nonce_s)
//! client → server   HMAC(k, "vcos-canon-client" nonce_s nonce_c)
//! ```
//!
//! A node refuses (and logs and counts, `vcos_canon_auth_refused_total{reason}`) a peer that
//! cannot prove it: it can neither join, nor replicate, nor send a frame. The same secret tags
//! every gossip datagram (`vcos_cluster`'s membership frames).
//!
//! Rotation: a secret file may hold several secrets, one per line; the first is the one a node
//! proves with, all are accepted. Add the new secret as a second line on every node, then make
//! it the first, then remove the old one (a rolling restart for each step).
//!
//! What this is not: encryption. Frames after the handshake are not sealed; on an untrusted
//! network, run the canon port inside a private network or a TLS tunnel.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand08::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::transport::{BoxStream, ConnectFuture, Transport};

/// Bytes of one secret.
pub const SECRET_LEN: usize = 32;
/// Secrets one file may hold (the active one and those still accepted during a rotation).
pub const SECRETS_MAX: usize = 4;
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a client says first.
const GREETING: &[u8; 8] = b"VCOSAUTH";
/// The handshake's version.
const HANDSHAKE_VERSION: u8 = 1;

/// The secrets of a cluster: the first is proved with, all are accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    keys: Vec<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} key(s))", self.keys.len())
    }
}

/// Why a secret file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secret in it.
    #[error("no secret: expected lines of {} hex digits", SECRET_LEN * 2)]
    Empty,
    /// A line that is not a secret.
    #[error("line {line}: expected {} hex digits", SECRET_LEN * 2)]
    Line {
        /// 1-based.
        line: usize,
    },
    /// Too many.
    #[error("{0} secrets; at most {SECRETS_MAX}")]
    TooMany(usize),
}

impl ClusterSecret {
    /// One fresh secret from `fill` (the OS generator in `vcos up`, a seeded one in the
    /// simulator).
    pub fn generate(fill: impl FnOnce(&mut [u8])) -> Self {
        let mut key = [0u8; SECRET_LEN];
        fill(&mut key);
        Self { keys: vec![key] }
    }

    /// Parses a secret file: one secret per line in hex, `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            keys.push(parse_hex(line).ok_or(SecretError::Line { line: i + 1 })?);
        }
        match keys.len() {
            0 => Err(SecretError::Empty),
            n if n > SECRETS_MAX => Err(SecretError::TooMany(n)),
            _ => Ok(Self { keys }),
        }
    }

    /// The file form: one hex line per secret, the active one first.
    pub fn to_text(&self) -> String {
        self.keys.iter().map(|k| format!("{}\n", k.iter().map(|b| format!("{b:02x}")).collect::<String>())).collect()
    }

    /// HMAC-SHA256 of `parts` under the active secret.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        mac_with(&self.keys[0], parts)
    }

    /// Whether `tag` (a whole or truncated HMAC-SHA256 of `parts`) was made with one of the
    /// accepted secrets; compared in constant time. Returns which one.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> Option<usize> {
        self.keys.iter().position(|key| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
            for part in parts {
                mac.update(part);
            }
            mac.verify_truncated_left(tag).is_ok()
        })
    }

    fn with_key(&self, index: usize) -> &[u8; SECRET_LEN] {
        &self.keys[index.min(self.keys.len() - 1)]
    }
}

fn unreachable_key() -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; SECRET_LEN]).expect("HMAC accepts any key length")
}

fn mac_with(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn parse_hex(line: &str) -> Option<[u8; SECRET_LEN]> {
    if line.len() != SECRET_LEN * 2 {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(line.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn refused(reason: &'static str) -> String {
    metrics::counter!("vcos_canon_auth_refused_total", "reason" => reason).increment(1);
    reason.to_owned()
}

fn nonce() -> [u8; 32] {
    // Nonces must not repeat, not be secret: the node's seeded source (deterministic in the
    // simulator) is enough; a peer without the secret cannot answer whatever it predicts.
    let mut n = [0u8; 32];
    crate::runtime::ThreadSeededRng.fill_bytes(&mut n);
    n
}

/// The client's half: proves the secret to the server and checks the server's proof.
pub(crate) async fn client_handshake(stream: &mut BoxStream, secret: &ClusterSecret) -> Result<(), String> {
    let exchange = async {
        let nonce_c = nonce();
        let mut hello = Vec::with_capacity(41);
        hello.extend_from_slice(GREETING);
        hello.push(HANDSHAKE_VERSION);
        hello.extend_from_slice(&nonce_c);
        stream.write_all(&hello).await.map_err(|e| format!("send the greeting: {e}"))?;
        let mut challenge = [0u8; 64];
        stream.read_exact(&mut challenge).await.map_err(|e| format!("no challenge (the peer refused us?): {e}"))?;
        let (nonce_s, server_mac) = challenge.split_at(32);
        let Some(index) = secret.verify(&[b"vcos-canon-server", &nonce_c, nonce_s], server_mac) else {
            return Err(refused("peer_without_secret"));
        };
        let proof = mac_with(secret.with_key(index), &[b"vcos-canon-client", nonce_s, &nonce_c]);
        stream.write_all(&proof).await.map_err(|e| format!("send the proof: {e}"))?;
        stream.flush().await.map_err(|e| format!("send the proof: {e}"))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await.map_err(|_| refused("handshake_timeout"))?
}

/// The server's half: checks the client's proof; returns why it failed.
pub(crate) async fn server_handshake(stream: &mut BoxStream, secret: &ClusterSecret) -> Result<(), String> {
    let exchange = async {
        let mut hello = [0u8; 41];
        stream.read_exact(&mut hello).await.map_err(|_| refused("no_greeting"))?;
        if &hello[..8] != GREETING || hello[8] != HANDSHAKE_VERSION {
            return Err(refused("not_a_node"));
        }
        let nonce_c = &hello[9..];
        let nonce_s = nonce();
        let mut challenge = Vec::with_capacity(64);
        challenge.extend_from_slice(&nonce_s);
        challenge.extend_from_slice(&secret.mac(&[b"vcos-canon-server", nonce_c, &nonce_s]));
        stream.write_all(&challenge).await.map_err(|_| refused("closed"))?;
        stream.flush().await.map_err(|_| refused("closed"))?;
        let mut proof = [0u8; 32];
        stream.read_exact(&mut proof).await.map_err(|_| refused("no_proof"))?;
        match secret.verify(&[b"vcos-canon-client", &nonce_s, nonce_c], &proof) {
            Some(_) => Ok(()),
            None => Err(refused("wrong_secret")),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await.map_err(|_| refused("handshake_timeout"))?
}

/// Dials through `inner`, then proves the secret: a peer that cannot prove it back is
/// unreachable (`PermissionDenied`), so nothing is sent to it.
pub(crate) struct AuthTransport {
    pub(crate) inner: std::sync::Arc<dyn Transport>,
    pub(crate) secret: std::sync::Arc<ClusterSecret>,
}

impl Transport for AuthTransport {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let dial = self.inner.connect(addr);
        let secret = std::sync::Arc::clone(&self.secret);
        let addr = addr.to_owned();
        Box::pin(async move {
            let mut stream = dial.await?;
            if let Err(reason) = client_handshake(&mut stream, &secret).await {
                tracing::warn!(%addr, %reason, "canon peer refused: it did not prove the cluster secret");
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("cluster handshake with {addr}: {reason}")));
            }
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> ClusterSecret {
        ClusterSecret::generate(|b| b.fill(byte))
    }

    async fn shake(client: ClusterSecret, server: ClusterSecret) -> (Result<(), String>, Result<(), String>) {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b): (BoxStream, BoxStream) = (Box::new(a), Box::new(b));
        let server = tokio::spawn(async move { server_handshake(&mut b, &server).await });
        let client = client_handshake(&mut a, &client).await;
        drop(a);
        (client, server.await.expect("no panic"))
    }

    #[tokio::test]
    async fn the_same_secret_passes_another_is_refused_both_ways() {
        let (c, s) = shake(secret(1), secret(1)).await;
        assert_eq!((c, s), (Ok(()), Ok(())));
        let (c, s) = shake(secret(1), secret(2)).await;
        assert!(c.is_err() && s.is_err(), "{c:?} {s:?}");
    }

    #[tokio::test]
    async fn during_a_rotation_old_and_new_secrets_meet() {
        // Step 1 on some nodes: old first, new accepted. Step 2 on others: new first.
        let lines = |a: u8, b: u8| ClusterSecret::parse(&format!("{}{}", secret(a).to_text(), secret(b).to_text())).expect("two lines");
        let (old_only, step1, step2) = (secret(1), lines(1, 2), lines(2, 1));
        for (client, server) in [(&old_only, &step1), (&step1, &old_only), (&step1, &step2), (&step2, &step1)] {
            let (c, s) = shake(client.clone(), server.clone()).await;
            assert_eq!((c, s), (Ok(()), Ok(())));
        }
        let (c, s) = shake(old_only, step2).await;
        assert!(c.is_err() && s.is_err(), "a node that skipped step 1 is left out");
    }

    #[test]
    fn secret_files_parse_and_bad_ones_say_where() {
        let s = secret(7);
        assert_eq!(ClusterSecret::parse(&format!("# cluster secret\n\n{}", s.to_text())), Ok(s));
        assert_eq!(ClusterSecret::parse(""), Err(SecretError::Empty));
        assert_eq!(ClusterSecret::parse("abc\n"), Err(SecretError::Line { line: 1 }));
        let many = (0..5).map(|i| secret(i).to_text()).collect::<String>();
        assert_eq!(ClusterSecret::parse(&many), Err(SecretError::TooMany(5)));
    }

    #[test]
    fn truncated_tags_verify() {
        let s = secret(3);
        let tag = s.mac(&[b"datagram"]);
        assert_eq!(s.verify(&[b"datagram"], &tag[..16]), Some(0));
        assert_eq!(s.verify(&[b"datagrax"], &tag[..16]), None);
        assert_eq!(secret(4).verify(&[b"datagram"], &tag[..16]), None);
    }
}
