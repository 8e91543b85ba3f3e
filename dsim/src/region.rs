//! The simulation's region directory, in the layout `lifeboat_server::region` reads.
//!
//! Why not `Region::init`: its ECDSA keys make signatures of varying length (DER), so the
//! TLS handshake's datagrams would change size from run to run, and with them how quinn
//! packs them. Ed25519 signatures are always 64 bytes: with this region every handshake of
//! a seed has the same sizes on every run, in any process. Test keys only, made per process.

use anyhow::Context as _;
use lifeboat_common::keyring::Keyring;
use lifeboat_server::region::Region;
use std::path::{Path, PathBuf};

/// A region for simulated datacenters (certificate for `localhost`).
pub struct SimRegion {
    pub dir: PathBuf,
    pub keyring: Keyring,
    pub ca_pem: Vec<u8>,
}

impl SimRegion {
    /// Write a new region into `dir` and load it back.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
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
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
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
