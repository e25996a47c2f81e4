//! The handshake's proof of the job's secret: a mutual challenge–response.
//!
//! The coordinator gives each worker a [`Token`] (256 random bits) outside the socket.
//! The token itself never crosses the socket. Instead each side sends a fresh random
//! [`Nonce`] and proves it holds the token with HMAC-SHA256 over a label naming its
//! role and both nonces:
//!
//! ```text
//! proof(role) = HMAC-SHA256(token, "pstream-auth-v1 " || role || 0x00 || worker_nonce || coordinator_nonce)
//! ```
//!
//! The role label keeps one side's proof from being replayed as the other's, and the
//! nonces keep a proof from being replayed on another connection. Proofs are compared
//! in constant time ([`Token::verify`]).

use std::fmt;
use std::io::{self, Read};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes in a [`Token`].
pub const TOKEN_LEN: usize = 32;

/// A nonce: 32 random bytes, fresh for each handshake.
pub type Nonce = [u8; 32];

/// A proof: an HMAC-SHA256 tag.
pub type Proof = [u8; 32];

/// Which side of the handshake a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that listens and hands out work.
    Coordinator,
    /// The side that connects and computes.
    Worker,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Coordinator => b"pstream-auth-v1 coordinator\0",
            Role::Worker => b"pstream-auth-v1 worker\0",
        }
    }
}

/// The job's secret. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_LEN]);

/// A token that is not 64 hexadecimal digits.
#[derive(Debug, thiserror::Error)]
#[error("a token is {TOKEN_LEN} bytes written as {} hexadecimal digits", 2 * TOKEN_LEN)]
pub struct BadToken;

impl Token {
    /// A fresh token from the operating system's random source.
    pub fn random() -> io::Result<Token> {
        let mut bytes = [0u8; TOKEN_LEN];
        fill_random(&mut bytes)?;
        Ok(Token(bytes))
    }

    /// Parse 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Token, BadToken> {
        let text = text.trim().as_bytes();
        if text.len() != 2 * TOKEN_LEN {
            return Err(BadToken);
        }
        let mut bytes = [0u8; TOKEN_LEN];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(BadToken);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Token(bytes))
    }

    /// The token as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, role: Role, worker_nonce: &Nonce, coordinator_nonce: &Nonce) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(role.label());
        mac.update(worker_nonce);
        mac.update(coordinator_nonce);
        mac
    }

    /// The proof that `role` holds this token, for the handshake with these nonces.
    pub fn prove(&self, role: Role, worker_nonce: &Nonce, coordinator_nonce: &Nonce) -> Proof {
        self.mac(role, worker_nonce, coordinator_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` shows that its sender, acting as `role`, holds this token.
    /// Compared in constant time.
    pub fn verify(
        &self,
        role: Role,
        worker_nonce: &Nonce,
        coordinator_nonce: &Nonce,
        proof: &Proof,
    ) -> bool {
        self.mac(role, worker_nonce, coordinator_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

/// Why a token file was refused. Its message carries its cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// It could not be read (or created).
    #[error("the token file {path}: {error}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Others may read it, it is not a regular file, or it is not ours.
    #[error("refusing the token file {path}: {why}")]
    Unsafe {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and what to do.
        why: String,
    },
    /// It does not hold a token.
    #[error("the token file {path} does not hold a token: {error}")]
    Bad {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        error: BadToken,
    },
}

/// Read the job's token from `path`: a regular file (not a symbolic link) of this
/// user that nobody else may read or write (mode 0600 or stricter), holding 64
/// hexadecimal digits. Anything else is refused before a byte is read, so a token
/// that others could have seen is never used.
pub fn read_token_file(path: &std::path::Path) -> Result<Token, TokenFileError> {
    use std::os::unix::fs::MetadataExt;
    let io_err = |error| TokenFileError::Io {
        path: path.to_path_buf(),
        error,
    };
    let unsafe_file = |why: String| TokenFileError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    // Not through a symbolic link: the file checked is the file read (same device
    // and inode before and after opening).
    let named = std::fs::symlink_metadata(path).map_err(io_err)?;
    if named.file_type().is_symlink() {
        return Err(unsafe_file(
            "it is a symbolic link; name the file itself".into(),
        ));
    }
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if (meta.dev(), meta.ino()) != (named.dev(), named.ino()) {
        return Err(unsafe_file("it was replaced while being opened".into()));
    }
    if !meta.is_file() {
        return Err(unsafe_file("it is not a regular file".into()));
    }
    let euid = effective_uid();
    if meta.uid() != euid {
        return Err(unsafe_file(format!(
            "it belongs to uid {}, not to this user (uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_file(format!(
            "it has mode {:04o}: other users may read or change it; make it private \
             with `chmod 600 {}`",
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    let mut text = String::new();
    (&mut file)
        .take(1024)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    Token::from_hex(&text).map_err(|error| TokenFileError::Bad {
        path: path.to_path_buf(),
        error,
    })
}

/// Make a new token file at `path` with a fresh token, mode 0600, failing if the
/// path exists (a file, or a link somebody planted).
pub fn create_token_file(path: &std::path::Path) -> Result<Token, TokenFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |error| TokenFileError::Io {
        path: path.to_path_buf(),
        error,
    };
    let token = Token::random().map_err(io_err)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(format!("{}\n", token.to_hex()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    Ok(token)
}

/// This process's effective user id, from `/proc/self/status` (this crate makes no
/// system calls of its own).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or(u32::MAX)
}

/// A fresh nonce from the operating system's random source.
pub fn random_nonce() -> io::Result<Nonce> {
    let mut nonce = [0u8; 32];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

fn fill_random(bytes: &mut [u8]) -> io::Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("read random bytes from /dev/urandom: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_round_trip_as_hex() {
        let a = Token::random().unwrap();
        let b = Token::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_hex().len(), 64);
        assert_eq!(Token::from_hex(&a.to_hex()).unwrap(), a);
        assert_eq!(Token::from_hex(&format!("{}\n", a.to_hex())).unwrap(), a);
        assert!(Token::from_hex("00ff").is_err());
        assert!(Token::from_hex(&"g".repeat(64)).is_err());
        assert!(!format!("{a:?}").contains(&a.to_hex()[..8]));
    }

    #[test]
    fn a_proof_holds_only_for_its_token_role_and_nonces() {
        let token = Token::random().unwrap();
        let (w, c) = (random_nonce().unwrap(), random_nonce().unwrap());
        let proof = token.prove(Role::Worker, &w, &c);
        assert!(token.verify(Role::Worker, &w, &c, &proof));
        // Another role: a coordinator's proof is no worker's.
        assert!(!token.verify(Role::Coordinator, &w, &c, &proof));
        // Other nonces: no replay on another connection.
        assert!(!token.verify(Role::Worker, &c, &w, &proof));
        let other = random_nonce().unwrap();
        assert!(!token.verify(Role::Worker, &w, &other, &proof));
        // Another token.
        let wrong = Token::random().unwrap();
        assert!(!wrong.verify(Role::Worker, &w, &c, &proof));
        // One bit off.
        let mut bent = proof;
        bent[31] ^= 1;
        assert!(!token.verify(Role::Worker, &w, &c, &bent));
    }

    #[test]
    fn a_token_file_is_read_only_if_private_and_plain() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pstream-token-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("job.token");
        let token = create_token_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_token_file(&path).unwrap(), token);
        assert!(
            create_token_file(&path).is_err(),
            "an existing file is kept"
        );
        // Readable by others: refused, saying how to fix it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_token_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("mode 0640") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Through a symbolic link: refused.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = read_token_file(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // Not a token.
        let bad = dir.join("bad.token");
        std::fs::write(&bad, "not a token\n").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_token_file(&bad),
            Err(TokenFileError::Bad { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_proof_is_hmac_sha256_of_the_documented_message() {
        // RFC 4231 test case 2 pins the primitive: key "Jefe".
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // And the message is the label and both nonces, in that order.
        let token = Token([7; TOKEN_LEN]);
        let (w, c) = ([1u8; 32], [2u8; 32]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7; TOKEN_LEN]).unwrap();
        mac.update(b"pstream-auth-v1 coordinator\0");
        mac.update(&w);
        mac.update(&c);
        let expected: Proof = mac.finalize().into_bytes().into();
        assert_eq!(token.prove(Role::Coordinator, &w, &c), expected);
    }
}
