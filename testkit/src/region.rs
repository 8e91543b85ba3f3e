//! Region directories for tests, in the layout `lifeboat_server::region` reads: the region's
//! keyring, its CA and a datacenter certificate, loaded back with the CA in PEM for the
//! devices.
//!
//! Two builders side by side, one result type:
//! - [`TestRegion::init`]: the server's own `Region::init` (what an operator gets; ECDSA
//!   keys, a certificate for localhost and the loopback addresses). The end-to-end tests
//!   and the harness use it;
//! - [`TestRegion::ed25519`]: the deterministic simulation's. Why not `Region::init`: its
//!   ECDSA keys make signatures of varying length (DER), so the TLS handshake's datagrams
//!   would change size from run to run, and with them how quinn packs them. Ed25519
//!   signatures are always 64 bytes: with this region every handshake of a seed has the
//!   same sizes on every run, in any process. Test keys only, made per process; the
//!   certificate names `localhost`.

use lifeboat_common::keyring::{Keyring, KeyringError};
use lifeboat_server::region::{Region, RegionError};
use std::path::{Path, PathBuf};

/// Why a region could not be made or read back.
#[derive(Debug, thiserror::Error)]
pub enum TestRegionError {
    #[error("region: {0}")]
    Region(#[from] RegionError),
    #[error("region keyring: {0}")]
    Keyring(#[from] KeyringError),
    #[error("region certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A region on disk, loaded: where it is, its keyring, its CA (PEM) for the devices.
pub struct TestRegion {
    pub dir: PathBuf,
    pub keyring: Keyring,
    pub ca_pem: Vec<u8>,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> TestRegionError + '_ {
    move |source| TestRegionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl TestRegion {
    /// A new region made by the server's own `Region::init` in `dir`.
    pub fn init(dir: &Path) -> Result<Self, TestRegionError> {
        Region::init(dir)?;
        let keyring = Keyring::load(&Region::keyring_path(dir))?;
        let ca_path = Region::ca_path(dir);
        let ca_pem = std::fs::read(&ca_path).map_err(io_at(&ca_path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keyring,
            ca_pem,
        })
    }

    /// A new region with Ed25519 keys in `dir` (see the module docs for why).
    pub fn ed25519(dir: &Path) -> Result<Self, TestRegionError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        Keyring::generate().save(&Region::keyring_path(dir))?;
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Lifeboat simulation CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lifeboat simulated datacenter");
        let cert = params.signed_by(&server_key, &ca)?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(io_at(&path))
        };
        write("ca.pem", ca.pem().as_bytes())?;
        write("server.pem", cert.pem().as_bytes())?;
        write("server.key", server_key.serialize_pem().as_bytes())?;
        let region = Region::load(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keyring: region.keyring,
            ca_pem: ca.pem().into_bytes(),
        })
    }
}
