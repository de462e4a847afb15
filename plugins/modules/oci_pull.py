#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: oci_pull
short_description: Pull a published OS image (image form or artifact form) from an OCI registry into a folder
version_added: 0.1.0
description:
  - Resolves O(ref) (a tag or a digest), recognises the B(image form) (files under C(/artifact) in a tar layer,
    possibly behind an image index) or the B(artifact form) (one blob per file, named by its
    C(org.opencontainers.image.title) annotation), and writes the files into O(dest).
  - Every blob is streamed while it is hashed; a blob whose size or digest differs from the manifest is rejected.
    A reference pinned by digest must match the manifest the registry returns. Files listed in C(*.sha256) or
    C(SHA256SUMS) files that came along are checked too (O(verify_checksums)).
  - Files are written into a temporary folder next to O(dest) and renamed into place only when all of them are
    verified, so a failure leaves O(dest) as it was and nothing half-written.
  - When O(dest) already holds exactly the published files with the published digests, nothing is downloaded and
    the task reports no change.
  - A download that breaks off is resumed with an HTTP C(Range) request, up to O(retries) times.
  - Uses the C(oras) Python SDK. Runs on the controller.
options:
  ref:
    description:
      - What to pull, C([registry/][namespace/]repository:tag) or C(...@sha256:<digest>). Without a registry the
        configured O(registry) and O(namespace) apply. Use the tag with the C(-artifact) suffix (or the artifact's
        digest) for the artifact form.
    type: str
    required: true
  dest:
    description: Folder to create or replace with the pulled files.
    type: path
    required: true
  platform:
    description:
      - Which manifest of an image index to use, as C(os/arch). By default the build host's platform, else the
        first one; pibake's own publications carry the same files for every platform.
    type: str
  overwrite:
    description: Replace O(dest) when it already holds other files; V(false) fails instead.
    type: bool
    default: true
  verify_checksums:
    description: Check the pulled files against the C(*.sha256) / C(SHA256SUMS) files pulled with them.
    type: bool
    default: true
extends_documentation_fragment:
  - pibake.image.registry
attributes:
  check_mode:
    support: full
    description: Can run in check mode and then reports what it would change, changing nothing.
    details: Resolves the reference and compares O(dest) with it; downloads nothing.
  diff_mode:
    support: none
    description: The module returns no diff.
notes:
  - A missing tag or digest, an unreachable registry and refused credentials each fail with one sentence.
seealso:
  - module: pibake.image.oci_publish
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Pull release 1.4.0 into deploy-from-registry/
  pibake.image.oci_pull:
    ref: ourbox-mini-os:1.4.0
    dest: "{{ playbook_dir }}/../deploy-from-registry"
    registry: registry.example.internal:5000
    namespace: ourbox

- name: Pull the ORAS-style artifact pinned by digest
  pibake.image.oci_pull:
    ref: registry.example.internal:5000/ourbox/ourbox-mini-os@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    dest: /srv/images/ourbox
"""

RETURN = r"""
ref:
  description: The reference as resolved (registry and namespace filled in).
  returned: always
  type: str
form:
  description: V(image) or V(artifact).
  returned: always
  type: str
digest:
  description: Digest the reference resolved to (the index for a multi-platform image form).
  returned: always
  type: str
manifest_digest:
  description: Digest of the manifest whose blobs were pulled.
  returned: always
  type: str
pinned:
  description: The reference pinned by RV(digest).
  returned: always
  type: str
dest:
  description: Absolute path of the folder written.
  returned: always
  type: str
files:
  description: Names of the files in RV(dest).
  returned: always
  type: list
  elements: str
checksums_verified:
  description: Files checked against a pulled checksum file.
  returned: when files were pulled
  type: list
  elements: str
annotations:
  description: Annotations of the pulled manifest (version, variant, revision...).
  returned: always
  type: dict
bytes:
  description: Total size of the pulled files.
  returned: when files were pulled
  type: int
seconds:
  description: Wall time of the pull.
  returned: always
  type: float
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._oci_module import (
    TransferProgress, registry_argument_spec, registry_params)
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import RegistrySettings

try:  # needs the oras Python package
    from ansible_collections.pibake.image.plugins.module_utils._oci import pull
    from ansible_collections.pibake.image.plugins.module_utils._oci_client import HAS_ORAS, ORAS_IMPORT_ERROR
    IMPORT_ERROR = None if HAS_ORAS else ORAS_IMPORT_ERROR
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def main():
    argument_spec = {
        "ref": {"type": "str", "required": True},
        "dest": {"type": "path", "required": True},
        "platform": {"type": "str"},
        "overwrite": {"type": "bool", "default": True},
        "verify_checksums": {"type": "bool", "default": True},
    }
    argument_spec.update(registry_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if IMPORT_ERROR is not None:
        module.fail_json(msg="The oras Python package is missing on the controller; run `make venv` "
                             "(or pip install -r requirements.txt).", exception=IMPORT_ERROR)
    params = module.params
    progress = TransferProgress(params["progress_log"])
    try:
        settings = RegistrySettings.from_sources(registry_params(params))
        result = pull(settings, params["ref"], params["dest"], platform=params["platform"],
                      overwrite=params["overwrite"], verify_checksums=params["verify_checksums"],
                      check_mode=module.check_mode, progress=progress)
    except PibakeError as err:
        module.fail_json(msg=str(err))
    finally:
        progress.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
