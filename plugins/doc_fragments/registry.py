# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Options shared by the modules that talk to an OCI registry."""


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    DOCUMENTATION = r"""
options:
  registry:
    description:
      - Registry as C(host[:port]), without C(http://) or C(https://).
      - Defaults to the environment variable E(PIBAKE_REGISTRY). The playbooks pass V(pibake_registry).
      - Not needed when a reference names its registry.
    type: str
  namespace:
    description:
      - Path put in front of repository names that do not name a registry (C(ourbox) gives C(host/ourbox/os)).
      - Defaults to E(PIBAKE_REGISTRY_NAMESPACE). The playbooks pass V(pibake_registry_namespace).
    type: str
  tls:
    description:
      - V(true) for HTTPS with certificate checks, V(false) for plain HTTP.
      - Unset means HTTPS, except for a registry on a loopback address (C(localhost), C(127.0.0.1)).
      - Defaults to E(PIBAKE_REGISTRY_TLS). The playbooks pass V(pibake_registry_tls).
    type: bool
  ca_file:
    description:
      - PEM file of the CA that signed the registry's certificate. Defaults to E(PIBAKE_REGISTRY_CA_FILE).
    type: path
  username:
    description:
      - User for the registry's basic or token login. Defaults to E(PIBAKE_REGISTRY_USER).
    type: str
  password:
    description:
      - Password or token of O(username). Defaults to E(PIBAKE_REGISTRY_PASSWORD).
      - Never logged, never returned, never written to C(build.log); it travels only in an HTTP header.
    type: str
  retries:
    description:
      - How often a request that failed for a transient reason (connection refused or reset, timeout,
        HTTP 408/429/5xx) is tried again, with a backoff of O(retry_delay), twice that, and so on (at most 30 s).
    type: int
    default: 4
  retry_delay:
    description: First backoff delay in seconds.
    type: float
    default: 1.0
  timeout:
    description: Seconds to wait for an answer to one request.
    type: float
    default: 120.0
  progress_log:
    description:
      - File that receives progress lines (percent, MiB, MiB/s) while blobs move; C(tail -f) it. Unset sends them
        to the module's standard error, which Ansible discards.
    type: path
"""
