//! Reading private key files, refusing those that others can read.
//!
//! Used for every private key the gateway loads (the signing key, the TLS
//! client key, a recipient key in `open`), so the rule is in one place: not
//! readable by group or others, and owned by the user sensorgate runs as
//! (a key owned by someone else can be replaced or read by them).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read private key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "private key file {path} is readable by group or others (mode {mode:04o}); run chmod 600 on it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "private key file {path} is owned by uid {owner}, not by uid {euid} that sensorgate runs as; \
         run chown {euid} on it (e.g. chown sensorgate for the service user)"
    )]
    NotOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("private key file {path} is not UTF-8 PEM text")]
    NotText { path: PathBuf },
}

impl SecretFileError {
    /// True when the problem is permissions (exit code 77 rather than 66).
    pub fn is_permission(&self) -> bool {
        match self {
            SecretFileError::TooOpen { .. } | SecretFileError::NotOwner { .. } => true,
            SecretFileError::Read { source, .. } => {
                source.kind() == io::ErrorKind::PermissionDenied
            }
            SecretFileError::NotText { .. } => false,
        }
    }
}

/// Checks that `path` is not accessible by group or others (no bit of
/// 0o077) and is owned by the effective user.
pub fn check_mode(path: &Path) -> Result<(), SecretFileError> {
    let meta = fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(SecretFileError::NotOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok(())
}

/// Reads a private key file as text after checking its mode. The returned
/// buffer is wiped when dropped.
pub fn read_private(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    check_mode(path)?;
    let bytes = Zeroizing::new(fs::read(path).map_err(|source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    })?);
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_string())),
        Err(_) => Err(SecretFileError::NotText {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        fs::write(&p, "secret").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private(&p).unwrap_err();
        assert!(e.is_permission());
        let msg = e.to_string();
        assert!(msg.contains("k.pem") && msg.contains("0644") && msg.contains("chmod 600"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&*read_private(&p).unwrap(), "secret");
    }

    #[test]
    fn a_key_owned_by_another_user_is_refused_with_the_fix() {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            eprintln!("skipped: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        fs::write(&p, "secret").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(4242), None).unwrap();
        let e = read_private(&p).unwrap_err();
        assert!(e.is_permission());
        let msg = e.to_string();
        assert!(
            msg.contains("k.pem") && msg.contains("uid 4242") && msg.contains("chown 0"),
            "{msg}"
        );
        std::os::unix::fs::chown(&p, Some(euid), None).unwrap();
        assert_eq!(&*read_private(&p).unwrap(), "secret");
    }
}
