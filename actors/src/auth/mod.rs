//! Who may do what: API keys issued by the server and stored hashed ([`key`]), the roles
//! they carry ([`role`]), and the canon-backed registry that issues and checks them
//! ([`registry`]). The HTTP facade authenticates every request with it; the handshake's
//! compliance stage (45) decides from the same principal.

pub mod key;
pub mod registry;
pub mod role;

pub use key::{KeyFormatError, KeyText, OsSecrets, SecretSource};
pub use registry::{AuthError, Bootstrap, KeyRecord, KeyRegistry, KeyRequest, Principal};
pub use role::{Permission, Role};
