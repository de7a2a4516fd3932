//! The text of an API key: `vcos_<id>_<secret><check>`.
//!
//! - `id`: 16 lowercase hex digits (64 random bits), the key's public name: listed, logged,
//!   recorded in the audit log;
//! - `secret`: 43 base62 characters drawn uniformly (43 × log2 62 ≈ 256 bits);
//! - `check`: 6 base62 characters, the CRC-32 of everything before it, so that a leaked key is
//!   recognisable by scanners and a mistyped one is refused without a lookup.
//!
//! Only the SHA-256 of the whole text is stored; a presented key is hashed and compared in
//! constant time. A fast hash is right here: the secret has 256 bits of entropy, so there is
//! nothing to stretch (as with GitHub's and Stripe's keys).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts so.
pub const KEY_PREFIX: &str = "vcos_";
/// Hex digits of a key id.
pub const KEY_ID_LEN: usize = 16;
/// Base62 characters of the secret.
pub const SECRET_LEN: usize = 43;
/// Base62 characters of the checksum.
pub const CHECK_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_ID_LEN + 1 + SECRET_LEN + CHECK_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random bytes for keys and secrets. Production reads the OS generator; the simulator
/// passes a seeded one (like the clock, it is injected: nothing here calls the OS itself).
pub trait SecretSource: Send + Sync + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's generator (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSecrets;

impl SecretSource for OsSecrets {
    fn fill(&self, buf: &mut [u8]) {
        if let Err(e) = getrandom::fill(buf) {
            // No entropy means no safe key: refusing to continue is the only sound answer.
            panic!("the OS random generator failed: {e}");
        }
    }
}

/// Why a presented key is not one of ours (the message never repeats the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not `vcos_…`.
    #[error("API keys start with `{KEY_PREFIX}`")]
    Prefix,
    /// Wrong length.
    #[error("API keys are {KEY_LEN} characters (got {0})")]
    Length(usize),
    /// A character outside the key alphabet, or misplaced.
    #[error("an API key is `{KEY_PREFIX}<16 hex digits>_<49 letters or digits>`")]
    Shape,
    /// The checksum does not match: mistyped or truncated.
    #[error("the API key's checksum does not match (mistyped or cut short?)")]
    Checksum,
}

/// A key as issued: its id and its whole text (shown once).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyText {
    id: String,
    text: String,
}

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret by accident.
        write!(f, "KeyText({KEY_PREFIX}{}_…)", self.id)
    }
}

impl KeyText {
    /// Draws a new key from `source`.
    pub fn generate(source: &dyn SecretSource) -> Self {
        let mut id_bytes = [0u8; KEY_ID_LEN / 2];
        source.fill(&mut id_bytes);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut text = String::with_capacity(KEY_LEN);
        text.push_str(KEY_PREFIX);
        text.push_str(&id);
        text.push('_');
        push_uniform_base62(source, SECRET_LEN, &mut text);
        let check = crc32fast::hash(text.as_bytes());
        push_base62_fixed(u64::from(check), CHECK_LEN, &mut text);
        Self { id, text }
    }

    /// Checks the shape and checksum of a presented key.
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        if !text.starts_with(KEY_PREFIX) {
            return Err(KeyFormatError::Prefix);
        }
        if text.len() != KEY_LEN {
            return Err(KeyFormatError::Length(text.len()));
        }
        let bytes = text.as_bytes();
        let id = &bytes[KEY_PREFIX.len()..KEY_PREFIX.len() + KEY_ID_LEN];
        let separator = bytes[KEY_PREFIX.len() + KEY_ID_LEN];
        let rest = &bytes[KEY_PREFIX.len() + KEY_ID_LEN + 1..];
        let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if !id.iter().all(hex) || separator != b'_' || !rest.iter().all(u8::is_ascii_alphanumeric) {
            return Err(KeyFormatError::Shape);
        }
        let body = &text[..KEY_LEN - CHECK_LEN];
        let mut expected = String::with_capacity(CHECK_LEN);
        push_base62_fixed(u64::from(crc32fast::hash(body.as_bytes())), CHECK_LEN, &mut expected);
        if expected.as_bytes() != &bytes[KEY_LEN - CHECK_LEN..] {
            return Err(KeyFormatError::Checksum);
        }
        Ok(Self {
            id: text[KEY_PREFIX.len()..KEY_PREFIX.len() + KEY_ID_LEN].to_owned(),
            text: text.to_owned(),
        })
    }

    /// The key's public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole key (the secret: show it once, never log it).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// What is stored: the SHA-256 of the whole text.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.text.as_bytes()).into()
    }

    /// Whether this key hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        self.hash().ct_eq(stored).into()
    }
}

/// Whether `id` has the shape of a key id (path segments, listings).
pub fn is_key_id(id: &str) -> bool {
    id.len() == KEY_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Appends `n` characters drawn uniformly from the base62 alphabet (rejection sampling: a
/// byte below 248 = 4 × 62 maps without bias).
fn push_uniform_base62(source: &dyn SecretSource, n: usize, out: &mut String) {
    let mut pushed = 0;
    let mut buf = [0u8; 64];
    while pushed < n {
        source.fill(&mut buf);
        for b in buf {
            if pushed == n {
                break;
            }
            if b < 248 {
                out.push(char::from(BASE62[usize::from(b % 62)]));
                pushed += 1;
            }
        }
    }
}

/// Appends `value` in base62, most significant digit first, padded to `width`.
fn push_base62_fixed(mut value: u64, width: usize, out: &mut String) {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out.extend(digits.into_iter().map(char::from));
}

/// The hex form of a stored hash.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored hash from its hex form.
pub fn hash_from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A counter-based source (tests only): distinct, reproducible bytes.
    struct Counting(AtomicU64);

    impl SecretSource for Counting {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                let n = self.0.fetch_add(1, Ordering::Relaxed);
                *b = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
            }
        }
    }

    #[test]
    fn an_issued_key_parses_back_and_matches_its_hash() {
        let key = KeyText::generate(&OsSecrets);
        assert_eq!(key.expose().len(), KEY_LEN);
        let parsed = KeyText::parse(key.expose()).expect("parses");
        assert_eq!(parsed.id(), key.id());
        assert!(parsed.matches(&key.hash()));
        assert!(!KeyText::generate(&OsSecrets).matches(&key.hash()));
        assert_eq!(hash_from_hex(&hash_hex(&key.hash())), Some(key.hash()));
        assert!(!format!("{key:?}").contains(&key.expose()[KEY_PREFIX.len() + KEY_ID_LEN + 1..]));
    }

    #[test]
    fn damaged_keys_are_refused_with_their_reason() {
        let key = KeyText::generate(&Counting(AtomicU64::new(7)));
        let text = key.expose();
        assert_eq!(KeyText::parse("Bearer x"), Err(KeyFormatError::Prefix));
        assert_eq!(KeyText::parse(&text[..KEY_LEN - 1]), Err(KeyFormatError::Length(KEY_LEN - 1)));
        let mut flipped = text.as_bytes().to_vec();
        let i = KEY_PREFIX.len() + KEY_ID_LEN + 5;
        flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(KeyText::parse(std::str::from_utf8(&flipped).expect("ascii")), Err(KeyFormatError::Checksum));
        let spaced = text.replacen('_', " ", 2);
        assert_eq!(KeyText::parse(&spaced), Err(KeyFormatError::Prefix));
        let mut shaped = text.as_bytes().to_vec();
        shaped[KEY_PREFIX.len() + KEY_ID_LEN] = b'-';
        assert_eq!(KeyText::parse(std::str::from_utf8(&shaped).expect("ascii")), Err(KeyFormatError::Shape));
    }

    proptest::proptest! {
        #[test]
        fn no_string_but_an_issued_key_parses(s in "vcos_[0-9a-f]{16}_[0-9A-Za-z]{49}") {
            // A random well-shaped string passes the checksum about once in 2^32.
            let parsed = KeyText::parse(&s);
            proptest::prop_assert!(matches!(parsed, Err(KeyFormatError::Checksum)) || parsed.is_ok());
        }
    }
}
