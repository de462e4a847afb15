#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: oci_mirror
short_description: Copy container images from their upstream into the internal registry, pinned by digest
version_added: 0.1.0
description:
  - For each entry of O(images), resolves the upstream image to a digest, copies C(src@digest) with C(skopeo copy
    --preserve-digests) into the mirror registry and checks the digest that landed there.
  - O(platforms=all) copies the whole image index, so the mirror keeps the upstream digest; a single platform
    such as V(linux/arm64) copies only that platform's manifest, whose digest is the one the upstream index lists.
  - A destination tag that already points at the expected digest is left alone (no change reported).
  - Credentials reach skopeo through a private C(auth.json) (mode 0600) removed afterwards, never through the
    command line.
  - Runs on the controller; needs C(skopeo).
options:
  images:
    description:
      - Images to mirror. Each entry is an image name (C(docker.io/library/alpine:3.20),
        C(ghcr.io/org/app@sha256:...), short Docker Hub names like C(alpine:3.20)) or a dict with C(src) (also
        accepted as C(image), C(name) or C(ref)) and an optional C(dest).
      - Without C(dest), the image keeps its path below O(namespace) of O(registry)
        (C(docker.io/library/alpine:3.20) becomes C(<registry>/<namespace>/library/alpine:3.20)).
    type: list
    elements: raw
    required: true
  platforms:
    description: V(all), or one platform as C(os/arch[/variant]) such as V(linux/arm64).
    type: str
    default: all
  src_username:
    description: User for the upstream registries (for example to avoid anonymous rate limits).
    type: str
  src_password:
    description: Password or token of O(src_username). Never logged.
    type: str
  src_tls:
    description: Verify TLS of the upstream registries. Unset means yes, except for loopback addresses.
    type: bool
extends_documentation_fragment:
  - pibake.image.registry
attributes:
  check_mode:
    support: full
    description: Can run in check mode and then reports what it would change, changing nothing.
    details: Resolves the digests and compares them with the mirror; copies nothing.
  diff_mode:
    support: none
    description: The module returns no diff.
notes:
  - The registry options O(retries), O(retry_delay), O(timeout) and O(progress_log) are accepted for symmetry with
    the other OCI modules; skopeo applies its own retry policy.
seealso:
  - module: pibake.image.oci_publish
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Mirror the preload images for the Pi (arm64 only)
  pibake.image.oci_mirror:
    images:
      - docker.io/library/alpine:3.20
      - src: ghcr.io/example/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
        dest: apps/app:1.0
    platforms: linux/arm64
    registry: registry.example.internal:5000
    namespace: mirror
"""

RETURN = r"""
images:
  description: >-
    One entry per image with C(src), C(src_pinned) (upstream by digest), C(dest), C(digest) (what the mirror
    holds), C(pinned) (mirror reference by digest, for preload lists), C(platforms) and C(changed).
  returned: always
  type: list
  elements: dict
  sample:
    - src: docker.io/library/alpine:3.20
      src_pinned: docker.io/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      dest: registry.example.internal:5000/mirror/library/alpine:3.20
      digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      pinned: registry.example.internal:5000/mirror/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      platforms: all
      changed: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._mirror import mirror
from ansible_collections.pibake.image.plugins.module_utils._oci_module import registry_argument_spec, registry_params
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import RegistrySettings
from ansible_collections.pibake.image.plugins.module_utils._run import require_tools


def main():
    argument_spec = {
        "images": {"type": "list", "elements": "raw", "required": True},
        "platforms": {"type": "str", "default": "all"},
        "src_username": {"type": "str"},
        "src_password": {"type": "str", "no_log": True},
        "src_tls": {"type": "bool"},
    }
    argument_spec.update(registry_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        require_tools("skopeo")
        settings = RegistrySettings.from_sources(registry_params(params))
        result = mirror(params["images"], settings, platforms=params["platforms"],
                        src_username=params["src_username"], src_password=params["src_password"],
                        src_tls=params["src_tls"], check_mode=module.check_mode)
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
