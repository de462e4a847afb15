# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Registry settings (variables + environment) and image references, without any network code.

A reference is written the Docker way: ``[registry/][namespace/]repository[:tag][@digest]``. When it names no
registry, the configured one (``PIBAKE_REGISTRY``) is used and the configured namespace is put in front.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

ENV_REGISTRY = "PIBAKE_REGISTRY"
ENV_NAMESPACE = "PIBAKE_REGISTRY_NAMESPACE"
ENV_USER = "PIBAKE_REGISTRY_USER"
ENV_PASSWORD = "PIBAKE_REGISTRY_PASSWORD"
ENV_TLS = "PIBAKE_REGISTRY_TLS"
ENV_CA_FILE = "PIBAKE_REGISTRY_CA_FILE"

DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024

_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value, name: str) -> Optional[bool]:
    """``True``/``False`` from a bool or a string like ``yes``/``off``; ``None`` for empty or ``auto``."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise PibakeError(f"{name} must be true, false or auto, not {value!r}; fix the setting.")


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.x.y.z`` and ``[::1]`` (with or without a port)."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class RegistrySettings:
    """Where to push/pull and how; ``password`` never appears in ``repr()`` or results."""

    registry: str = ""
    namespace: str = ""
    tls: Optional[bool] = None          # None: https unless the registry is on a loopback address
    ca_file: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    retries: int = 4
    retry_delay: float = 1.0
    timeout: float = 120.0

    @classmethod
    def from_sources(cls, params: Optional[Mapping] = None, env: Optional[Mapping[str, str]] = None,
                     **overrides) -> "RegistrySettings":
        """Settings from explicit values (module options / variables) falling back to the environment."""
        params = dict(params or {})
        params.update({k: v for k, v in overrides.items() if v is not None})
        env = os.environ if env is None else env

        def pick(key: str, env_key: str):
            value = params.get(key)
            if value in (None, ""):
                value = env.get(env_key) or None
            return value

        settings = cls(
            registry=(pick("registry", ENV_REGISTRY) or "").strip().rstrip("/"),
            namespace=(pick("namespace", ENV_NAMESPACE) or "").strip().strip("/"),
            tls=parse_bool(pick("tls", ENV_TLS), "registry tls (PIBAKE_REGISTRY_TLS)"),
            ca_file=pick("ca_file", ENV_CA_FILE),
            username=pick("username", ENV_USER),
            password=pick("password", ENV_PASSWORD),
        )
        for key in ("chunk_size", "retries", "retry_delay", "timeout"):
            if params.get(key) is not None:
                setattr(settings, key, type(getattr(settings, key))(params[key]))
        settings.validate()
        return settings

    def validate(self) -> None:
        for prefix in ("http://", "https://"):
            if self.registry.startswith(prefix):
                raise PibakeError(
                    f"Registry {self.registry!r} must be a host[:port] without {prefix}; "
                    "use pibake_registry_tls (PIBAKE_REGISTRY_TLS) to choose http or https."
                )
        if self.namespace and not _REPO_RE.match(self.namespace):
            raise PibakeError(
                f"Registry namespace {self.namespace!r} is not valid; use lower-case letters, digits, . _ - and /."
            )
        if bool(self.username) != bool(self.password):
            raise PibakeError(
                "Registry credentials are incomplete; set both PIBAKE_REGISTRY_USER and PIBAKE_REGISTRY_PASSWORD "
                "(or pibake_registry_user and pibake_registry_password)."
            )
        if self.chunk_size < 1024 * 1024:
            raise PibakeError("Registry chunk size must be at least 1 MiB; raise it.")
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise PibakeError(f"Registry CA file {self.ca_file} does not exist; fix pibake_registry_ca_file.")

    def uses_tls(self, host: Optional[str] = None) -> bool:
        host = host or self.registry
        return self.tls if self.tls is not None else not is_loopback(host)

    def tls_verify(self):
        """What ``requests`` takes as ``verify``."""
        return self.ca_file or True

    def reference(self, text: str) -> "Reference":
        return Reference.parse(text, self)


@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``; ``repository`` includes the namespace."""

    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @classmethod
    def parse(cls, text: str, settings: Optional[RegistrySettings] = None) -> "Reference":
        raw = (text or "").strip()
        if raw.startswith("docker://"):
            raw = raw[len("docker://"):]
        if not raw:
            raise PibakeError("The image reference is empty; give a repository and a tag or digest.")
        digest = None
        if "@" in raw:
            raw, digest = raw.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise PibakeError(f"Digest {digest!r} is not a sha256:<64 hex> digest; copy it again.")
        tag = None
        last = raw.rsplit("/", 1)[-1]
        if ":" in last:
            raw, tag = raw.rsplit(":", 1)
            if not _TAG_RE.match(tag):
                raise PibakeError(f"Tag {tag!r} is not a valid tag; use letters, digits, _ . - (max 128).")
        parts = raw.split("/")
        registry = ""
        if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                               or parts[0].startswith("[")):
            registry, parts = parts[0], parts[1:]
        repository = "/".join(parts)
        if not registry:
            registry = settings.registry if settings else ""
            if not registry:
                raise PibakeError(
                    f"Reference {text!r} names no registry and none is configured; set pibake_registry "
                    "or PIBAKE_REGISTRY (host[:port])."
                )
            namespace = settings.namespace if settings else ""
            if namespace and not (repository == namespace or repository.startswith(namespace + "/")):
                repository = f"{namespace}/{repository}"
        if not _REPO_RE.match(repository):
            raise PibakeError(
                f"Repository {repository!r} is not valid; use lower-case letters, digits, . _ - and / only."
            )
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    def with_tag(self, tag: Optional[str]) -> "Reference":
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, None, digest)

    @property
    def name(self) -> str:
        """``registry/repository`` (what oras calls the container, without tag)."""
        return f"{self.registry}/{self.repository}"

    @property
    def target(self) -> str:
        """The tag or digest to ask for (digest wins)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
