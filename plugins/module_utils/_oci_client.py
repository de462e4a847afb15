# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Registry client on top of the ``oras`` Python SDK, with what pibake needs around it.

oras-py (``oras.provider.Registry``) brings the HTTP session, the token/basic auth backends and the OCI
container URLs. We add: a retry policy with short, bounded backoff for transient errors (oras' own decorator
waits up to minutes), the basic ``Authorization`` header sent up front (else every chunk is sent twice after a
401), resumable chunked uploads (oras' ``chunked_upload`` restarts from zero and reports no progress),
streaming downloads that verify the digest and resume with ``Range`` (oras does not verify), and errors as
one :class:`PibakeError` sentence. Credentials travel only in headers and are never part of a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import traceback
from typing import Callable, Dict, Iterator, Optional, Tuple

try:  # controller requirements (requirements.txt); modules report a missing one with fail_json
    import oras.container
    import oras.provider
    import oras.utils
    import requests
except ImportError:
    HAS_ORAS = False
    ORAS_IMPORT_ERROR: Optional[str] = traceback.format_exc()
    _RegistryBase: type = object
else:
    HAS_ORAS = True
    ORAS_IMPORT_ERROR = None
    _RegistryBase = oras.provider.Registry

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._oci_blob import BlobSource
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import Reference, RegistrySettings

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TRANSIENT_ERRORS: Tuple[type, ...] = (
    (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) if HAS_ORAS else ())

# progress(event) gets dicts like {"event": "upload", "name": ..., "done": n, "total": n}
Progress = Optional[Callable[[dict], None]]
MIB = 1024 * 1024


class RegistryUnreachable(PibakeError):
    """The registry did not answer (connection refused, reset, timed out) after every retry."""


def _reason(err: BaseException) -> str:
    text = str(err)
    for needle, short in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "host name not found"),
                          ("Temporary failure in name resolution", "host name not found"),
                          ("Connection reset", "connection reset"), ("RemoteDisconnected", "connection closed"),
                          ("Connection aborted", "connection aborted"), ("Broken pipe", "connection closed")):
        if needle in text:
            return short
    return type(err).__name__


class _OrasRegistry(_RegistryBase):
    """oras' Registry with pibake's request policy (oras' other methods call ``do_request`` and get it too)."""

    pibake: "RegistryClient"

    def do_request(self, url, method="GET", data=None, headers=None, json=None,  # pylint: disable=redefined-outer-name
                   stream=False):
        return self.pibake.request(method, url, data=data, headers=headers, json_body=json, stream=stream)


class RegistryClient:
    """One registry host: requests with retries and auth, blob and manifest operations."""

    def __init__(self, settings: RegistrySettings, host: str, progress: Progress = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.host = host
        self.tls = settings.uses_tls(host)
        self.scheme = "https" if self.tls else "http"
        self.progress = progress
        self.sleep = sleep
        self.has_credentials = bool(settings.username and settings.password)
        if not HAS_ORAS:
            raise PibakeError("The oras Python package is missing on the controller; run `make venv` "
                              "(or pip install -r requirements.txt).")
        self.oras = _OrasRegistry(
            hostname=host,
            insecure=not self.tls,
            tls_verify=settings.tls_verify() if self.tls else False,
            auth_backend="basic" if self.has_credentials else "token",
        )
        self.oras.pibake = self
        if self.has_credentials:
            self.oras.auth.set_basic_auth(settings.username, settings.password)
        self.requests_sent = 0

    # -- low level -------------------------------------------------------------------------------------------
    def _auth_header(self) -> Dict[str, str]:
        try:
            return dict(self.oras.auth.get_auth_header() or {})
        except AttributeError:  # basic backend without credentials
            return {}

    def _send(self, method: str, url: str, headers: Dict[str, str], data, json_body, stream: bool):
        self.requests_sent += 1
        return self.oras.session.request(
            method, url, data=data, json=json_body, headers=headers, stream=stream,
            verify=self.oras._tls_verify,  # pylint: disable=protected-access
            timeout=(min(15.0, self.settings.timeout), self.settings.timeout), allow_redirects=True,
        )

    def request(self, method: str, url: str, *, data=None, headers: Optional[Dict[str, str]] = None,
                json_body=None, stream: bool = False, retry: bool = True) -> requests.Response:
        """One HTTP request with auth and bounded retries; raises RegistryUnreachable when it never answers."""
        attempts = 1 + (max(0, self.settings.retries) if retry else 0)
        last_error: Optional[BaseException] = None
        for attempt in range(attempts):
            if attempt:
                self.sleep(min(30.0, self.settings.retry_delay * (2 ** (attempt - 1))))
            hdrs = dict(headers or {})
            for key, value in self._auth_header().items():
                hdrs.setdefault(key, value)
            try:
                resp = self._send(method, url, hdrs, data, json_body, stream)
                if resp.status_code in (401, 403) and self._bearer_challenge(resp):
                    had_token = bool(getattr(self.oras.auth, "token", None))
                    hdrs, changed = self.oras.auth.authenticate_request(resp, hdrs, refresh=had_token)
                    if changed:
                        resp = self._send(method, url, hdrs, data, json_body, stream)
            except requests.exceptions.SSLError as err:
                raise self._tls_error(err) from None
            except TRANSIENT_ERRORS as err:
                if "SSL" in str(err) or "wrong version number" in str(err):
                    raise self._tls_error(err) from None
                last_error = err
                continue
            if resp.status_code in TRANSIENT_STATUS and attempt + 1 < attempts:
                resp.close()
                last_error = None
                continue
            return resp
        if last_error is None:
            return resp  # the last transient status, for the caller to report
        raise RegistryUnreachable(
            f"Registry {self.host} is unreachable ({_reason(last_error)}) after {attempts} attempt(s); check that "
            f"it is running and that pibake_registry / PIBAKE_REGISTRY names it."
        )

    @staticmethod
    def _bearer_challenge(resp: requests.Response) -> bool:
        return resp.headers.get("Www-Authenticate", "").lower().startswith("bearer")

    def _tls_error(self, err: BaseException) -> PibakeError:
        text = str(err)
        if "wrong version number" in text or "record layer failure" in text or "WRONG_VERSION" in text:
            return PibakeError(
                f"Registry {self.host} does not speak TLS; set pibake_registry_tls: false "
                "(PIBAKE_REGISTRY_TLS=false) for a plain-HTTP registry."
            )
        why = "certificate not trusted" if "CERTIFICATE" in text.upper() else "handshake failed"
        return PibakeError(
            f"TLS with registry {self.host} failed ({why}); "
            "give its CA with pibake_registry_ca_file (PIBAKE_REGISTRY_CA_FILE) or use pibake_registry_tls: false."
        )

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def container(self, ref: Reference) -> oras.container.Container:
        """oras' container object for ``ref`` (fields set from our parse, not oras' registry guessing)."""
        cont = oras.container.Container(ref.repository.rsplit("/", 1)[-1], registry=ref.registry)
        cont.registry = self.host
        cont.namespace = ref.repository.rsplit("/", 1)[0] if "/" in ref.repository else None
        cont.repository = ref.repository.rsplit("/", 1)[-1]
        cont.tag = ref.tag or "latest"
        cont.digest = ref.digest
        return cont

    def check(self, resp: requests.Response, ref: Reference, what: str, ok=(200, 201, 202, 204)) -> None:
        """Raise one sentence for a failed answer: 401/403 (credentials), 404 (missing), anything else."""
        if resp.status_code in ok:
            return
        code = resp.status_code
        detail = ""
        try:
            errors = resp.json().get("errors") or []
            detail = "; ".join(str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict))
        except ValueError:
            pass
        if code == 401:
            if self.has_credentials:
                raise PibakeError(
                    f"Registry {self.host} refused the credentials of user {self.settings.username!r} (HTTP 401); "
                    "check PIBAKE_REGISTRY_USER and PIBAKE_REGISTRY_PASSWORD."
                )
            raise PibakeError(
                f"Registry {self.host} requires a login (HTTP 401); set PIBAKE_REGISTRY_USER and "
                "PIBAKE_REGISTRY_PASSWORD (or pibake_registry_user / pibake_registry_password)."
            )
        if code == 403:
            raise PibakeError(
                f"Registry {self.host} denied {what} for {ref.name} (HTTP 403); give user "
                f"{self.settings.username or '(anonymous)'} access to that repository."
            )
        if code == 404 and what.startswith("manifest"):
            kind = f"digest {ref.digest}" if ref.digest else f"tag {ref.tag or 'latest'}"
            raise PibakeError(
                f"{ref} does not exist in the registry ({kind} not found); check the name and list the tags "
                f"with `skopeo list-tags docker://{ref.name}`."
            )
        raise PibakeError(
            f"Registry {self.host} answered HTTP {code} to {what} for {ref}{': ' + detail if detail else ''}; "
            "check the registry's log."
        )

    # -- reads -----------------------------------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``; raises for an unreachable registry or refused credentials."""
        resp = self.request("GET", self.url("/v2/"))
        self.check(resp, Reference(self.host, "v2"), "the API check", ok=(200,))

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        resp = self.request("HEAD", f"{self.scheme}://{self.container(ref).get_blob_url(digest)}")
        if resp.status_code == 404:
            return False
        self.check(resp, ref, f"blob check {digest[:19]}", ok=(200,))
        return True

    def manifest_digest(self, ref: Reference) -> Optional[str]:
        """Digest the tag points at now, or None when the tag does not exist."""
        resp = self.request("HEAD", f"{self.scheme}://{self.container(ref).manifest_url()}",
                            headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if resp.status_code == 404:
            return None
        self.check(resp, ref, "manifest check", ok=(200,))
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        return self.get_manifest(ref)[1]

    def get_manifest(self, ref: Reference) -> Tuple[dict, str, bytes]:
        """(manifest, digest, raw bytes); the digest is computed from the bytes and checked against the pin."""
        resp = self.request("GET", f"{self.scheme}://{self.container(ref).manifest_url()}",
                            headers={"Accept": ", ".join(MANIFEST_TYPES)})
        self.check(resp, ref, "manifest fetch", ok=(200,))
        raw = resp.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.digest and digest != ref.digest:
            raise PibakeError(
                f"The registry returned a manifest for {ref} whose digest is {digest}; refusing it, "
                "the registry or a proxy altered it."
            )
        try:
            return json.loads(raw), digest, raw
        except ValueError:
            raise PibakeError(f"The manifest of {ref} is not JSON; the reference is not an OCI image.") from None

    def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> requests.Response:
        resp = self.request("PUT", f"{self.scheme}://{self.container(ref).manifest_url()}", data=raw,
                            headers={"Content-Type": media_type})
        self.check(resp, ref, "manifest upload", ok=(200, 201))
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        answered = resp.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise PibakeError(f"Registry {self.host} stored the manifest of {ref} as {answered}, not {digest}.")
        return resp

    def open_blob(self, ref: Reference, digest: str, size: Optional[int]) -> "BlobReader":
        return BlobReader(self, ref, digest, size)

    # -- uploads ---------------------------------------------------------------------------------------------
    def upload_blob(self, ref: Reference, source: BlobSource, state_dir: Optional[str] = None,
                    name: Optional[str] = None) -> dict:
        """Upload ``source`` unless the registry has it (HEAD first); chunked and resumable.

        Returns ``{"digest", "size", "uploaded": bytes sent, "skipped": bool, "resumed_from": offset}``.
        """
        name = name or source.label
        digest = source.digest
        result = {"name": name, "digest": digest, "size": source.size, "uploaded": 0, "skipped": False,
                  "resumed_from": 0}
        if self.blob_exists(ref, digest):
            result["skipped"] = True
            self._emit("skip", name, source.size, source.size)
            return result
        state = _UploadState(state_dir, self.host, ref.repository, digest)
        offset = 0
        try:
            upload_url, offset = self._resume(ref, state)
            result["resumed_from"] = offset
            if upload_url is None:
                upload_url = self._start_upload(ref)
                if source.size <= self.settings.chunk_size:
                    # small blob: one PUT with the body (monolithic upload)
                    resp = self.request("PUT", oras.utils.append_url_params(upload_url, {"digest": digest}),
                                        data=source.read(0, source.size),
                                        headers={"Content-Type": "application/octet-stream"})
                    self.check(resp, ref, f"upload of {name}", ok=(201,))
                    result["uploaded"] = source.size
                    self._emit("upload", name, source.size, source.size)
                    return result
                state.save(upload_url)
            started = time.monotonic()
            self._emit("upload", name, offset, source.size)
            while offset < source.size:
                data = source.read(offset, self.settings.chunk_size)
                upload_url, offset = self._patch(ref, upload_url, offset, data, name, state)
                result["uploaded"] += len(data)
                self._emit("upload", name, offset, source.size, time.monotonic() - started)
            resp = self.request("PUT", oras.utils.append_url_params(upload_url, {"digest": digest}),
                                headers={"Content-Length": "0", "Content-Type": "application/octet-stream"})
        except RegistryUnreachable as err:
            text = str(err)
            raise RegistryUnreachable(
                f"Upload of {name} to {ref.name} stopped at {offset // MIB} of {source.size // MIB} MiB: "
                f"{text[0].lower()}{text[1:].rstrip('.')}; run the publish again to resume."
            ) from None
        if resp.status_code == 400 and "DIGEST_INVALID" in resp.text:
            state.clear()
            raise PibakeError(
                f"Registry {self.host} computed another digest for {name} than {digest}; the file changed "
                "during the upload or the registry's upload state is damaged; publish again."
            )
        self.check(resp, ref, f"upload of {name}", ok=(201,))
        state.clear()
        return result

    def _emit(self, event: str, name: str, done: int, total: int, seconds: float = 0.0) -> None:
        if self.progress:
            self.progress({"event": event, "name": name, "done": done, "total": total, "seconds": seconds})

    def _start_upload(self, ref: Reference) -> str:
        resp = self.request("POST", f"{self.scheme}://{self.container(ref).upload_blob_url()}",
                            headers={"Content-Length": "0"})
        self.check(resp, ref, "upload start", ok=(202,))
        location = self.oras._get_location(resp, self.container(ref))  # pylint: disable=protected-access
        if not location:
            raise PibakeError(f"Registry {self.host} started an upload without a Location; it is not OCI compliant.")
        return location

    def _upload_status(self, ref: Reference, url: str) -> Optional[Tuple[str, int]]:
        """(url, next offset) of an upload session, or None when the registry forgot it."""
        resp = self.request("GET", url)
        if resp.status_code != 204:
            return None
        rng = resp.headers.get("Range", "")
        location = self.oras._get_location(resp, self.container(ref)) or url  # pylint: disable=protected-access
        try:
            start, end = (int(x) for x in rng.split("-", 1))
        except ValueError:
            return location, 0
        if start != 0 or end == 0:  # "0-0" means nothing or one byte: start over to be safe
            return None if end == 0 else (location, 0)
        return location, end + 1

    def _resume(self, ref: Reference, state: "_UploadState") -> Tuple[Optional[str], int]:
        saved = state.load()
        if not saved:
            return None, 0
        status = self._upload_status(ref, saved)
        if status is None:
            state.clear()
            return None, 0
        return status

    def _patch(self, ref: Reference, url: str, start: int, data: bytes, name: str,
               state: "_UploadState") -> Tuple[str, int]:
        """PATCH one chunk; on a range conflict (the registry kept part of a broken chunk, or a retry resent
        one it had), ask the registry where the upload stands and go on from there."""
        end = start + len(data) - 1
        headers = {"Content-Range": f"{start}-{end}", "Content-Length": str(len(data)),
                   "Content-Type": "application/octet-stream"}
        resp = self.request("PATCH", url, data=data, headers=headers)
        if resp.status_code == 416:
            synced = self._upload_status(ref, url)
            if synced:
                state.save(synced[0])
                return synced
            state.clear()
            raise PibakeError(
                f"Registry {self.host} lost the upload of {name} at {start // MIB} MiB; run the publish again."
            )
        if resp.status_code == 404:
            state.clear()
            raise PibakeError(
                f"Registry {self.host} forgot the upload session of {name} at {start // MIB} MiB; "
                "run the publish again."
            )
        self.check(resp, ref, f"upload of {name}", ok=(202,))
        location = self.oras._get_location(resp, self.container(ref)) or url  # pylint: disable=protected-access
        state.save(location)
        return location, end + 1


class _UploadState:
    """Upload session URL of an unfinished blob upload, so that a re-run resumes instead of restarting.

    Stored as ``<state_dir>/<sha256(host/repo/digest)>.json`` (mode 0600); holds no credentials.
    """

    def __init__(self, state_dir: Optional[str], host: str, repository: str, digest: str):
        self.path = None
        if state_dir:
            key = hashlib.sha256(f"{host}/{repository}/{digest}".encode()).hexdigest()[:32]
            self.path = os.path.join(state_dir, f"{key}.json")

    def load(self) -> Optional[str]:
        if not self.path:
            return None
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh).get("url")
        except (OSError, ValueError):
            return None

    def save(self, url: str) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".upload-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"url": url}, fh)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def clear(self) -> None:
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)


class BlobReader:
    """A file-like, streaming view of a blob that hashes what it returns and resumes with ``Range`` after a
    transient failure; ``verify()`` drains the rest and checks size and digest."""

    def __init__(self, client: RegistryClient, ref: Reference, digest: str, size: Optional[int]):
        self.client = client
        self.ref = ref
        self.digest = digest
        self.size = size
        self.offset = 0
        self.hasher = hashlib.sha256()
        self._resp: Optional[requests.Response] = None
        self._iter: Optional[Iterator[bytes]] = None
        self._buf = b""
        self._eof = False
        self.started = time.monotonic()

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        url = f"{self.client.scheme}://{self.client.container(self.ref).get_blob_url(self.digest)}"
        resp = self.client.request("GET", url, headers=headers, stream=True)
        if self.offset and resp.status_code == 200:  # no Range support: skip what we already have
            skip = self.offset
            for block in resp.iter_content(1024 * 1024):
                if skip >= len(block):
                    skip -= len(block)
                    continue
                self._buf = block[skip:]
                break
        elif resp.status_code not in (200, 206):
            resp.close()
            self.client.check(resp, self.ref, f"blob download {self.digest[:19]}", ok=(200, 206))
        self._resp = resp
        self._iter = resp.iter_content(1024 * 1024)
        if not self.offset:
            self.client._emit("download", self.digest, 0, self.size or 0)  # pylint: disable=protected-access

    def _next_block(self) -> bytes:
        failures = 0
        while True:
            if self._iter is None:
                self._open()
                if self._buf:
                    block, self._buf = self._buf, b""
                    return block
            try:
                return next(self._iter)
            except StopIteration:
                return b""
            except TRANSIENT_ERRORS + (requests.exceptions.StreamConsumedError,) as err:
                failures += 1
                self.close()
                if failures > max(0, self.client.settings.retries):
                    raise RegistryUnreachable(
                        f"Download of {self.digest[:19]} from {self.ref.name} broke off at "
                        f"{self.offset // MIB} MiB ({_reason(err)}) after {failures} attempt(s); run the pull again."
                    ) from None
                self.client.sleep(min(30.0, self.client.settings.retry_delay * (2 ** (failures - 1))))

    def read(self, size: int = -1) -> bytes:
        out = []
        want = size if size is not None and size >= 0 else None
        got = 0
        while not self._eof and (want is None or got < want):
            if self._buf:
                block, self._buf = self._buf, b""
            else:
                block = self._next_block()
            if not block:
                self._eof = True
                break
            if want is not None and got + len(block) > want:
                block, self._buf = block[: want - got], block[want - got:]
            self.hasher.update(block)
            self.offset += len(block)
            got += len(block)
            out.append(block)
            if self.size is not None and self.offset > self.size:
                raise PibakeError(f"Blob {self.digest} of {self.ref.name} is larger than its manifest says; "
                                  "the registry returned wrong data.")
            self.client._emit("download", self.digest, self.offset, self.size or 0,  # pylint: disable=protected-access
                              time.monotonic() - self.started)
        return b"".join(out)

    def verify(self) -> None:
        while self.read(4 * 1024 * 1024):
            pass
        self.close()
        actual = "sha256:" + self.hasher.hexdigest()
        if (self.size is not None and self.offset != self.size) or actual != self.digest:
            raise PibakeError(
                f"Blob {self.digest} of {self.ref.name} failed verification (got {self.offset} bytes, {actual}); "
                "nothing was kept, pull again."
            )

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp = None
        self._iter = None
