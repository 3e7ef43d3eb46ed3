//! A P-256 private key that stays in a PKCS#11 token (a TPM through
//! tpm2-pkcs11, a secure element, SoftHSM), reached through `cryptoki`:
//! the FFI stays in that crate, this one keeps `forbid(unsafe_code)`.
//!
//! The token signs SHA-256 digests (`CKM_ECDSA`); the public key is read
//! from the public-key object beside the private key. A session that fails
//! (the token was removed, the daemon behind it restarted) is dropped and
//! opened anew at the next signature. A PIN the token refuses is never
//! tried again by this process: tokens lock themselves after a few wrong
//! PINs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::uri::{KeyUri, PinSource};

/// The DER of the named curve P-256 (prime256v1), as `CKA_EC_PARAMS`
/// holds it.
pub const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Why the token's key cannot be used. Each names the key (its URI holds
/// no PIN) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot load the PKCS#11 module {path}: {detail}; install the token's package (softhsm2, libtpm2-pkcs11-1, ...) or fix module-path in {uri}"
    )]
    Module {
        path: PathBuf,
        detail: String,
        uri: String,
    },
    #[error("no token matches {uri}; tokens present: {present}")]
    NoToken { uri: String, present: String },
    #[error("cannot read the token's PIN for {uri}: {detail}")]
    PinSource { uri: String, detail: String },
    #[error(
        "the token refused the PIN for {uri}; the gateway does not try it again (a token locks itself after a few wrong PINs): fix the PIN file and restart"
    )]
    PinIncorrect { uri: String },
    #[error(
        "the token's user PIN is locked ({uri}): too many wrong PINs. A TPM locks every key after a few (its dictionary-attack lockout): wait out its recovery time, or clear it with tpm2_dictionarylockout --clear-lockout; other tokens: set a new user PIN with the security officer PIN (pkcs11-tool --init-pin --login --login-type so)"
    )]
    PinLocked { uri: String },
    #[error(
        "no private key matches {uri}; list the token's keys with pkcs11-tool --module MODULE --list-objects --login, or make one with sensorgate keygen --pkcs11"
    )]
    NoKey { uri: String },
    #[error("{count} private keys match {uri}; add object= or id= so that it names one")]
    ManyKeys { uri: String, count: usize },
    #[error("{uri} is not a P-256 (prime256v1) EC key pair: {detail}")]
    NotP256 { uri: String, detail: String },
    #[error("{uri} already exists in the token; pick another object name, or delete it first")]
    Exists { uri: String },
    /// The token went away or failed; what is sealed waits for it.
    #[error("the token of {uri} is unavailable: {detail}")]
    Unavailable { uri: String, detail: String },
}

impl TokenError {
    /// True when trying again later may work (a removed token, a failed
    /// session), false for what needs the operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. })
    }

    /// sysexits for a start that fails on it: 69 (unavailable) when the
    /// module or token is missing, 77 for the PIN, 78 for a URI that names
    /// no usable key.
    pub fn exit_code(&self) -> i32 {
        match self {
            TokenError::Module { .. }
            | TokenError::NoToken { .. }
            | TokenError::Unavailable { .. } => 69,
            TokenError::PinSource { .. }
            | TokenError::PinIncorrect { .. }
            | TokenError::PinLocked { .. } => 77,
            TokenError::NoKey { .. }
            | TokenError::ManyKeys { .. }
            | TokenError::NotP256 { .. }
            | TokenError::Exists { .. } => 78,
        }
    }
}

/// A PKCS#11 call's failure, as `C_Sign: DeviceRemoved`. Never through
/// `cryptoki`'s `Display`, whose texts (the standard's description of
/// every return value) would add tens of kilobytes to the binary.
pub(super) fn ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?}: {rv:?}"),
        CkError::LibraryLoading(e) => format!("{e:?}"),
        other => format!("{other:?}"),
    }
}

/// The PKCS#11 return value of a failure, if it is one.
fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// An open, logged-in session and the key in it.
struct Open {
    session: Session,
    key: ObjectHandle,
}

/// A PKCS#11 module, loaded once per process and shared by every key in
/// it (the signing key and the TLS key are usually in the same token, and
/// a module is initialised once per process). One lock serialises the
/// calls into it, so that the module can be finalised and loaded again
/// (a module learns of a token that came back only then, SoftHSM for one)
/// while no key is in the middle of a call.
struct Module {
    /// The module's file, canonical: the registry's key.
    path: PathBuf,
    state: Mutex<ModuleState>,
}

struct ModuleState {
    /// The module, initialised; none after a failure to reach the token,
    /// so that the next use finalises and initialises it again.
    context: Option<Pkcs11>,
    /// Each key's open session, by the key's number; a key whose session
    /// failed has none and opens a new one at its next use.
    open: HashMap<u64, Open>,
}

/// The modules in use, by canonical path.
static MODULES: Mutex<Vec<Weak<Module>>> = Mutex::new(Vec::new());
/// The PINs a token refused, as where they come from and which token (see
/// [`pin_key`]): never tried again by this process, whichever key asks and
/// whether or not its module is still loaded, since each wrong try counts
/// towards the token locking itself (a TPM's dictionary-attack lockout
/// locks every key in it).
static REFUSED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Numbers the keys, for [`ModuleState::open`].
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

impl Module {
    /// The module at `uri`'s module-path, shared with every other key in
    /// it; loaded and initialised when no key uses it yet.
    fn get(uri: &KeyUri) -> Result<Arc<Module>, TokenError> {
        let path =
            std::fs::canonicalize(&uri.module_path).unwrap_or_else(|_| uri.module_path.clone());
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        modules.retain(|m| m.strong_count() > 0);
        if let Some(m) = modules
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.path == path)
        {
            return Ok(m);
        }
        let module = Arc::new(Module {
            path,
            state: Mutex::new(ModuleState {
                context: Some(load(uri)?),
                open: HashMap::new(),
            }),
        });
        modules.push(Arc::downgrade(&module));
        Ok(module)
    }

    fn lock(&self) -> MutexGuard<'_, ModuleState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ModuleState {
    /// The initialised module, loaded again if a failure dropped it.
    fn context(&mut self, uri: &KeyUri) -> Result<&Pkcs11, TokenError> {
        if self.context.is_none() {
            self.context = Some(load(uri)?);
        }
        Ok(self.context.as_ref().expect("loaded just above"))
    }

    /// A logged-in session on the URI's token (read-write when `write`);
    /// a PIN refused before is not tried again.
    fn session(&mut self, uri: &KeyUri, write: bool) -> Result<Session, TokenError> {
        let pin = pin_key(uri);
        let refused = || REFUSED.lock().unwrap_or_else(PoisonError::into_inner);
        if refused().contains(&pin) {
            return Err(TokenError::PinIncorrect {
                uri: uri.to_string(),
            });
        }
        let opened = session(self.context(uri)?, uri, write);
        if let Err(TokenError::PinIncorrect { .. }) = &opened {
            refused().push(pin);
        }
        opened
    }

    /// Opens a session on the URI's token, logs in and finds the private
    /// key.
    fn login_and_find(&mut self, uri: &KeyUri) -> Result<Open, TokenError> {
        let session = self.session(uri, false)?;
        let key = find_key(&session, uri, ObjectClass::PRIVATE_KEY)?.ok_or_else(|| {
            TokenError::NoKey {
                uri: uri.to_string(),
            }
        })?;
        check_p256(&session, uri, key)?;
        Ok(Open { session, key })
    }

    /// Closes every key's session and finalises the module; the next use
    /// loads it again.
    fn reset(&mut self) {
        self.open.clear();
        if let Some(context) = self.context.take() {
            let _ = context.finalize();
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        self.lock().reset();
    }
}

/// A P-256 private key in a token.
pub struct TokenKey {
    uri: KeyUri,
    module: Arc<Module>,
    /// This key's number in the module's sessions.
    number: u64,
    /// The public key, SEC1 uncompressed (`04 || X || Y`).
    public: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("uri", &self.uri.to_string())
            .finish_non_exhaustive()
    }
}

impl Drop for TokenKey {
    fn drop(&mut self) {
        self.module.lock().open.remove(&self.number);
    }
}

impl TokenKey {
    /// Loads the module (or shares it with the keys already in it), logs
    /// in and finds the key; fails with what to do.
    pub fn open(uri: &KeyUri) -> Result<TokenKey, TokenError> {
        let module = Module::get(uri)?;
        let number = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let public = {
            let mut state = module.lock();
            let open = state.login_and_find(uri)?;
            let public = public_key(&open.session, uri, open.key)?;
            state.open.insert(number, open);
            public
        };
        Ok(TokenKey {
            uri: uri.clone(),
            module,
            number,
            public,
        })
    }

    pub fn uri(&self) -> &KeyUri {
        &self.uri
    }

    /// The public key, SEC1 uncompressed.
    pub fn public_sec1(&self) -> &[u8] {
        &self.public
    }

    /// The public key as a DER SubjectPublicKeyInfo (id-ecPublicKey,
    /// prime256v1), as certificates and certificate requests hold it.
    pub fn public_spki(&self) -> Vec<u8> {
        /// The SPKI's DER up to the point (RFC 5480): SEQUENCE { SEQUENCE
        /// { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes, 0 unused
        /// bits) }.
        const PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.public);
        der
    }

    /// Signs a SHA-256 `digest`: the ECDSA signature `r || s`.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], TokenError> {
        let mut state = self.module.lock();
        if !state.open.contains_key(&self.number) {
            match state.login_and_find(&self.uri) {
                Ok(open) => {
                    state.open.insert(self.number, open);
                }
                Err(e) => {
                    // The next try loads the module afresh.
                    state.reset();
                    return Err(e);
                }
            }
        }
        let o = &state.open[&self.number];
        let signed = o.session.sign(&Mechanism::Ecdsa, o.key, digest);
        match signed {
            Ok(signature) => match <[u8; 64]>::try_from(signature.as_slice()) {
                Ok(sig) => Ok(sig),
                Err(_) => {
                    state.open.remove(&self.number);
                    Err(TokenError::NotP256 {
                        uri: self.uri.to_string(),
                        detail: format!("the token made a {}-byte signature", signature.len()),
                    })
                }
            },
            Err(e) => {
                // Whatever failed, the next try starts from a new session.
                state.open.remove(&self.number);
                Err(TokenError::Unavailable {
                    uri: self.uri.to_string(),
                    detail: ck(&e),
                })
            }
        }
    }
}

/// Runs `f` with a read-write session logged in to the URI's token, on the
/// module the process shares (`sensorgate keygen --pkcs11`).
pub(super) fn with_rw_session<T>(
    uri: &KeyUri,
    f: impl FnOnce(&Session) -> Result<T, TokenError>,
) -> Result<T, TokenError> {
    let module = Module::get(uri)?;
    let mut state = module.lock();
    let session = state.session(uri, true)?;
    f(&session)
}

/// Loads and initialises the module.
fn load(uri: &KeyUri) -> Result<Pkcs11, TokenError> {
    let module = |detail: String| TokenError::Module {
        path: uri.module_path.clone(),
        detail,
        uri: uri.to_string(),
    };
    if !uri.module_path.is_file() {
        return Err(module("no such file".into()));
    }
    let context = Pkcs11::new(&uri.module_path).map_err(|e| module(ck(&e)))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(context),
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => Ok(context),
        Err(e) => Err(module(ck(&e))),
    }
}

/// The slot whose token the URI names: exactly one.
fn find_slot(context: &Pkcs11, uri: &KeyUri) -> Result<Slot, TokenError> {
    let unavailable = |e: CkError| TokenError::Unavailable {
        uri: uri.to_string(),
        detail: ck(&e),
    };
    let mut present = Vec::new();
    let mut matching = Vec::new();
    for slot in context.get_slots_with_token().map_err(unavailable)? {
        let Ok(info) = context.get_token_info(slot) else {
            continue;
        };
        let want =
            |w: &Option<String>, have: &str| w.as_deref().is_none_or(|w| w == have.trim_end());
        let fits = want(&uri.token, info.label())
            && want(&uri.manufacturer, info.manufacturer_id())
            && want(&uri.model, info.model())
            && want(&uri.serial, info.serial_number())
            && uri.slot_id.is_none_or(|id| id == slot.id());
        present.push(format!(
            "\"{}\" (serial {}, slot {})",
            info.label().trim_end(),
            info.serial_number().trim_end(),
            slot.id()
        ));
        if fits {
            matching.push(slot);
        }
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(TokenError::NoToken {
            uri: uri.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        }),
        _ => Err(TokenError::NoToken {
            uri: uri.to_string(),
            present: format!(
                "{} (more than one matches: add token= or serial=)",
                present.join(", ")
            ),
        }),
    }
}

/// The user PIN, from where the URI says.
pub fn read_pin(uri: &KeyUri) -> Result<AuthPin, TokenError> {
    let failed = |detail: String| TokenError::PinSource {
        uri: uri.to_string(),
        detail,
    };
    let path: PathBuf = match &uri.pin {
        None => {
            return Err(failed(
                "the URI has no pin-source; add &pin-source=file:/etc/sensorgate/keys/token.pin (or credential:NAME)".into(),
            ));
        }
        Some(PinSource::File(p)) => p.clone(),
        Some(PinSource::Credential(name)) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Path::new(&dir).join(name),
            None => {
                return Err(failed(format!(
                    "credential {name}: $CREDENTIALS_DIRECTORY is not set; the unit needs LoadCredential={name}:/path/to/pin"
                )));
            }
        },
    };
    let text: Zeroizing<String> =
        crate::secret_file::read_private(&path).map_err(|e| failed(e.to_string()))?;
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(failed(format!("{} is empty", path.display())));
    }
    Ok(AuthPin::from(pin.to_string()))
}

/// What tells one PIN apart from another for [`ModuleState::refused`]:
/// the URI without the key's name (the token, the module and where the PIN
/// comes from).
fn pin_key(uri: &KeyUri) -> String {
    let mut token = uri.clone();
    token.object = None;
    token.id = None;
    token.to_string()
}

/// A logged-in session on the URI's token; read-write when `write`.
fn session(context: &Pkcs11, uri: &KeyUri, write: bool) -> Result<Session, TokenError> {
    let slot = find_slot(context, uri)?;
    let opened = if write {
        context.open_rw_session(slot)
    } else {
        context.open_ro_session(slot)
    };
    let session = opened.map_err(|e| TokenError::Unavailable {
        uri: uri.to_string(),
        detail: ck(&e),
    })?;
    let pin = read_pin(uri)?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) => Ok(session),
        Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => Ok(session),
        Err(e) if rv(&e) == Some(RvError::PinIncorrect) => Err(TokenError::PinIncorrect {
            uri: uri.to_string(),
        }),
        Err(e) if rv(&e) == Some(RvError::PinLocked) => Err(TokenError::PinLocked {
            uri: uri.to_string(),
        }),
        Err(e) => Err(TokenError::Unavailable {
            uri: uri.to_string(),
            detail: ck(&e),
        }),
    }
}

/// The one object of `class` the URI names, if any.
pub(super) fn find_key(
    session: &Session,
    uri: &KeyUri,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, TokenError> {
    let mut template = vec![Attribute::Class(class), Attribute::KeyType(KeyType::EC)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| TokenError::Unavailable {
            uri: uri.to_string(),
            detail: ck(&e),
        })?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        more => Err(TokenError::ManyKeys {
            uri: uri.to_string(),
            count: more.len(),
        }),
    }
}

fn check_p256(session: &Session, uri: &KeyUri, key: ObjectHandle) -> Result<(), TokenError> {
    let attrs = session
        .get_attributes(key, &[AttributeType::EcParams])
        .map_err(|e| TokenError::NotP256 {
            uri: uri.to_string(),
            detail: ck(&e),
        })?;
    match attrs.as_slice() {
        [Attribute::EcParams(p)] if p.as_slice() == P256_PARAMS => Ok(()),
        _ => Err(TokenError::NotP256 {
            uri: uri.to_string(),
            detail: "its curve is not prime256v1".into(),
        }),
    }
}

/// The public key of the pair, from the public-key object beside the
/// private key: SEC1 uncompressed.
fn public_key(
    session: &Session,
    uri: &KeyUri,
    private: ObjectHandle,
) -> Result<Vec<u8>, TokenError> {
    let not = |detail: String| TokenError::NotP256 {
        uri: uri.to_string(),
        detail,
    };
    // The public object carries the private key's label and id.
    let ids = session
        .get_attributes(private, &[AttributeType::Id])
        .unwrap_or_default();
    let mut by = uri.clone();
    if by.id.is_none() {
        if let Some(Attribute::Id(id)) = ids.first() {
            by.id = Some(id.clone()).filter(|id| !id.is_empty());
        }
    }
    let public = find_key(session, &by, ObjectClass::PUBLIC_KEY)?
        .ok_or_else(|| not("the token has no public-key object beside the private key".into()))?;
    let attrs = session
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| not(ck(&e)))?;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::EcParams(p) if p.as_slice() != P256_PARAMS => {
                return Err(not("its curve is not prime256v1".into()));
            }
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let point = point.ok_or_else(|| not("the public key has no CKA_EC_POINT".into()))?;
    sec1_point(&point).ok_or_else(|| not("CKA_EC_POINT is not an uncompressed P-256 point".into()))
}

/// `CKA_EC_POINT` as tokens store it: the DER OCTET STRING holding the
/// SEC1 point (most), or the bare point (some).
pub(super) fn sec1_point(value: &[u8]) -> Option<Vec<u8>> {
    let bare = match value {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        [0x04, rest @ ..] if rest.len() == 64 => value,
        _ => return None,
    };
    (bare.len() == 65 && bare[0] == 0x04).then(|| bare.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_read_with_or_without_their_der_wrapping() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut der = vec![0x04, 0x41];
        der.extend(&point);
        assert_eq!(sec1_point(&der), Some(point.clone()));
        assert_eq!(sec1_point(&point), Some(point.clone()));
        assert_eq!(sec1_point(&point[..33]), None);
    }
}
