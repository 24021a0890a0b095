//! The passphrase-encrypted key file (design §7): one file in the home holding every long-term
//! secret of the node, sealed with Argon2id + XChaCha20-Poly1305.
//!
//! Layout (64-byte header, then the body; integers little-endian):
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |   10 | magic `LIAISONKEY`                                            |
//! |     10 |    1 | format version = 1                                            |
//! |     11 |    1 | kdf: 0 = none (plaintext body), 1 = Argon2id                  |
//! |     12 |    4 | Argon2 m_cost, KiB (u32le)                                    |
//! |     16 |    4 | Argon2 t_cost, passes (u32le)                                 |
//! |     20 |    4 | Argon2 p_cost, lanes (u32le)                                  |
//! |     24 |   16 | salt                                                          |
//! |     40 |   24 | XChaCha20-Poly1305 nonce                                      |
//! |     64 |    … | body                                                          |
//!
//! kdf 1: `key = Argon2id v0x13(passphrase, salt, m, t, p)` (32 bytes), `body =
//! XChaCha20-Poly1305(key, nonce, plaintext, aad = the 64-byte header)` (ciphertext || 16-byte
//! tag). Fresh salt and nonce on every write. Defaults m = 64 MiB, t = 3, p = 1
//! ([`KdfParams::DEFAULT`]); a reader accepts only 8·p KiB ≤ m ≤ 1 GiB, 1 ≤ t ≤ 16, 1 ≤ p ≤ 4, so
//! a planted file cannot make it allocate or spin without bound.
//! kdf 0 (`liaison init --no-passphrase`): m, t, p, salt and nonce are all zero and the body is
//! the plaintext.
//!
//! The file must be a regular file owned by the current user with no group/other permission
//! bits, at most [`MAX_KEY_FILE_LEN`] bytes. Writes go to a 0600 temp file in the same
//! directory, are fsynced, renamed over the old file, and the directory is fsynced.

use argon2::{Algorithm, Argon2, Block, Params, Version};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use liaison_proto::keys::random_bytes;
use nix::fcntl::OFlag;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// First bytes of every key file.
pub const MAGIC: &[u8; 10] = b"LIAISONKEY";
/// Key file format version.
pub const FORMAT_VERSION: u8 = 1;
/// kdf byte: no encryption.
pub const KDF_NONE: u8 = 0;
/// kdf byte: Argon2id + XChaCha20-Poly1305.
pub const KDF_ARGON2ID: u8 = 1;
/// Header length, bytes.
pub const HEADER_LEN: usize = 64;
/// Salt length, bytes.
pub const SALT_LEN: usize = 16;
/// Nonce length, bytes.
pub const NONCE_LEN: usize = 24;
/// AEAD tag length, bytes.
pub const TAG_LEN: usize = 16;
/// Largest key file accepted, bytes (checked before reading).
pub const MAX_KEY_FILE_LEN: u64 = 1 << 20;
/// Largest Argon2 memory cost accepted from a header, KiB (1 GiB).
pub const MAX_M_COST_KIB: u32 = 1 << 20;
/// Largest Argon2 time cost accepted from a header.
pub const MAX_T_COST: u32 = 16;
/// Largest Argon2 parallelism accepted from a header.
pub const MAX_P_COST: u32 = 4;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file is encrypted and no passphrase was given.
    #[error(
        "the key file is encrypted: give the passphrase (prompt, LIAISON_PASSPHRASE or \
         --passphrase-file)"
    )]
    PassphraseRequired,
    /// Decryption failed.
    #[error("wrong passphrase, or the key file is damaged")]
    WrongPassphrase,
    /// An empty passphrase was given for encryption.
    #[error("the passphrase is empty: choose a passphrase, or use --no-passphrase")]
    EmptyPassphrase,
    /// Group or other users may access the file.
    #[error(
        "key file {} is accessible by other users (mode {mode:04o}): refusing to use it; \
         run `chmod 600 {}` and consider the keys exposed", path.display(), path.display()
    )]
    LoosePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file belongs to another user.
    #[error(
        "key file {} belongs to uid {owner}, not to this user (uid {uid}): refusing to use it",
        path.display()
    )]
    WrongOwner {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// Not a key file, an unknown version, out-of-range parameters, bad size.
    #[error("key file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The system random generator or the KDF failed.
    #[error("key file crypto failure: {0}")]
    Crypto(String),
}

/// Argon2id parameters stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// m = 64 MiB, t = 3, p = 1 (design §7).
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Whether a reader accepts these parameters.
    pub fn in_bounds(&self) -> bool {
        (1..=MAX_P_COST).contains(&self.p_cost)
            && (1..=MAX_T_COST).contains(&self.t_cost)
            && self.m_cost_kib >= 8 * self.p_cost
            && self.m_cost_kib <= MAX_M_COST_KIB
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Writes `secret` to `path`, encrypted under `passphrase` with [`KdfParams::DEFAULT`], or in
/// plain text when `passphrase` is `None`. Atomic: temp file (0600), fsync, rename, fsync dir.
pub fn write_key_file(
    path: &Path,
    secret: &[u8],
    passphrase: Option<&[u8]>,
) -> Result<(), KeyFileError> {
    write_key_file_with_params(path, secret, passphrase, KdfParams::DEFAULT)
}

/// [`write_key_file`] with chosen Argon2 parameters (tests and benchmarks use small ones;
/// they must be [`KdfParams::in_bounds`]).
pub fn write_key_file_with_params(
    path: &Path,
    secret: &[u8],
    passphrase: Option<&[u8]>,
    params: KdfParams,
) -> Result<(), KeyFileError> {
    let contents = seal(secret, passphrase, params, path)?;
    write_atomically(path, &contents)
}

/// Reads and, if encrypted, decrypts the key file. A passphrase given for an unencrypted file
/// is ignored (check [`is_encrypted`] to warn about it).
pub fn read_key_file(
    path: &Path,
    passphrase: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let bytes = read_checked(path)?;
    open(&bytes, passphrase, path)
}

/// Whether the key file is passphrase-encrypted (reads and checks the header only).
pub fn is_encrypted(path: &Path) -> Result<bool, KeyFileError> {
    let mut file = open_checked(path)?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(path, "shorter than its header"),
        _ => io_err(path, e),
    })?;
    Ok(parse_header(&header, path)?.kdf == KDF_ARGON2ID)
}

struct Header {
    kdf: u8,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    let fields: [&[u8]; 8] = [
        MAGIC,
        &[FORMAT_VERSION],
        &[h.kdf],
        &h.params.m_cost_kib.to_le_bytes(),
        &h.params.t_cost.to_le_bytes(),
        &h.params.p_cost.to_le_bytes(),
        &h.salt,
        &h.nonce,
    ];
    for (o, b) in out.iter_mut().zip(fields.iter().flat_map(|f| f.iter())) {
        *o = *b;
    }
    out
}

fn parse_header(h: &[u8; HEADER_LEN], path: &Path) -> Result<Header, KeyFileError> {
    let (magic, rest) = h.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(corrupt(path, "not a liaison key file (bad magic)"));
    }
    let (&[version, kdf], rest) = split_array::<2>(rest);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            &format!("unsupported key file version {version}"),
        ));
    }
    let (m, rest) = split_array::<4>(rest);
    let (t, rest) = split_array::<4>(rest);
    let (p, rest) = split_array::<4>(rest);
    let (salt, rest) = split_array::<SALT_LEN>(rest);
    let (nonce, _) = split_array::<NONCE_LEN>(rest);
    let header = Header {
        kdf,
        params: KdfParams {
            m_cost_kib: u32::from_le_bytes(*m),
            t_cost: u32::from_le_bytes(*t),
            p_cost: u32::from_le_bytes(*p),
        },
        salt: *salt,
        nonce: *nonce,
    };
    match kdf {
        KDF_NONE => {
            if header.params
                != (KdfParams {
                    m_cost_kib: 0,
                    t_cost: 0,
                    p_cost: 0,
                })
                || header.salt != [0; SALT_LEN]
                || header.nonce != [0; NONCE_LEN]
            {
                return Err(corrupt(path, "unencrypted file with non-zero kdf fields"));
            }
        }
        KDF_ARGON2ID => {
            if !header.params.in_bounds() {
                return Err(corrupt(
                    path,
                    &format!(
                        "Argon2 parameters out of range (m = {} KiB, t = {}, p = {})",
                        header.params.m_cost_kib, header.params.t_cost, header.params.p_cost
                    ),
                ));
            }
        }
        other => return Err(corrupt(path, &format!("unknown kdf {other}"))),
    }
    Ok(header)
}

/// Splits `N` bytes off the front of `s`; short input yields zeros (callers pass whole headers).
fn split_array<const N: usize>(s: &[u8]) -> (&[u8; N], &[u8]) {
    const EMPTY: &[u8] = &[];
    match s.split_first_chunk::<N>() {
        Some((a, rest)) => (a, rest),
        None => (&[0u8; N], EMPTY),
    }
}

fn seal(
    secret: &[u8],
    passphrase: Option<&[u8]>,
    params: KdfParams,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let too_large = || corrupt(path, "secret too large for a key file");
    let total = (HEADER_LEN + secret.len() + TAG_LEN) as u64;
    if total > MAX_KEY_FILE_LEN {
        return Err(too_large());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(total as usize));
    let Some(passphrase) = passphrase else {
        let header = Header {
            kdf: KDF_NONE,
            params: KdfParams {
                m_cost_kib: 0,
                t_cost: 0,
                p_cost: 0,
            },
            salt: [0; SALT_LEN],
            nonce: [0; NONCE_LEN],
        };
        out.extend_from_slice(&encode_header(&header));
        out.extend_from_slice(secret);
        return Ok(out);
    };
    if passphrase.is_empty() {
        return Err(KeyFileError::EmptyPassphrase);
    }
    if !params.in_bounds() {
        return Err(KeyFileError::Crypto(format!(
            "Argon2 parameters out of range: {params:?}"
        )));
    }
    let rng = |e: liaison_proto::keys::RngError| KeyFileError::Crypto(e.to_string());
    let header = Header {
        kdf: KDF_ARGON2ID,
        params,
        salt: random_bytes().map_err(rng)?,
        nonce: random_bytes().map_err(rng)?,
    };
    let header_bytes = encode_header(&header);
    let key = derive_key(passphrase, &header.salt, params)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    // room for the tag up front: encrypting in place never reallocates (and so never leaves
    // a plaintext copy behind); the buffer is wiped on drop whatever happens
    let mut body = Zeroizing::new(Vec::with_capacity(secret.len() + TAG_LEN));
    body.extend_from_slice(secret);
    cipher
        .encrypt_in_place(&XNonce::from(header.nonce), &header_bytes, &mut *body)
        .map_err(|_| KeyFileError::Crypto("encryption failed".into()))?;
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&body);
    Ok(out)
}

fn open(
    bytes: &[u8],
    passphrase: Option<&[u8]>,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let (header_bytes, body) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or_else(|| corrupt(path, "shorter than its header"))?;
    let header = parse_header(header_bytes, path)?;
    if header.kdf == KDF_NONE {
        return Ok(Zeroizing::new(body.to_vec()));
    }
    let passphrase = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
    if body.len() < TAG_LEN {
        return Err(corrupt(path, "encrypted body shorter than its tag"));
    }
    let key = derive_key(passphrase, &header.salt, header.params)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let mut plain = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_in_place(&XNonce::from(header.nonce), header_bytes, &mut *plain)
        .map_err(|_| KeyFileError::WrongPassphrase)?;
    Ok(plain)
}

/// Argon2id(passphrase, salt) -> 32 bytes; the work memory is wiped afterwards.
fn derive_key(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let p = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| KeyFileError::Crypto(format!("Argon2 parameters: {e}")))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
    let mut memory = Zeroizing::new(vec![Block::default(); params.m_cost_kib as usize]);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into_with_memory(passphrase, salt, key.as_mut_slice(), &mut **memory)
        .map_err(|e| KeyFileError::Crypto(format!("Argon2: {e}")))?;
    Ok(key)
}

/// Opens an existing key file without following a symlink, and checks type, owner and mode.
fn open_checked(path: &Path) -> Result<File, KeyFileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.file_type().is_file() {
        return Err(corrupt(path, "not a regular file"));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(KeyFileError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(corrupt(
            path,
            &format!("larger than {MAX_KEY_FILE_LEN} bytes"),
        ));
    }
    Ok(file)
}

fn read_checked(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let file = open_checked(path)?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    // capacity for the whole file up front: no reallocation leaves copies behind
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(corrupt(
            path,
            &format!("larger than {MAX_KEY_FILE_LEN} bytes"),
        ));
    }
    Ok(bytes)
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "key file path has no file name"))?;
    let suffix: [u8; 8] = random_bytes().map_err(|e| KeyFileError::Crypto(e.to_string()))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{suffix}"));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| io_err(&tmp, e))?;
        file.write_all(contents).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn corrupt(path: &Path, reason: &str) -> KeyFileError {
    KeyFileError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn io_err(path: &Path, source: io::Error) -> KeyFileError {
    KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;
    use proptest::prelude::*;

    /// Small parameters so unit tests stay fast.
    const FAST: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn round_trip_encrypted_and_header_layout() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file_with_params(&path, b"top secret", Some(b"pw"), FAST).unwrap();
        assert!(is_encrypted(&path).unwrap());
        assert_eq!(
            read_key_file(&path, Some(b"pw")).unwrap().as_slice(),
            b"top secret"
        );
        let raw = fs::read(&path).unwrap();
        assert_eq!(raw.len(), HEADER_LEN + 10 + TAG_LEN);
        assert_eq!(&raw[..10], b"LIAISONKEY");
        assert_eq!(raw[10], 1);
        assert_eq!(raw[11], 1);
        assert_eq!(&raw[12..16], &64u32.to_le_bytes());
        assert_eq!(&raw[16..20], &1u32.to_le_bytes());
        assert_eq!(&raw[20..24], &1u32.to_le_bytes());
        assert!(!raw.windows(10).any(|w| w == b"top secret"));
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // no temp file left behind
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        // a second write replaces the first, with a fresh salt and nonce
        write_key_file_with_params(&path, b"top secret", Some(b"pw"), FAST).unwrap();
        let raw2 = fs::read(&path).unwrap();
        assert_ne!(raw[24..64], raw2[24..64]);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn real_default_parameters() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file(&path, b"secret", Some(b"correct horse")).unwrap();
        let raw = fs::read(&path).unwrap();
        assert_eq!(&raw[12..16], &(64 * 1024u32).to_le_bytes());
        assert_eq!(&raw[16..20], &3u32.to_le_bytes());
        assert_eq!(&raw[20..24], &1u32.to_le_bytes());
        assert_eq!(
            read_key_file(&path, Some(b"correct horse"))
                .unwrap()
                .as_slice(),
            b"secret"
        );
    }

    #[test]
    fn wrong_or_missing_passphrase() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file_with_params(&path, b"s", Some(b"right"), FAST).unwrap();
        let e = read_key_file(&path, Some(b"wrong")).unwrap_err();
        assert!(matches!(e, KeyFileError::WrongPassphrase));
        assert_eq!(
            e.to_string(),
            "wrong passphrase, or the key file is damaged"
        );
        assert!(matches!(
            read_key_file(&path, None),
            Err(KeyFileError::PassphraseRequired)
        ));
        assert!(matches!(
            write_key_file_with_params(&path, b"s", Some(b""), FAST),
            Err(KeyFileError::EmptyPassphrase)
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file_with_params(&path, b"0123456789", Some(b"pw"), FAST).unwrap();
        let raw = fs::read(&path).unwrap();
        // any byte of salt, nonce or body: AEAD failure; kdf params: refused or AEAD failure
        for i in 12..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 1;
            fs::write(&path, &r).unwrap();
            assert!(read_key_file(&path, Some(b"pw")).is_err(), "byte {i}");
        }
        // magic, version, kdf
        for (i, _) in raw.iter().enumerate().take(12) {
            let mut r = raw.clone();
            r[i] ^= 0x40;
            fs::write(&path, &r).unwrap();
            assert!(matches!(
                read_key_file(&path, Some(b"pw")),
                Err(KeyFileError::Corrupt { .. })
            ));
        }
        // truncated
        fs::write(&path, &raw[..HEADER_LEN + 3]).unwrap();
        assert!(read_key_file(&path, Some(b"pw")).is_err());
        fs::write(&path, &raw[..20]).unwrap();
        assert!(matches!(
            read_key_file(&path, Some(b"pw")),
            Err(KeyFileError::Corrupt { .. })
        ));
    }

    #[test]
    fn absurd_parameters_refused_before_any_work() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file_with_params(&path, b"s", Some(b"pw"), FAST).unwrap();
        let raw = fs::read(&path).unwrap();
        for (off, val) in [
            (12, u32::MAX),
            (12, (1 << 20) + 1),
            (12, 7),
            (16, 17),
            (16, 0),
            (20, 5),
            (20, 0),
        ] {
            let mut r = raw.clone();
            r[off..off + 4].copy_from_slice(&u32::to_le_bytes(val));
            fs::write(&path, &r).unwrap();
            let e = read_key_file(&path, Some(b"pw")).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Corrupt { .. }),
                "{off} {val}: {e}"
            );
        }
        assert!(
            write_key_file_with_params(
                &path,
                b"s",
                Some(b"pw"),
                KdfParams {
                    m_cost_kib: 1 << 30,
                    t_cost: 1,
                    p_cost: 1
                }
            )
            .is_err()
        );
    }

    #[test]
    fn oversized_file_refused() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file(&path, b"s", None).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(MAX_KEY_FILE_LEN + 1).unwrap();
        assert!(matches!(
            read_key_file(&path, None),
            Err(KeyFileError::Corrupt { .. })
        ));
        assert!(write_key_file(&path, &vec![0u8; MAX_KEY_FILE_LEN as usize], None).is_err());
    }

    #[test]
    fn loose_permissions_refused() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file_with_params(&path, b"s", Some(b"pw"), FAST).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&path, Some(b"pw")).unwrap_err();
        match &e {
            KeyFileError::LoosePermissions { mode, .. } => assert_eq!(*mode, 0o644),
            other => panic!("unexpected {other}"),
        }
        assert!(e.to_string().contains("chmod 600"));
        assert!(is_encrypted(&path).is_err());
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        assert!(read_key_file(&path, Some(b"pw")).is_err());
        fs::set_permissions(&path, Permissions::from_mode(0o400)).unwrap();
        assert!(read_key_file(&path, Some(b"pw")).is_ok());
    }

    #[test]
    fn file_of_another_user_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a file away
        }
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file(&path, b"s", None).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(matches!(
            read_key_file(&path, None),
            Err(KeyFileError::WrongOwner { owner: 65534, .. })
        ));
    }

    #[test]
    fn symlink_and_directory_refused() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file(&path, b"s", None).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_key_file(&link, None).is_err());
        assert!(read_key_file(d.path(), None).is_err());
        assert!(matches!(
            read_key_file(&d.path().join("missing"), None),
            Err(KeyFileError::Io { .. })
        ));
    }

    #[test]
    fn unencrypted_round_trip() {
        let d = tmp();
        let path = d.path().join("keys");
        write_key_file(&path, b"plain", None).unwrap();
        assert!(!is_encrypted(&path).unwrap());
        assert_eq!(read_key_file(&path, None).unwrap().as_slice(), b"plain");
        assert_eq!(
            read_key_file(&path, Some(b"ignored")).unwrap().as_slice(),
            b"plain"
        );
        let raw = fs::read(&path).unwrap();
        assert_eq!(raw[11], 0);
        assert!(raw[12..64].iter().all(|b| *b == 0));
        // kdf 0 with stray parameters is refused
        let mut r = raw.clone();
        r[30] = 1;
        fs::write(&path, &r).unwrap();
        assert!(read_key_file(&path, None).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn seal_open_round_trip(secret in proptest::collection::vec(any::<u8>(), 0..2000),
                                pw in proptest::collection::vec(any::<u8>(), 1..40),
                                encrypt: bool) {
            let p = Path::new("mem");
            let pw = encrypt.then_some(pw.as_slice());
            let sealed = seal(&secret, pw, FAST, p).unwrap();
            let opened = open(&sealed, pw, p).unwrap();
            prop_assert_eq!(opened.as_slice(), secret.as_slice());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&bytes, Some(b"pw"), Path::new("mem"));
        }
    }
}
