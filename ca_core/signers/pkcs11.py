"""PKCS#11 key backend: CA keys generated and used inside a token (an HSM, or SoftHSM2).

Private keys are created on the token as sensitive, non-extractable signing keys and never
leave it; a ``Pkcs11Signer`` hands cryptography's builders a ``RemoteECKey``/``RemoteRSAKey``
whose ``sign()`` calls the token. Keys are found again by their CKA_ID, written into the
key reference as ``pkcs11:id=<hex>;label=<label>``. An RSA key generated with
``decrypt=True`` (an RA key) also has CKA_DECRYPT and decrypts in the token with CKM_RSA_PKCS
or CKM_RSA_PKCS_OAEP (PKCS#11 2.40 2.1.6, 2.1.8); CA keys are generated without it.

Concurrency model: the backend logs in once, keeps a small pool of sessions (a session is
used by one thread at a time), and runs signing builds in its own thread pool with as many
workers as sessions, so asyncio tasks sign in parallel without blocking the event loop and
never wait for a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import hmac
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11err
from pkcs11.types import DecryptMixin, Object, PrivateKey, Session, SignMixin, Token

from ca_core.keys import KeyAlgorithm, KeySpec, spec_of
from ca_core.signers.base import (
    DecryptionFailed,
    KeyBackend,
    KeyBackendError,
    KeyProtection,
    RemoteECKey,
    RemoteRSAKey,
    RsaOaep,
    RsaPadding,
    Signer,
    UnsupportedKeyOperation,
    key_spec_algorithm_ok,
)

T = TypeVar("T")

# Same rule as software key labels; it also keeps ';' and '=' out of the key reference.
_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,100}\Z")  # \Z: "$" lets a final "\n" in
_KEY_ID_BYTES = 16
_RSA_SIZES = (2048, 3072, 4096)
# How long a caller outside the backend's executor waits for a free session.
_SESSION_WAIT_SECONDS = 30.0

# DER ECParameters (namedCurve OID) as tokens store them in CKA_EC_PARAMS.
_EC_PARAMS: dict[int, bytes] = {
    256: bytes.fromhex("06082a8648ce3d030107"),  # secp256r1
    384: bytes.fromhex("06052b81040022"),  # secp384r1
}
_CURVES: dict[bytes, ec.EllipticCurve] = {
    _EC_PARAMS[256]: ec.SECP256R1(),
    _EC_PARAMS[384]: ec.SECP384R1(),
}
_RSA_MECHANISMS: dict[str, Mechanism] = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}
# CK_RSA_PKCS_OAEP_PARAMS hashAlg and mgf by hashlib name.
_OAEP_HASHES: dict[str, tuple[Mechanism, MGF]] = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1),
    "sha224": (Mechanism.SHA224, MGF.SHA224),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}
# Decryption errors that mean "this ciphertext does not decrypt under this key". Tokens
# report a failed padding check variously: SoftHSM2 2.6 answers CKR_GENERAL_ERROR for a bad
# PKCS#1 v1.5 or OAEP block (its OpenSSL call failed), others CKR_ENCRYPTED_DATA_INVALID or
# CKR_FUNCTION_FAILED. A token that really broke fails the next signature loudly.
_NOT_DECRYPTABLE = (
    p11err.EncryptedDataInvalid,
    p11err.EncryptedDataLenRange,
    p11err.DataInvalid,
    p11err.DataLenRange,
    p11err.GeneralError,
    p11err.FunctionFailed,
)
# Errors of a token that lacks the mechanism or these OAEP parameters (SoftHSM2 2.6: OAEP
# with SHA-1 only).
_MECHANISM_REFUSED = (
    p11err.MechanismInvalid,
    p11err.MechanismParamInvalid,
    p11err.ArgumentsBad,
)
# Errors after which a session is dead and must not go back into the pool.
_DEAD_SESSION = (
    p11err.SessionHandleInvalid,
    p11err.SessionClosed,
    p11err.DeviceRemoved,
    p11err.DeviceError,
    p11err.TokenNotPresent,
)
# Errors after which a cached key handle is stale (key deleted, token re-initialised).
_STALE_HANDLE = (p11err.ObjectHandleInvalid, p11err.KeyHandleInvalid)


# --- module initialisation ---------------------------------------------------------------
#
# python-pkcs11 calls C_Initialize(NULL), which by the PKCS#11 spec promises the module that
# no two threads call it at once. SoftHSM2 takes that literally and switches its internal
# mutexes off, and python-pkcs11 releases the GIL around every token call: signing from
# several threads then corrupts SoftHSM2's heap ("double free or corruption", CKR_GENERAL_ERROR
# under load, measured). Right after python-pkcs11 first loads a module, and before any
# session exists, we therefore finalise it and initialise it again with CKF_OS_LOCKING_OK,
# the standard way for a multi-threaded application. python-pkcs11 keeps working: the function
# list is static and it only tracks an "initialized" flag. A module that refuses OS locking
# (CKR_CANT_LOCK) is initialised as before and every call into it is serialised instead.

_CKR_OK = 0
_CKF_OS_LOCKING_OK = 0x2
# CK_ULONG is C ``unsigned long`` and structs are naturally aligned on Unix; this module
# targets Unix (Windows PKCS#11 headers pack structs to 1 byte).
_CkRv = ctypes.c_ulong
_CkInitFn = ctypes.CFUNCTYPE(_CkRv, ctypes.c_void_p)


class _CkVersion(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _CkFunctionListHead(ctypes.Structure):
    """The first two entries of CK_FUNCTION_LIST; the rest is never touched here."""

    _fields_ = (
        ("version", _CkVersion),
        ("C_Initialize", _CkInitFn),
        ("C_Finalize", _CkInitFn),
    )


class _CkInitializeArgs(ctypes.Structure):
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    )


def _reinitialise_with_os_locking(module_path: str) -> bool:
    """Re-initialise a freshly loaded module for multi-threaded use; False if it refuses."""
    # dlopen() of an already loaded library returns the same instance python-pkcs11 uses.
    dll = ctypes.CDLL(module_path)
    get_function_list = dll.C_GetFunctionList
    get_function_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_CkFunctionListHead))]
    get_function_list.restype = _CkRv
    function_list = ctypes.POINTER(_CkFunctionListHead)()
    if get_function_list(ctypes.byref(function_list)) != _CKR_OK or not function_list:
        return False
    head = function_list.contents
    if head.C_Finalize(None) != _CKR_OK:
        return False
    args = _CkInitializeArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
    if head.C_Initialize(ctypes.cast(ctypes.byref(args), ctypes.c_void_p)) == _CKR_OK:
        return True
    rv = head.C_Initialize(None)
    if rv != _CKR_OK:
        raise KeyBackendError(f"PKCS#11 module {module_path} failed to re-initialise (rv={rv:#x})")
    return False


@dataclass
class _Module:
    """A loaded PKCS#11 module; one per path per process (python-pkcs11 caches them too)."""

    lib: Any
    # Held around every call into the module when it refused CKF_OS_LOCKING_OK.
    serial_lock: threading.Lock | None


@dataclass
class _Login:
    """The one login per token per process.

    PKCS#11 login state belongs to the application, not to a session: every session of the
    process sees it, a second C_Login fails with CKR_USER_ALREADY_LOGGED_IN, and C_Logout (which
    python-pkcs11 issues when the session that logged in is closed) logs out all of them. So the
    login session is shared between backends on the same token and closed with the last one.
    """

    session: Session
    pin_mac: bytes
    mac_key: bytes
    refs: int = 1


_REGISTRY_LOCK = threading.Lock()
_MODULES: dict[str, _Module] = {}
_LOGINS: dict[tuple[str, int], _Login] = {}


def _pin_mac(key: bytes, pin: str) -> bytes:
    return hmac.new(key, pin.encode(), hashlib.sha256).digest()


def _load_module(module_path: str) -> _Module:
    """Load (once) the module at ``module_path``; call with _REGISTRY_LOCK held."""
    module = _MODULES.get(module_path)
    if module is not None:
        return module
    if not os.path.isfile(module_path):
        raise KeyBackendError(f"PKCS#11 module {module_path} does not exist")
    # Someone else in the process loaded it with python-pkcs11 and may hold sessions, which
    # C_Finalize would kill: then stay on the safe side and serialise.
    loaded_elsewhere = module_path in getattr(pkcs11, "_loaded", {})
    try:
        lib = pkcs11.lib(module_path)
    except (p11err.PKCS11Error, OSError) as exc:
        raise KeyBackendError(f"cannot load PKCS#11 module {module_path}: {exc}") from exc
    locking = False
    if not loaded_elsewhere:
        try:
            locking = _reinitialise_with_os_locking(module_path)
        except (OSError, AttributeError) as exc:
            raise KeyBackendError(f"cannot initialise PKCS#11 module {module_path}: {exc}") from exc
    module = _Module(lib=lib, serial_lock=None if locking else threading.Lock())
    _MODULES[module_path] = module
    return module


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --- key helpers ---------------------------------------------------------------------------


def _ec_point(raw: bytes, size: int) -> bytes:
    """The uncompressed point from CKA_EC_POINT, which most tokens wrap in a DER OCTET STRING."""
    point_len = 2 * ((size + 7) // 8) + 1
    if len(raw) == point_len and raw[0] == 0x04:
        return raw  # a token that stores the bare point
    if len(raw) >= 2 and raw[0] == 0x04:
        if raw[1] < 0x80:
            body = raw[2:]
        elif raw[1] == 0x81:
            body = raw[3:]
        else:
            body = b""
        if len(body) == point_len:
            return body
    raise KeyBackendError("token returned an EC point in an unknown encoding")


def _public_key_from(obj: Object, key_type: KeyType) -> CertificateIssuerPublicKeyTypes:
    """Build a cryptography public key from a token object's public attributes."""
    try:
        if key_type == KeyType.EC:
            params = bytes(obj[Attribute.EC_PARAMS])
            curve = _CURVES.get(params)
            if curve is None:
                raise KeyBackendError("token key uses an EC curve other than P-256/P-384")
            point = _ec_point(bytes(obj[Attribute.EC_POINT]), curve.key_size)
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        if key_type == KeyType.RSA:
            modulus = int.from_bytes(bytes(obj[Attribute.MODULUS]), "big")
            exponent = int.from_bytes(bytes(obj[Attribute.PUBLIC_EXPONENT]), "big")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except p11err.PKCS11Error as exc:
        raise KeyBackendError(f"cannot read the public key: {_describe(exc)}") from exc
    except ValueError as exc:
        raise KeyBackendError(f"token returned an invalid public key: {exc}") from exc
    raise KeyBackendError(f"token key type {key_type!r} is not RSA or EC")


def _check_spec(spec: KeySpec) -> None:
    if not key_spec_algorithm_ok(spec):
        raise KeyBackendError(f"{spec} keys are not supported on PKCS#11 tokens (RSA, ECDSA only)")
    if spec.algorithm is KeyAlgorithm.RSA and spec.size not in _RSA_SIZES:
        raise KeyBackendError(f"RSA-{spec.size} is not an allowed CA key size")
    if spec.algorithm is KeyAlgorithm.ECDSA and spec.size not in _EC_PARAMS:
        raise KeyBackendError(f"{spec} is not an allowed CA curve")


def _parse_key_ref(key_ref: str) -> bytes:
    """The CKA_ID named by ``pkcs11:id=<hex>;label=<label>`` (the label is informational)."""
    if not key_ref.startswith("pkcs11:"):
        raise KeyBackendError(f"{key_ref!r} is not a PKCS#11 key reference")
    fields: dict[str, str] = {}
    for part in key_ref.removeprefix("pkcs11:").split(";"):
        name, sep, value = part.partition("=")
        if not sep or name not in ("id", "label") or name in fields:
            raise KeyBackendError(f"malformed PKCS#11 key reference {key_ref!r}")
        fields[name] = value
    try:
        key_id = bytes.fromhex(fields.get("id", ""))
    except ValueError:
        key_id = b""
    if not key_id:
        raise KeyBackendError(f"PKCS#11 key reference {key_ref!r} has no hex id")
    return key_id


def _key_ref(key_id: bytes, label: str) -> str:
    return f"pkcs11:id={key_id.hex()};label={label}"


@dataclass
class _PooledSession:
    session: Session
    # Key objects found in this session, by CKA_ID (object handles are per session in
    # python-pkcs11's API, and a search per signature would double the token round trips).
    keys: dict[bytes, PrivateKey] = field(default_factory=dict)


# --- signer --------------------------------------------------------------------------------


class Pkcs11Signer(Signer):
    """A CA key on a PKCS#11 token; every signature is a call into the token."""

    hsm_backed = True

    def __init__(
        self,
        backend: Pkcs11KeyBackend,
        key_id: bytes,
        key_ref: str,
        spec: KeySpec,
        public_key: CertificateIssuerPublicKeyTypes,
        can_decrypt: bool = False,
    ) -> None:
        self._backend = backend
        self._can_decrypt = can_decrypt and isinstance(public_key, rsa.RSAPublicKey)
        self.key_id = key_id
        self.key_spec = spec
        self.key_ref = key_ref
        self._public = public_key
        self._builder_key: CertificateIssuerPrivateKeyTypes
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            self._builder_key = RemoteECKey(public_key, self._sign_digest)
        elif isinstance(public_key, rsa.RSAPublicKey):
            self._builder_key = RemoteRSAKey(public_key, self._sign_message)
        else:
            raise KeyBackendError(f"{type(public_key).__name__} keys are not supported")

    @property
    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._public

    def builder_key(self) -> CertificateIssuerPrivateKeyTypes:
        return self._builder_key

    def sign_sync(self, data: bytes) -> bytes:
        algorithm = self.key_spec.hash_algorithm
        if algorithm is None:  # pragma: no cover - Ed25519 never reaches a token signer
            raise KeyBackendError(f"{self.key_spec} has no signature hash")
        if isinstance(self._public, ec.EllipticCurvePublicKey):
            digest = hashes.Hash(algorithm)
            digest.update(data)
            return self._sign_digest(digest.finalize())
        return self._sign_message(data, algorithm)

    async def run(self, build: Callable[[], T]) -> T:
        return await self._backend.run_in_executor(build)

    @property
    def can_decrypt(self) -> bool:
        return self._can_decrypt

    def decrypt_sync(self, ciphertext: bytes, padding: RsaPadding) -> bytes:
        if not self._can_decrypt:
            raise UnsupportedKeyOperation(
                f"key {self.key_ref} may not decrypt (RSA keys generated with decrypt=True)")
        if padding == "pkcs1v15":
            return self._backend.decrypt_with(self.key_id, ciphertext, Mechanism.RSA_PKCS, None)
        if isinstance(padding, RsaOaep):
            hash_mechanism, _ = _OAEP_HASHES[padding.hash]
            _, mgf = _OAEP_HASHES[padding.mgf1_hash]
            return self._backend.decrypt_with(
                self.key_id, ciphertext, Mechanism.RSA_PKCS_OAEP, (hash_mechanism, mgf, None))
        raise ValueError(f"unknown RSA padding {padding!r}")

    def _sign_digest(self, digest: bytes) -> bytes:
        # SoftHSM2 2.6 has no CKM_ECDSA_SHA256/384: hash here, sign the digest with CKM_ECDSA.
        raw = self._backend.sign_with(self.key_id, digest, Mechanism.ECDSA)
        half = len(raw) // 2
        if len(raw) == 0 or len(raw) % 2:
            raise KeyBackendError(f"token returned a malformed ECDSA signature ({len(raw)} bytes)")
        r = int.from_bytes(raw[:half], "big")
        s = int.from_bytes(raw[half:], "big")
        return encode_dss_signature(r, s)

    def _sign_message(self, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        mechanism = _RSA_MECHANISMS.get(algorithm.name)
        if mechanism is None:
            raise KeyBackendError(f"token RSA signatures with {algorithm.name} are not supported")
        return self._backend.sign_with(self.key_id, data, mechanism)


# --- backend -------------------------------------------------------------------------------


class Pkcs11KeyBackend(KeyBackend):
    name = "pkcs11"

    def __init__(self, module_path: str, token_label: str, pin: str, max_sessions: int = 4) -> None:
        if max_sessions < 1:
            raise KeyBackendError("max_sessions must be at least 1")
        if not pin:
            raise KeyBackendError("the PKCS#11 user PIN is empty")
        self.module_path = module_path
        self.token_label = token_label
        self._max_sessions = max_sessions
        self._idle: queue.Queue[_PooledSession] = queue.Queue()
        self._pool_lock = threading.Lock()
        self._opened = 0
        self._closed = False
        # Generation and lookup are rare; one at a time keeps SoftHSM2's object store happy
        # (concurrent object creation there is known to fail, SoftHSMv2#573).
        self._admin_lock = threading.Lock()
        # CKA_IDs of the keys generated or loaded through this backend.
        self._loaded: set[bytes] = set()
        with _REGISTRY_LOCK:
            self._module = _load_module(module_path)
            self._guard: contextlib.AbstractContextManager[Any] = (
                self._module.serial_lock or contextlib.nullcontext()
            )
            self._token = self._find_token()
            self._login_key = (module_path, self._token.slot.slot_id)
            self._log_in(pin)
        self._executor = ThreadPoolExecutor(
            max_workers=max_sessions, thread_name_prefix="pkcs11-sign"
        )

    # -- setup --

    def _find_token(self) -> Token:
        try:
            with self._guard:
                return cast(Token, self._module.lib.get_token(token_label=self.token_label))
        except p11err.NoSuchToken:
            with self._guard:
                labels = sorted(t.label for t in self._module.lib.get_tokens())
            raise KeyBackendError(
                f"no token labelled {self.token_label!r} in {self.module_path} "
                f"(tokens: {', '.join(map(repr, labels)) or 'none'})"
            ) from None
        except p11err.MultipleTokensReturned:
            raise KeyBackendError(f"several tokens are labelled {self.token_label!r}") from None
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(f"cannot list PKCS#11 tokens: {_describe(exc)}") from exc

    def _log_in(self, pin: str) -> None:
        """Log in to the token, or join this process's existing login; _REGISTRY_LOCK held."""
        login = _LOGINS.get(self._login_key)
        if login is not None:
            # The token cannot check the PIN again while logged in; compare with the PIN it
            # accepted so a wrong PIN is not silently accepted because another backend logged in.
            if not hmac.compare_digest(login.pin_mac, _pin_mac(login.mac_key, pin)):
                raise KeyBackendError(f"wrong PIN for token {self.token_label!r}")
            login.refs += 1
            return
        try:
            with self._guard:
                session = self._token.open(user_pin=pin)
        except p11err.PinIncorrect:
            raise KeyBackendError(f"wrong PIN for token {self.token_label!r}") from None
        except p11err.PinLocked:
            raise KeyBackendError(f"the PIN of token {self.token_label!r} is locked") from None
        except (p11err.PinLenRange, p11err.PinInvalid):
            raise KeyBackendError(f"invalid PIN for token {self.token_label!r}") from None
        except p11err.UserAlreadyLoggedIn:
            raise KeyBackendError(
                f"token {self.token_label!r} is already logged in by other code in this process"
            ) from None
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(
                f"cannot log in to token {self.token_label!r}: {_describe(exc)}"
            ) from exc
        mac_key = os.urandom(32)
        _LOGINS[self._login_key] = _Login(session, _pin_mac(mac_key, pin), mac_key)

    def _log_out(self) -> None:
        with _REGISTRY_LOCK:
            login = _LOGINS.get(self._login_key)
            if login is None:
                return
            login.refs -= 1
            if login.refs > 0:
                return
            del _LOGINS[self._login_key]
            # Closing the session that logged in makes python-pkcs11 call C_Logout.
            with contextlib.suppress(p11err.PKCS11Error), self._guard:
                login.session.close()

    # -- session pool --

    @property
    def sessions_open(self) -> int:
        """Sessions this backend has open (at most ``max_sessions``)."""
        return self._opened

    def _acquire(self) -> _PooledSession:
        with self._pool_lock:
            if self._closed:
                raise KeyBackendError("the PKCS#11 backend is closed")
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            create = self._opened < self._max_sessions
            if create:
                self._opened += 1
        if create:
            try:
                # No PIN: the token is already logged in for the whole process; opening with
                # the PIN again would fail with CKR_USER_ALREADY_LOGGED_IN, and closing such a
                # session would log every session out.
                with self._guard:
                    return _PooledSession(self._token.open())
            except p11err.PKCS11Error as exc:
                with self._pool_lock:
                    self._opened -= 1
                raise KeyBackendError(f"cannot open a PKCS#11 session: {_describe(exc)}") from exc
        try:
            return self._idle.get(timeout=_SESSION_WAIT_SECONDS)
        except queue.Empty:
            raise KeyBackendError("no PKCS#11 session became free in time") from None

    def _release(self, pooled: _PooledSession, broken: bool = False) -> None:
        with self._pool_lock:
            if not broken and not self._closed:
                self._idle.put(pooled)
                return
            self._opened -= 1
        with contextlib.suppress(p11err.PKCS11Error), self._guard:
            pooled.session.close()

    @contextlib.contextmanager
    def _session(self) -> Iterator[_PooledSession]:
        pooled = self._acquire()
        broken = False
        try:
            with self._guard:
                yield pooled
        except _DEAD_SESSION:
            broken = True
            raise
        except KeyBackendError as exc:
            broken = isinstance(exc.__cause__, _DEAD_SESSION)
            raise
        finally:
            self._release(pooled, broken)

    # -- operations used by signers --

    def _with_key(self, key_id: bytes, operation: Callable[[PrivateKey], bytes]) -> bytes:
        """``operation`` on the private key ``key_id`` in a pooled session (blocking)."""
        with self._session() as pooled:
            key = pooled.keys.get(key_id)
            if key is not None:
                try:
                    return operation(key)
                except _STALE_HANDLE:
                    del pooled.keys[key_id]
            key = self._find_private_key(pooled.session, key_id)
            pooled.keys[key_id] = key
            return operation(key)

    def sign_with(self, key_id: bytes, data: bytes, mechanism: Mechanism) -> bytes:
        """Sign ``data`` with the private key ``key_id`` (blocking)."""
        try:
            return self._with_key(
                key_id, lambda key: cast(SignMixin, key).sign(data, mechanism=mechanism))
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(
                f"token signature with key {key_id.hex()} failed: {_describe(exc)}"
            ) from exc

    def decrypt_with(self, key_id: bytes, ciphertext: bytes, mechanism: Mechanism,
                     parameters: tuple[Mechanism, MGF, None] | None) -> bytes:
        """Decrypt ``ciphertext`` with the private key ``key_id`` (blocking)."""

        def decrypt(key: PrivateKey) -> bytes:
            if not isinstance(key, DecryptMixin):  # python-pkcs11 mixes it in for CKA_DECRYPT
                raise UnsupportedKeyOperation(f"key {key_id.hex()} has no CKA_DECRYPT")
            return cast(bytes, key.decrypt(ciphertext, mechanism=mechanism,
                                           mechanism_param=parameters))

        try:
            return self._with_key(key_id, decrypt)
        except _NOT_DECRYPTABLE:
            raise DecryptionFailed("the ciphertext does not decrypt under this key") from None
        except _MECHANISM_REFUSED as exc:
            raise UnsupportedKeyOperation(
                f"the token refuses {mechanism.name} with these parameters: {_describe(exc)}"
            ) from exc
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(
                f"token decryption with key {key_id.hex()} failed: {_describe(exc)}"
            ) from exc

    async def run_in_executor(self, build: Callable[[], T]) -> T:
        """Run a blocking token operation in the backend's bounded thread pool."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, build)
        except RuntimeError as exc:  # the executor is shut down
            raise KeyBackendError("the PKCS#11 backend is closed") from exc
        return await future

    @staticmethod
    def _find_private_key(session: Session, key_id: bytes) -> PrivateKey:
        found = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        )
        if not found:
            raise KeyBackendError(f"no private key with id {key_id.hex()} on the token")
        if len(found) > 1:
            raise KeyBackendError(f"several private keys have id {key_id.hex()}")
        return cast(PrivateKey, found[0])

    # -- KeyBackend --

    def generate(self, spec: KeySpec, label: str, *, decrypt: bool = False) -> Signer:
        _check_spec(spec)
        if decrypt and spec.algorithm is not KeyAlgorithm.RSA:
            raise UnsupportedKeyOperation(f"{spec} keys cannot decrypt (RSA only)")
        if not _LABEL.match(label):
            raise KeyBackendError(f"invalid key label {label!r}")
        key_id = os.urandom(_KEY_ID_BYTES)
        public_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
        }
        private_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            # Only an RA key decrypts: a CA key that decrypted PKCS#1 v1.5 would be an oracle
            # for Bleichenbacher-style forgeries of its signatures.
            Attribute.DECRYPT: decrypt,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        if spec.algorithm is KeyAlgorithm.ECDSA:
            key_type, key_length = KeyType.EC, None
            public_template[Attribute.EC_PARAMS] = _EC_PARAMS[spec.size]
        else:
            key_type, key_length = KeyType.RSA, spec.size
        if self._closed:
            raise KeyBackendError("the PKCS#11 backend is closed")
        with self._admin_lock, self._rw_session() as session:
            try:
                if list(session.get_objects({Attribute.LABEL: label})):
                    raise KeyBackendError(f"a key labelled {label!r} already exists on the token")
                public, private = session.generate_keypair(
                    key_type,
                    key_length,
                    id=key_id,
                    label=label,
                    store=True,
                    public_template=public_template,
                    private_template=private_template,
                )
                # A token may ignore template attributes; never hand out a key it would export,
                # nor a CA key that decrypts.
                flags = private.get_attributes(
                    [Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.DECRYPT])
                if not flags[Attribute.SENSITIVE] or flags[Attribute.EXTRACTABLE] or \
                        bool(flags[Attribute.DECRYPT]) != decrypt:
                    public.destroy()
                    private.destroy()
                    raise KeyBackendError("the token did not create a sensitive, unexportable key "
                                          "with the requested usage")
                public_key = _public_key_from(public, key_type)
            except p11err.PKCS11Error as exc:
                raise KeyBackendError(
                    f"cannot generate {spec} key {label!r}: {_describe(exc)}"
                ) from exc
        signer = Pkcs11Signer(self, key_id, _key_ref(key_id, label), spec, public_key, decrypt)
        self._loaded.add(key_id)
        return signer

    def describe(self, key_ref: str) -> KeyProtection:
        """The token's own answer for the private key: CKA_EXTRACTABLE, CKA_SENSITIVE and
        its label (read, not assumed from how this backend generates keys: a key imported
        by other tools may differ)."""
        key_id = _parse_key_ref(key_ref)
        with self._admin_lock, self._session() as pooled:
            try:
                private = self._find_private_key(pooled.session, key_id)
                flags = private.get_attributes(
                    [Attribute.EXTRACTABLE, Attribute.SENSITIVE, Attribute.LABEL])
            except p11err.PKCS11Error as exc:
                raise KeyBackendError(
                    f"cannot read the attributes of key {key_id.hex()}: {_describe(exc)}"
                ) from exc
        extractable = bool(flags[Attribute.EXTRACTABLE])
        sensitive = bool(flags[Attribute.SENSITIVE])
        return KeyProtection(
            backend=self.name, module=self.module_path, label=str(flags[Attribute.LABEL]),
            extractable=extractable, sensitive=sensitive,
            summary=f"PKCS#11 token {self.token_label!r}: "
                    + ("extractable" if extractable else "not extractable")
                    + (", sensitive" if sensitive else ", NOT sensitive"))

    def load(self, key_ref: str) -> Signer:
        key_id = _parse_key_ref(key_ref)
        with self._admin_lock, self._session() as pooled:
            session = pooled.session
            try:
                private = self._find_private_key(session, key_id)
                key_type = KeyType(private[Attribute.KEY_TYPE])
                can_decrypt = bool(private[Attribute.DECRYPT])
                publics = list(
                    session.get_objects(
                        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}
                    )
                )
                # Without a public key object, RSA private keys still carry the public part;
                # EC private keys carry CKA_EC_POINT only on some tokens.
                source = publics[0] if len(publics) == 1 else private
                public_key = _public_key_from(source, key_type)
            except p11err.PKCS11Error as exc:
                raise KeyBackendError(f"cannot read key {key_id.hex()}: {_describe(exc)}") from exc
            except ValueError as exc:  # KeyType() of a key type we do not know
                raise KeyBackendError(f"key {key_id.hex()} has an unknown type") from exc
        try:
            spec = spec_of(public_key)
        except ValueError as exc:
            raise KeyBackendError(f"key {key_id.hex()}: {exc}") from exc
        _check_spec(spec)
        # The reference stays as given: the id finds the key, the label is only a hint.
        signer = Pkcs11Signer(self, key_id, key_ref, spec, public_key, can_decrypt)
        self._self_test(signer)
        self._loaded.add(key_id)
        return signer

    @staticmethod
    def _self_test(signer: Pkcs11Signer) -> None:
        """Sign once and verify: a public key object that does not match fails here."""
        data = b"vcc-pki pkcs11 key self-test"
        signature = signer.sign_sync(data)
        public = signer.public_key
        algorithm = signer.key_spec.hash_algorithm or hashes.SHA256()
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, data, ec.ECDSA(algorithm))
            elif isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, data, padding.PKCS1v15(), algorithm)
        except Exception as exc:
            raise KeyBackendError(
                f"key {signer.key_ref}: the token's signature does not match its public key"
            ) from exc

    def check(self) -> dict[str, Any]:
        if self._closed:
            raise KeyBackendError("the PKCS#11 backend is closed")
        try:
            with self._guard:
                slots = self._module.lib.get_slots(token_present=True)
                tokens = list(self._module.lib.get_tokens(token_label=self.token_label))
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(f"PKCS#11 module unusable: {_describe(exc)}") from exc
        if not tokens:
            raise KeyBackendError(f"token {self.token_label!r} is not present")
        if tokens[0].flags & TokenFlag.USER_PIN_LOCKED:
            raise KeyBackendError(f"the PIN of token {self.token_label!r} is locked")
        # Loaded keys must still be visible: they vanish when the token is logged out.
        with self._admin_lock, self._session() as pooled:
            for key_id in list(self._loaded):
                try:
                    self._find_private_key(pooled.session, key_id)
                except p11err.PKCS11Error as exc:
                    raise KeyBackendError(f"PKCS#11 session unusable: {_describe(exc)}") from exc
        return {
            "backend": self.name,
            "module": self.module_path,
            "token_label": self.token_label,
            "slots_available": len(slots),
            "keys_loaded": len(self._loaded),
        }

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
        # Let running signatures finish before their sessions go away.
        self._executor.shutdown(wait=True)
        while True:
            try:
                pooled = self._idle.get_nowait()
            except queue.Empty:
                break
            self._release(pooled)
        self._log_out()

    # -- helpers --

    @contextlib.contextmanager
    def _rw_session(self) -> Iterator[Session]:
        """A short-lived read/write session; the pool's sessions are read-only."""
        try:
            with self._guard:
                session = self._token.open(rw=True)
        except p11err.PKCS11Error as exc:
            raise KeyBackendError(f"cannot open a PKCS#11 session: {_describe(exc)}") from exc
        try:
            with self._guard:
                yield session
        finally:
            with contextlib.suppress(p11err.PKCS11Error), self._guard:
                session.close()
