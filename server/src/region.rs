//! The region directory: what the datacenters of one region share.
//!
//! ```text
//! region/
//!   keyring      sealing keys and the device-credential key (mode 0600)
//!   ca.pem       the region CA certificate devices trust
//!   ca.key       the CA key (mode 0600; only needed to issue server certificates)
//!   server.pem   the server certificate (localhost, 127.0.0.1, ::1), signed by the CA
//!   server.key   its key (mode 0600)
//! ```
//!
//! For local use `lifeboat-server` creates a missing region directory on first run and says
//! where. In production the region directory is provisioned once and copied to every
//! datacenter of the region; devices ship with `ca.pem`.
//!
//! Invariants: the key files (`keyring`, `ca.key`, `server.key`) are created mode 0600 and
//! every file is synced before [`Region::init`] returns; a directory counts as a region
//! ([`Region::exists`]) only with all of `keyring`, `ca.pem`, `server.pem` and `server.key`
//! (written last), so [`Region::load_or_init`] redoes an interrupted `init`.

use lifeboat_common::keyring::{Keyring, KeyringError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// Why a region directory could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A file or the directory could not be created, written or read.
    #[error("region {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The keyring could not be generated, saved or loaded.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Generating the CA or the server certificate failed.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// `server.pem` or `server.key` is missing or not valid PEM.
    #[error("region {path}: not valid PEM: {msg}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's error.
        msg: String,
    },
}

/// Loaded region material.
pub struct Region {
    /// The region directory it was loaded from.
    pub dir: PathBuf,
    /// The sealing keys and the device-credential key.
    pub keyring: Keyring,
    /// The server certificate chain (`server.pem`), presented to devices.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server certificate's private key (`server.key`).
    pub key: PrivateKeyDer<'static>,
}

impl Region {
    /// The keyring file of region directory `dir`.
    pub fn keyring_path(dir: &Path) -> PathBuf {
        dir.join("keyring")
    }

    /// The region CA certificate of `dir` (the file devices trust).
    pub fn ca_path(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }

    /// Whether `dir` holds a complete region.
    pub fn exists(dir: &Path) -> bool {
        ["keyring", "ca.pem", "server.pem", "server.key"]
            .iter()
            .all(|f| dir.join(f).exists())
    }

    /// Create a region directory: a keyring, a CA and a server certificate for loopback.
    pub fn init(dir: &Path) -> Result<(), RegionError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegionError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Keyring::generate().save(&Self::keyring_path(dir))?;

        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Lifeboat region CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let server_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lifeboat datacenter");
        for ip in ["127.0.0.1", "::1"] {
            if let Ok(ip) = ip.parse() {
                params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
            }
        }
        let server_cert = params.signed_by(&server_key, &ca)?;

        write_file(&dir.join("ca.pem"), ca.pem().as_bytes(), false)?;
        write_file(
            &dir.join("ca.key"),
            ca.key().serialize_pem().as_bytes(),
            true,
        )?;
        write_file(&dir.join("server.pem"), server_cert.pem().as_bytes(), false)?;
        write_file(
            &dir.join("server.key"),
            server_key.serialize_pem().as_bytes(),
            true,
        )?;
        Ok(())
    }

    /// Load a region, creating it first if `create` and it does not exist. Returns whether it
    /// was created.
    pub fn load_or_init(dir: &Path, create: bool) -> Result<(Self, bool), RegionError> {
        let mut created = false;
        if create && !Self::exists(dir) {
            Self::init(dir)?;
            created = true;
        }
        Ok((Self::load(dir)?, created))
    }

    /// Load the keyring, the server certificate chain and its key from `dir` (`ca.key` is
    /// not read: a datacenter does not need it).
    pub fn load(dir: &Path) -> Result<Self, RegionError> {
        let keyring = Keyring::load(&Self::keyring_path(dir))?;
        let cert_path = dir.join("server.pem");
        let cert_chain = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| RegionError::Pem {
                path: cert_path.clone(),
                msg: e.to_string(),
            })?;
        let key_path = dir.join("server.key");
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| RegionError::Pem {
            path: key_path,
            msg: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keyring,
            cert_chain,
            key,
        })
    }
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), RegionError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let io = |source| RegionError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
