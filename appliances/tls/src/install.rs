//! Replacing a running node's TLS files (a renewed certificate and key, a new CRL or CA) from
//! what the operator sends to its authenticated admin API: appliances have no shell. The new
//! files are written beside the configured ones, must build a working configuration (the key
//! must match the certificate, the CRL must parse), and only then take the configured names;
//! the file watchers pick them up within `reload_check`. A bad upload changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{TlsError, TlsSettings};

/// What `POST /v1/tls` carries: PEM text of the files to replace (each optional; certificate
/// and key together).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsUpdate {
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub crl: Option<String>,
    #[serde(default)]
    pub client_ca: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Refused(String),
    #[error("the new files do not load: {0}")]
    Invalid(#[from] TlsError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Validate `update` against `settings` and install it. Returns the names of the files
/// replaced.
pub fn install(
    settings: &TlsSettings,
    update: &TlsUpdate,
) -> Result<Vec<&'static str>, InstallError> {
    if update.certificate.is_some() != update.key.is_some() {
        return Err(InstallError::Refused(
            "a certificate and its key go together".into(),
        ));
    }
    let mut staged: Vec<(&'static str, PathBuf, PathBuf, &str, u32)> = Vec::new();
    let mut candidate = settings.clone();
    let parts = [
        (
            "certificate",
            Some(&settings.certificate),
            &update.certificate,
            0o644,
        ),
        ("key", Some(&settings.key), &update.key, 0o600),
        ("crl", settings.crl.as_ref(), &update.crl, 0o644),
        (
            "client_ca",
            settings.client_ca.as_ref(),
            &update.client_ca,
            0o644,
        ),
    ];
    for (name, configured, text, mode) in parts {
        let Some(text) = text else { continue };
        let Some(path) = configured else {
            return Err(InstallError::Refused(format!(
                "[tls] has no {name} file to replace"
            )));
        };
        let mut new = path.clone().into_os_string();
        new.push(".new");
        let new = PathBuf::from(new);
        staged.push((name, new.clone(), path.clone(), text, mode));
        match name {
            "certificate" => candidate.certificate = new,
            "key" => candidate.key = new,
            "crl" => candidate.crl = Some(new),
            _ => candidate.client_ca = Some(new),
        }
    }
    if staged.is_empty() {
        return Err(InstallError::Refused("nothing to install".into()));
    }
    let result = stage_and_check(&staged, &candidate);
    if result.is_err() {
        for (_, new, ..) in &staged {
            let _ = std::fs::remove_file(new);
        }
        return result.map(|()| Vec::new());
    }
    for (_, new, path, ..) in &staged {
        std::fs::rename(new, path).map_err(|source| InstallError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(staged.iter().map(|(name, ..)| *name).collect())
}

fn stage_and_check(
    staged: &[(&'static str, PathBuf, PathBuf, &str, u32)],
    candidate: &TlsSettings,
) -> Result<(), InstallError> {
    for (_, new, _, text, mode) in staged {
        write(new, text.as_bytes(), *mode)?;
    }
    // What the node would build from them, as a server (and, with a CA, as a client).
    crate::build(candidate)?;
    if candidate.server_ca.is_some() || candidate.client_ca.is_some() {
        crate::build_client(candidate)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    write_file(path, bytes, mode).map_err(|source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `bytes` to `path` (created with `mode`, e.g. 0o600 for a private key) and fsync it:
/// what lands on disk is whole before anyone is told it is there (also `clk pki`'s keys).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
