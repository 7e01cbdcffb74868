"""The PKCS#11 key backend against a real SoftHSM2 token: keys stay in the token, signatures
verify, certificates built through ``builder_key()`` pass ``openssl verify``, and concurrent
signing is safe and bounded by the session pool."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11err

from ca_core.keys import KeySpec
from ca_core.signers.base import (
    DecryptionFailed,
    KeyBackendError,
    RsaOaep,
    Signer,
    UnsupportedKeyOperation,
)
from ca_core.signers.pkcs11 import Pkcs11KeyBackend, Pkcs11Signer
from tests.softhsm import SoftHsmToken, session_token

pytestmark = pytest.mark.softhsm

MAX_SESSIONS = 4


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    return session_token(tmp_path_factory)


def _open(
    token: SoftHsmToken,
    *,
    module_path: str | None = None,
    token_label: str | None = None,
    pin: str | None = None,
) -> Pkcs11KeyBackend:
    return Pkcs11KeyBackend(
        module_path or token.module_path,
        token_label or token.label,
        pin or token.pin,
        max_sessions=MAX_SESSIONS,
    )


@pytest.fixture
def backend(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11KeyBackend]:
    opened = _open(softhsm_token)
    yield opened
    opened.close()


def _label(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _verify(signer: Signer, signature: bytes, data: bytes) -> None:
    public = signer.public_key
    algorithm = signer.key_spec.hash_algorithm
    assert algorithm is not None
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(algorithm))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, data, padding.PKCS1v15(), algorithm)


@pytest.mark.parametrize("spec_text", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"])
def test_generate_then_load_from_new_backend_and_sign(
    softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend, spec_text: str
) -> None:
    spec = KeySpec.parse(spec_text)
    label = _label(spec_text)
    generated = backend.generate(spec, label)
    assert generated.hsm_backed
    assert generated.key_spec == spec
    assert generated.key_ref.startswith("pkcs11:id=")
    assert generated.key_ref.endswith(f";label={label}")

    other = _open(softhsm_token)
    try:
        loaded = other.load(generated.key_ref)
        assert isinstance(loaded, Pkcs11Signer)
        assert loaded.key_spec == spec
        assert loaded.key_ref == generated.key_ref
        assert loaded.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == generated.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        data = f"to be signed by {label}".encode()
        _verify(loaded, loaded.sign_sync(data), data)
        _verify(generated, loaded.sign_sync(data), data)
        assert other.check()["keys_loaded"] == 1
    finally:
        other.close()
    # The first backend still works after the second one logged its share of the login out.
    _verify(generated, generated.sign_sync(b"after close"), b"after close")


@pytest.mark.parametrize("spec_text", ["ec-p256", "ec-p384", "rsa-2048"])
def test_private_key_is_sensitive_and_not_extractable(
    softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend, spec_text: str
) -> None:
    signer = backend.generate(KeySpec.parse(spec_text), _label("attrs"))
    assert isinstance(signer, Pkcs11Signer)
    # A session of our own on the same module: the backend's login covers the whole process.
    token = pkcs11.lib(softhsm_token.module_path).get_token(token_label=softhsm_token.label)
    with token.open() as session:
        (private,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: signer.key_id}
        )
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.PRIVATE] is True
        assert private[Attribute.SIGN] is True
        assert private[Attribute.DECRYPT] is False  # a CA key is never a decryption oracle
        assert private[Attribute.LABEL] == signer.key_ref.rsplit("=", 1)[1]
        secret = Attribute.VALUE if spec_text.startswith("ec") else Attribute.PRIVATE_EXPONENT
        with pytest.raises(p11err.AttributeSensitive):
            private[secret]  # reading it must fail
    with pytest.raises(TypeError):
        signer.builder_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@pytest.mark.parametrize("spec_text", ["ec-p256", "ec-p384", "rsa-2048"])
async def test_self_signed_ca_certificate_verifies_with_openssl(
    backend: Pkcs11KeyBackend, tmp_path: Path, spec_text: str
) -> None:
    signer = backend.generate(KeySpec.parse(spec_text), _label("ca"))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"PKCS#11 test CA {spec_text}")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer.public_key), False)
    )
    algorithm = signer.key_spec.hash_algorithm
    assert isinstance(algorithm, hashes.SHA256 | hashes.SHA384)
    cert = await signer.run(lambda: builder.sign(signer.builder_key(), algorithm))
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == algorithm.name
    cert.verify_directly_issued_by(cert)

    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pem), str(pem)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


@pytest.mark.parametrize("spec_text", ["ec-p256", "rsa-2048"])
async def test_concurrent_async_signatures(backend: Pkcs11KeyBackend, spec_text: str) -> None:
    signer = backend.generate(KeySpec.parse(spec_text), _label("conc"))
    threads: set[str] = set()
    loop_thread = threading.current_thread().name

    async def sign_one(i: int) -> tuple[bytes, bytes]:
        data = f"message {i}".encode()

        def build() -> bytes:
            threads.add(threading.current_thread().name)
            return signer.sign_sync(data)

        if i % 2:
            return data, await signer.sign(data)
        return data, await signer.run(build)

    results = await asyncio.gather(*(sign_one(i) for i in range(200)))
    assert len(results) == 200
    for data, signature in results:
        _verify(signer, signature, data)
    # Token calls ran on the backend's workers, never on the event loop, within the pool.
    assert loop_thread not in threads
    assert all(name.startswith("pkcs11-sign") for name in threads)
    assert 1 <= backend.sessions_open <= MAX_SESSIONS


def test_sign_sync_from_more_threads_than_sessions(backend: Pkcs11KeyBackend) -> None:
    """Callers outside the executor wait for a free session instead of opening more."""
    signer = backend.generate(KeySpec.parse("ec-p256"), _label("threads"))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(25):
                data = f"{threading.get_ident()}-{i}".encode()
                _verify(signer, signer.sign_sync(data), data)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(MAX_SESSIONS * 3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert backend.sessions_open <= MAX_SESSIONS


def test_module_initialised_for_threads(backend: Pkcs11KeyBackend) -> None:
    # python-pkcs11 initialises with C_Initialize(NULL), which turns SoftHSM2's locks off;
    # the backend re-initialises with CKF_OS_LOCKING_OK instead of serialising every call.
    assert backend._module.serial_lock is None


def test_check_reports_token(softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend) -> None:
    assert backend.check()["keys_loaded"] == 0
    backend.generate(KeySpec.parse("ec-p256"), _label("check"))
    health = backend.check()
    assert health == {
        "backend": "pkcs11",
        "module": softhsm_token.module_path,
        "token_label": softhsm_token.label,
        "slots_available": health["slots_available"],
        "keys_loaded": 1,
    }
    assert health["slots_available"] >= 1


def test_closed_backend_refuses_work(softhsm_token: SoftHsmToken) -> None:
    closed = _open(softhsm_token)
    signer = closed.generate(KeySpec.parse("ec-p256"), _label("closed"))
    closed.close()
    closed.close()  # idempotent
    with pytest.raises(KeyBackendError):
        signer.sign_sync(b"data")
    with pytest.raises(KeyBackendError):
        closed.check()
    with pytest.raises(KeyBackendError):
        asyncio.run(signer.sign(b"data"))


def test_wrong_pin(softhsm_token: SoftHsmToken) -> None:
    # No other backend open: the token itself rejects the PIN.
    with pytest.raises(KeyBackendError, match="wrong PIN"):
        _open(softhsm_token, pin="0000")


def test_wrong_pin_while_token_logged_in(
    softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend
) -> None:
    # The token is logged in for the process already; the PIN must still be checked.
    with pytest.raises(KeyBackendError, match="wrong PIN"):
        _open(softhsm_token, pin="0000")
    backend.check()  # the failed attempt did not log the working backend out


def test_unknown_token_label(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(KeyBackendError, match="no token labelled 'no-such-token'"):
        _open(softhsm_token, token_label="no-such-token")


def test_bad_module_path(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    with pytest.raises(KeyBackendError, match="does not exist"):
        _open(softhsm_token, module_path=str(tmp_path / "missing.so"))
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"not a shared object")
    with pytest.raises(KeyBackendError, match="cannot load PKCS#11 module"):
        _open(softhsm_token, module_path=str(garbage))


def test_load_unknown_id(backend: Pkcs11KeyBackend) -> None:
    with pytest.raises(KeyBackendError, match="no private key"):
        backend.load(f"pkcs11:id={'ab' * 16};label=nothing")


@pytest.mark.parametrize(
    "key_ref", ["file:ca", "pkcs11:label=x", "pkcs11:id=zz", "pkcs11:id=01;color=red", "pkcs11:"]
)
def test_load_malformed_reference(backend: Pkcs11KeyBackend, key_ref: str) -> None:
    with pytest.raises(KeyBackendError):
        backend.load(key_ref)


def test_duplicate_label(backend: Pkcs11KeyBackend) -> None:
    label = _label("dup")
    backend.generate(KeySpec.parse("ec-p256"), label)
    with pytest.raises(KeyBackendError, match="already exists"):
        backend.generate(KeySpec.parse("ec-p384"), label)


@pytest.mark.parametrize("label", ["", "has space", "semi;colon", "x" * 101])
def test_invalid_label(backend: Pkcs11KeyBackend, label: str) -> None:
    with pytest.raises(KeyBackendError, match="invalid key label"):
        backend.generate(KeySpec.parse("ec-p256"), label)


def test_ed25519_is_refused(backend: Pkcs11KeyBackend) -> None:
    with pytest.raises(KeyBackendError, match="not supported"):
        backend.generate(KeySpec.parse("ed25519"), _label("ed"))


# --- decryption (an RA key's; CMS key transport) ------------------------------------------------


@pytest.fixture(scope="module")
def ra_key_ref(softhsm_token: SoftHsmToken) -> Iterator[str]:
    """One RSA key generated for decryption, shared by the decryption tests (RSA key
    generation in SoftHSM2 takes a while)."""
    opened = _open(softhsm_token)
    try:
        yield opened.generate(KeySpec.parse("rsa-2048"), _label("ra"), decrypt=True).key_ref
    finally:
        opened.close()


def _oaep(name: str) -> padding.OAEP:
    algorithm = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[name]
    return padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)


async def test_ra_key_decrypts_pkcs1v15_and_oaep_in_the_token(
    softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend, ra_key_ref: str
) -> None:
    signer = backend.load(ra_key_ref)
    assert isinstance(signer, Pkcs11Signer) and signer.can_decrypt
    public = signer.public_key
    assert isinstance(public, rsa.RSAPublicKey)
    secret = b"a content-encryption key \x00\xff"
    assert signer.decrypt_sync(public.encrypt(secret, padding.PKCS1v15()), "pkcs1v15") == secret
    assert await signer.decrypt(public.encrypt(secret, _oaep("sha1")), RsaOaep()) == secret
    # The key still signs (an RA certificate signs its replies too).
    _verify(signer, signer.sign_sync(b"reply"), b"reply")
    token = pkcs11.lib(softhsm_token.module_path).get_token(token_label=softhsm_token.label)
    with token.open() as session:
        (private,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: signer.key_id})
        assert private[Attribute.DECRYPT] is True
        assert private[Attribute.SENSITIVE] is True and private[Attribute.EXTRACTABLE] is False


async def test_ra_key_oaep_sha256(backend: Pkcs11KeyBackend, ra_key_ref: str) -> None:
    """SoftHSM2 2.6 implements OAEP with SHA-1 only: another hash is refused as an unsupported
    operation (not a decryption failure); a token that offers it decrypts."""
    signer = backend.load(ra_key_ref)
    public = signer.public_key
    assert isinstance(public, rsa.RSAPublicKey)
    ciphertext = public.encrypt(b"key", _oaep("sha256"))
    try:
        plaintext = await signer.decrypt(ciphertext, RsaOaep("sha256", "sha256"))
    except UnsupportedKeyOperation as exc:
        assert "RSA_PKCS_OAEP" in str(exc)
    else:
        assert plaintext == b"key"


@pytest.mark.parametrize("case", ["pkcs1v15-corrupted", "oaep-corrupted", "oaep-wrong-hash",
                                  "short", "empty"])
async def test_ra_key_bad_ciphertext_is_decryption_failed(
    backend: Pkcs11KeyBackend, ra_key_ref: str, case: str
) -> None:
    signer = backend.load(ra_key_ref)
    public = signer.public_key
    assert isinstance(public, rsa.RSAPublicKey)
    chosen: Any = "pkcs1v15" if case.startswith("pkcs1v15") else RsaOaep()
    if case == "pkcs1v15-corrupted":
        # PKCS#1 v1.5 padding of a random block: the token checks it and refuses.
        ciphertext = public.encrypt(b"key", padding.PKCS1v15())
        ciphertext = (int.from_bytes(ciphertext, "big") ^ 1).to_bytes(len(ciphertext), "big")
    elif case == "oaep-corrupted":
        ciphertext = bytearray(public.encrypt(b"key", _oaep("sha1")))
        ciphertext[-1] ^= 1
        ciphertext = bytes(ciphertext)
    elif case == "oaep-wrong-hash":
        ciphertext = public.encrypt(b"key", _oaep("sha1"))
        chosen = "pkcs1v15"
    else:
        ciphertext = b"\x01" * 16 if case == "short" else b""
    if case in ("pkcs1v15-corrupted", "oaep-wrong-hash"):
        # A random block passes a PKCS#1 v1.5 padding check now and then (SoftHSM2 checks
        # little more than its 00 02 start: about 1 in 256), and then the token returns
        # garbage; what must never happen is the original plaintext or another exception.
        try:
            garbage = await signer.decrypt(ciphertext, chosen)
        except DecryptionFailed:
            pass
        else:
            assert garbage != b"key"
    else:
        with pytest.raises(DecryptionFailed):
            await signer.decrypt(ciphertext, chosen)
    # The session that failed goes back to the pool and works.
    assert await signer.decrypt(public.encrypt(b"ok", padding.PKCS1v15()), "pkcs1v15") == b"ok"


@pytest.mark.parametrize("spec_text", ["rsa-2048", "ec-p256"])
async def test_ca_keys_do_not_decrypt(backend: Pkcs11KeyBackend, spec_text: str) -> None:
    signer = backend.generate(KeySpec.parse(spec_text), _label("nodecrypt"))
    assert not signer.can_decrypt
    assert not backend.load(signer.key_ref).can_decrypt
    with pytest.raises(UnsupportedKeyOperation):
        await signer.decrypt(b"\x00" * 256, "pkcs1v15")


def test_ec_key_cannot_be_generated_for_decryption(backend: Pkcs11KeyBackend) -> None:
    with pytest.raises(UnsupportedKeyOperation, match="RSA only"):
        backend.generate(KeySpec.parse("ec-p256"), _label("ecdec"), decrypt=True)


def _destroy(token: SoftHsmToken, key_id: bytes, object_class: ObjectClass) -> None:
    lib = pkcs11.lib(token.module_path)
    with lib.get_token(token_label=token.label).open(rw=True) as session:
        for obj in list(session.get_objects({Attribute.CLASS: object_class, Attribute.ID: key_id})):
            obj.destroy()


def test_load_rsa_without_public_key_object(
    softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend
) -> None:
    signer = backend.generate(KeySpec.parse("rsa-2048"), _label("nopub"))
    assert isinstance(signer, Pkcs11Signer)
    _destroy(softhsm_token, signer.key_id, ObjectClass.PUBLIC_KEY)
    # RSA private key objects carry the modulus and public exponent.
    loaded = backend.load(signer.key_ref)
    _verify(signer, loaded.sign_sync(b"data"), b"data")


def test_load_refuses_mismatched_public_key(
    softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend
) -> None:
    first = backend.generate(KeySpec.parse("ec-p256"), _label("first"))
    other = backend.generate(KeySpec.parse("ec-p256"), _label("other"))
    assert isinstance(first, Pkcs11Signer) and isinstance(other, Pkcs11Signer)
    _destroy(softhsm_token, first.key_id, ObjectClass.PUBLIC_KEY)
    lib = pkcs11.lib(softhsm_token.module_path)
    with lib.get_token(token_label=softhsm_token.label).open(rw=True) as session:
        (other_public,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: other.key_id}
        )
        other_public.copy({Attribute.ID: first.key_id, Attribute.LABEL: "imposter"})
    with pytest.raises(KeyBackendError, match="does not match"):
        backend.load(first.key_ref)


def test_deleted_key_fails_cleanly(softhsm_token: SoftHsmToken, backend: Pkcs11KeyBackend) -> None:
    signer = backend.generate(KeySpec.parse("ec-p256"), _label("deleted"))
    assert isinstance(signer, Pkcs11Signer)
    signer.sign_sync(b"warm the handle cache")
    backend.check()
    _destroy(softhsm_token, signer.key_id, ObjectClass.PRIVATE_KEY)
    with pytest.raises(KeyBackendError, match="no private key"):
        signer.sign_sync(b"data")
    with pytest.raises(KeyBackendError, match="no private key"):
        backend.check()


async def test_cross_certification_csr_is_signed_in_the_token(
    backend: Pkcs11KeyBackend, tmp_path: Path
) -> None:
    """`vcc-pki ca csr` with the CA key in the token: the CSR verifies, the key stays."""
    from ca_core.authority import Authority, CASettings
    from ca_core.cross import cross_certification_request
    from ca_core.hierarchy import ensure_hierarchy
    from db.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "pki.db")
    await store.open()
    try:
        authority = Authority(store, backend, CASettings(
            root_key=KeySpec.parse("ec-p256"), intermediate_key=KeySpec.parse("ec-p256")))
        await ensure_hierarchy(authority)
        await authority.load()
        csr = x509.load_pem_x509_csr(await cross_certification_request(authority,
                                                                        "intermediate"))
        intermediate = await authority.ca("intermediate")
        assert csr.is_signature_valid
        assert csr.public_key() == intermediate.certificate.public_key()
        assert intermediate.signer.hsm_backed
    finally:
        await store.close()
