//! Node identity: a self-signed certificate kept in the data directory, and the node ID
//! derived from it (SHA-256 of the DER certificate), written the way syncthing writes device
//! IDs: base32 in groups, with check characters so a mistyped ID is caught.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::NetError;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A node's ID: the SHA-256 of its certificate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The ID of the node presenting certificate `der`.
    pub fn of_certificate(der: &[u8]) -> NodeId {
        NodeId(Sha256::digest(der).into())
    }

    /// A short form for logs (first group).
    pub fn short(&self) -> String {
        self.to_string()[..7].to_owned()
    }
}

fn base32(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(52);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Luhn mod 32 check character of `s` (syncthing's device-ID scheme).
fn check_char(s: &[u8]) -> Option<u8> {
    let mut factor = 1;
    let mut sum = 0u32;
    for &c in s {
        let code = ALPHABET.iter().position(|&a| a == c)? as u32;
        let mut addend = factor * code;
        factor = if factor == 2 { 1 } else { 2 };
        addend = addend / 32 + addend % 32;
        sum += addend;
    }
    Some(ALPHABET[((32 - sum % 32) % 32) as usize])
}

impl fmt::Display for NodeId {
    /// 8 groups of 7 characters: 52 base32 characters in 4 chunks of 13, each followed by its
    /// check character.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = base32(&self.0);
        let mut with_checks = Vec::with_capacity(56);
        for chunk in b.as_bytes().chunks(13) {
            with_checks.extend_from_slice(chunk);
            with_checks.push(check_char(chunk).unwrap_or(b'A'));
        }
        for (i, group) in with_checks.chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).unwrap_or(""))?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = NetError;

    /// Parses an ID as printed (dashes and spaces optional, case-insensitive); a wrong
    /// character is caught by the check characters.
    fn from_str(s: &str) -> Result<NodeId, NetError> {
        let bad = |why: &str| NetError::BadNodeId(format!("{s:?}: {why}"));
        let clean: Vec<u8> = s
            .bytes()
            .filter(|b| *b != b'-' && !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_uppercase())
            .collect();
        if clean.len() != 56 {
            return Err(bad("a node ID has 56 characters (8 groups of 7)"));
        }
        let mut data = Vec::with_capacity(52);
        for chunk in clean.chunks(14) {
            let (body, check) = chunk.split_at(13);
            match check_char(body) {
                None => return Err(bad("characters outside A-Z and 2-7")),
                Some(c) if c != check[0] => return Err(bad("check character mismatch (a typo?)")),
                Some(_) => data.extend_from_slice(body),
            }
        }
        let mut out = [0u8; 32];
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut i = 0;
        for &c in &data {
            let v = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| bad("bad character"))? as u64;
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if i < 32 {
                    out[i] = (acc >> bits) as u8;
                }
                i += 1;
            }
        }
        if acc & ((1 << bits) - 1) != 0 {
            return Err(bad("trailing bits set"));
        }
        Ok(NodeId(out))
    }
}

/// This node's certificate and key.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    id: NodeId,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            id: self.id,
        }
    }
}

impl Identity {
    /// Loads the identity from `dir` (`node-cert.der`, `node-key.der`), creating a new key pair
    /// and self-signed certificate on first start. The key file is readable only by its owner.
    pub fn load_or_create(dir: &Path) -> Result<Identity, NetError> {
        let cert_path = dir.join("node-cert.der");
        let key_path = dir.join("node-key.der");
        if cert_path.exists() && key_path.exists() {
            let cert = fs::read(&cert_path).map_err(|e| NetError::io(&cert_path, e))?;
            let key = fs::read(&key_path).map_err(|e| NetError::io(&key_path, e))?;
            return Ok(Identity::from_der(cert, key));
        }
        // Half of a pair is what a crash during first start leaves (the key is written first):
        // no peer can know this identity yet, so start over.
        let _ = fs::remove_file(&key_path);
        let _ = fs::remove_file(&cert_path);
        fs::create_dir_all(dir).map_err(|e| NetError::io(dir, e))?;
        let id = Identity::generate()?;
        write_private(&key_path, id.key.secret_pkcs8_der())?;
        write_private(&cert_path, id.cert.as_ref())?;
        Ok(id)
    }

    /// A fresh identity, not stored anywhere (tests, tools).
    pub fn generate() -> Result<Identity, NetError> {
        let ck = rcgen::generate_simple_self_signed(vec!["tandem".to_owned()])
            .map_err(|e| NetError::Tls(format!("generating a certificate: {e}")))?;
        Ok(Identity::from_der(
            ck.cert.der().to_vec(),
            ck.signing_key.serialize_der(),
        ))
    }

    fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Identity {
        let id = NodeId::of_certificate(&cert);
        Identity {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
            id,
        }
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| NetError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| NetError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_in_groups_and_parse_back() {
        let id = NodeId([0xa5; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 56 + 7);
        assert_eq!(s.split('-').count(), 8);
        assert!(s.split('-').all(|g| g.len() == 7));
        assert_eq!(s.parse::<NodeId>().unwrap(), id);
        assert_eq!(
            s.to_lowercase()
                .replace('-', " ")
                .parse::<NodeId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn a_typo_is_caught() {
        let s = NodeId([7; 32]).to_string();
        let mut b = s.into_bytes();
        b[3] = if b[3] == b'A' { b'B' } else { b'A' };
        let e = String::from_utf8(b).unwrap().parse::<NodeId>().unwrap_err();
        assert!(e.to_string().contains("check character"), "{e}");
        assert!("too-short".parse::<NodeId>().is_err());
    }

    #[test]
    fn identity_is_created_once_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path()).unwrap();
        let b = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        let mode = fs::metadata(d.path().join("node-key.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
