"""What Python's ``ssl`` module does not expose and the EST listener needs, reached through
the same libssl that ``_ssl`` links (ctypes, guarded):

- **Accept any client certificate in the handshake** (``accept_any_client_certificate``),
  so that the EST core, not OpenSSL, decides about it and a client with an untrusted,
  expired or revoked certificate gets an HTTP 401 with a plain-text reason (RFC 7030 3.3.2,
  4.2.3) instead of a TLS alert. Python has no verify callback; libssl's
  ``SSL_CTX_set_cert_verify_callback`` replaces OpenSSL's whole chain verification with one
  that accepts (the handshake still proves possession of the certificate's key:
  CertificateVerify). The peer certificate and the chain it sent stay readable.
- **The peer's chain** (``peer_chain``): ``SSL_get_peer_cert_chain`` (Python 3.11 has no
  ``get_unverified_chain``), so the core can verify a device certificate through the
  intermediates the device sent.
- **RFC 9266 tls-exporter** (``tls_exporter``): ``SSL_export_keying_material`` with the
  label "EXPORTER-Channel-Binding", 32 bytes, no context: the TLS 1.3 channel binding
  (TLS 1.3 has no tls-unique, RFC 8446 C.5).

How: the ``SSL_CTX*`` of an ``ssl.SSLContext`` is the first field after ``PyObject_HEAD``
of CPython's ``PySSLContext``, the ``SSL*`` of an ``_ssl._SSLSocket`` (``SSLObject._sslobj``)
the second after it (``PyObject *Socket; SSL *ssl``; Modules/_ssl.c, 3.8 to 3.13). Nothing
is trusted before it is checked: the library must report the version ``ssl`` was built
with, the context pointer must read back the verify mode and options Python just set (two
different values each), and an ``SSL*`` must name that context (``SSL_get_SSL_CTX``) on a
probe object. If any check fails (another Python, another layout, a static OpenSSL) the
shim logs one WARNING and reports itself unavailable: the listener then verifies client
certificates in the handshake as before and binds channels on TLS 1.2 only.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import threading
import weakref
from dataclasses import dataclass

log = logging.getLogger(__name__)

# RFC 9266 2: label "EXPORTER-Channel-Binding", length 32, no context value.
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32

_POINTER = ctypes.sizeof(ctypes.c_void_p)
# Byte offsets of the pointer fields after the object header (see the module docstring);
# module attributes so a test can move them and watch the guard refuse.
CONTEXT_OFFSET = object.__basicsize__
SSL_OFFSET = object.__basicsize__ + _POINTER

_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02

# int (*cb)(X509_STORE_CTX *, void *arg): 1 accepts the peer's chain as it is.
_CERT_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _accept_chain(_store_ctx: int | None, _arg: int | None) -> int:
    return 1


# One callback object for the process's life: libssl keeps only its address.
_ACCEPT = _CERT_VERIFY_CALLBACK(_accept_chain)


@dataclass(frozen=True, slots=True)
class _Lib:
    ssl: ctypes.CDLL


_lock = threading.Lock()
_loaded: _Lib | None = None
_load_failed = False


def _libssl_path() -> str | None:
    """The libssl that ``_ssl`` links, from this process's mappings (``_ssl`` is imported:
    ``ssl`` imported it)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = path.rsplit("/", 1)[-1]
                if name.startswith("libssl.so"):
                    return path
    except OSError:
        return None
    return None


def _load() -> _Lib | None:
    """libssl with the prototypes used here, or None (logged once)."""
    global _loaded, _load_failed
    with _lock:
        if _loaded is not None or _load_failed:
            return _loaded
        try:
            _loaded = _open()
        except (OSError, AttributeError, ValueError) as exc:
            _load_failed = True
            log.warning("EST TLS shim unavailable (%s): client certificates are verified in "
                        "the TLS handshake, and channel binding works on TLS 1.2 only", exc)
        return _loaded


def _open() -> _Lib:
    if sys.implementation.name != "cpython":
        raise ValueError(f"not CPython but {sys.implementation.name}")
    path = _libssl_path()
    if path is None:
        raise ValueError("the _ssl module links no shared libssl")
    lib = ctypes.CDLL(path)
    lib.OpenSSL_version_num.restype = ctypes.c_ulong
    lib.OpenSSL_version_num.argtypes = []
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise ValueError(f"{path} is not the OpenSSL {ssl.OPENSSL_VERSION} of the ssl module")
    voidp, sizet = ctypes.c_void_p, ctypes.c_size_t
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [voidp]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [voidp]
    lib.SSL_CTX_set_cert_verify_callback.restype = None
    lib.SSL_CTX_set_cert_verify_callback.argtypes = [voidp, _CERT_VERIFY_CALLBACK, voidp]
    lib.SSL_get_SSL_CTX.restype = voidp
    lib.SSL_get_SSL_CTX.argtypes = [voidp]
    lib.SSL_export_keying_material.restype = ctypes.c_int
    lib.SSL_export_keying_material.argtypes = [voidp, ctypes.c_char_p, sizet,
                                               ctypes.c_char_p, sizet, ctypes.c_char_p,
                                               sizet, ctypes.c_int]
    lib.SSL_get_peer_cert_chain.restype = voidp
    lib.SSL_get_peer_cert_chain.argtypes = [voidp]
    # libcrypto's, found through libssl's dependencies
    lib.OPENSSL_sk_num.restype = ctypes.c_int
    lib.OPENSSL_sk_num.argtypes = [voidp]
    lib.OPENSSL_sk_value.restype = voidp
    lib.OPENSSL_sk_value.argtypes = [voidp, ctypes.c_int]
    lib.i2d_X509.restype = ctypes.c_int
    lib.i2d_X509.argtypes = [voidp, ctypes.POINTER(ctypes.c_char_p)]
    return _Lib(lib)


def _pointer_at(obj: object, offset: int) -> int | None:
    value: int | None = ctypes.c_void_p.from_address(id(obj) + offset).value
    return value


def _context_pointer(lib: _Lib, context: ssl.SSLContext) -> int | None:
    """The SSL_CTX* of ``context`` once it read back what Python set, else None. Restores
    the context's verify mode and options."""
    if not isinstance(context, ssl.SSLContext) or type(context).__basicsize__ < (
            CONTEXT_OFFSET + _POINTER):
        return None
    pointer = _pointer_at(context, CONTEXT_OFFSET)
    if not pointer:
        return None
    mode, options = context.verify_mode, context.options
    try:
        for probe, bits in ((ssl.CERT_REQUIRED,
                             _SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT),
                            (ssl.CERT_OPTIONAL, _SSL_VERIFY_PEER)):
            context.verify_mode = probe
            if lib.ssl.SSL_CTX_get_verify_mode(pointer) & 0x03 != bits:
                return None
        for flip in (options ^ ssl.OP_NO_TICKET, options):
            context.options = flip
            if lib.ssl.SSL_CTX_get_options(pointer) != int(context.options):
                return None
    finally:
        context.options = options
        context.verify_mode = mode
    return pointer


def _ssl_pointer(lib: _Lib, ssl_object: ssl.SSLObject | ssl.SSLSocket,
                 context_pointer: int) -> int | None:
    """The SSL* of a TLS connection, checked: it names ``context_pointer``."""
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or type(inner).__basicsize__ < SSL_OFFSET + _POINTER:
        return None
    pointer = _pointer_at(inner, SSL_OFFSET)
    if not pointer or lib.ssl.SSL_get_SSL_CTX(pointer) != context_pointer:
        return None
    return pointer


@dataclass(frozen=True, slots=True)
class _Verified:
    lib: _Lib
    context_pointer: int


# Contexts the shim checked, and their pointer.
_checked: weakref.WeakKeyDictionary[ssl.SSLContext, _Verified] = weakref.WeakKeyDictionary()


def _verified(context: ssl.SSLContext) -> _Verified | None:
    return _checked.get(context)


def enable(context: ssl.SSLContext) -> bool:
    """Check the shim's reach into ``context`` (see the module docstring) so that
    ``tls_exporter`` and ``peer_chain`` work on its connections; the context keeps its
    settings. False, with one WARNING logged, when the shim is unavailable."""
    if _verified(context) is not None:
        return True
    lib = _load()
    if lib is None:
        return False
    pointer = _context_pointer(lib, context)
    if pointer is None or not _probe_ssl_layout(lib, context, pointer):
        log.warning("EST TLS shim: this Python's ssl objects do not have the expected "
                    "layout; client certificates are verified in the TLS handshake, and "
                    "channel binding works on TLS 1.2 only")
        return False
    _checked[context] = _Verified(lib, pointer)
    return True


def accept_any_client_certificate(context: ssl.SSLContext) -> bool:
    """Request a client certificate (CERT_OPTIONAL) and accept whatever chain comes, for
    the application to verify; ``enable`` too. True when done; False (one WARNING logged,
    the context unchanged) when the shim is unavailable or its checks fail: the caller then
    keeps OpenSSL's verification."""
    if not enable(context):
        return False
    found = _verified(context)
    assert found is not None
    context.verify_mode = ssl.CERT_OPTIONAL
    found.lib.ssl.SSL_CTX_set_cert_verify_callback(found.context_pointer, _ACCEPT, None)
    return True


def _probe_ssl_layout(lib: _Lib, context: ssl.SSLContext, pointer: int) -> bool:
    """An SSL* read from a fresh server-side object names this context."""
    try:
        probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    except ssl.SSLError:
        return False
    return _ssl_pointer(lib, probe, pointer) is not None


def tls_exporter(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """RFC 9266 tls-exporter of this connection, on a context the shim checked; None
    otherwise (or before the handshake, or when libssl refuses)."""
    found = _verified(ssl_object.context)
    if found is None:
        return None
    pointer = _ssl_pointer(found.lib, ssl_object, found.context_pointer)
    if pointer is None:
        return None
    out = ctypes.create_string_buffer(EXPORTER_LENGTH)
    if found.lib.ssl.SSL_export_keying_material(
            pointer, out, EXPORTER_LENGTH, EXPORTER_LABEL, len(EXPORTER_LABEL), None, 0,
            0) != 1:
        return None
    return out.raw


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """DER of the certificates the peer sent after its own (a server sees the client's
    certificate apart from this chain); [] when the shim is not active on this context."""
    found = _verified(ssl_object.context)
    if found is None:
        return []
    lib = found.lib.ssl
    pointer = _ssl_pointer(found.lib, ssl_object, found.context_pointer)
    stack = lib.SSL_get_peer_cert_chain(pointer) if pointer is not None else None
    if not stack:
        return []
    chain = []
    for index in range(lib.OPENSSL_sk_num(stack)):
        certificate = lib.OPENSSL_sk_value(stack, index)
        size = lib.i2d_X509(certificate, None)
        if size <= 0:
            continue
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))
        if lib.i2d_X509(certificate, ctypes.byref(cursor)) == size:
            chain.append(buffer.raw)
    return chain
