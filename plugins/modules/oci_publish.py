#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: oci_publish
short_description: Publish a deploy folder to an OCI registry as a pullable image and as an ORAS-style artifact
version_added: 0.1.0
description:
  - Pushes the release at the top of O(deploy_dir) (C(os.img.xz), C(os.info), C(build.log), checksums, bmap, SBOM,
    Imager manifest...) in up to two forms.
  - A deploy folder is shared by builds. When its C(os.info) names the release's image (C(IMAGE), for example
    C(cubeos-1.0-dev.img.xz)) and that file is there, only the files of that release are pushed (those named
    after the image (C(cubeos-1.0-dev.*)) and C(os.info), C(build.log), C(rpi-imager.json), C(os_list_local.json),
    C(sha256sums)). The other files (another build's image) are left out, listed in RV(left_out) and in a
    warning. Without such an C(IMAGE), every file is pushed.
  - The B(image form) is an OCI image whose single uncompressed tar layer holds C(/artifact/<file>), with a
    standard image config, so C(docker pull), C(podman pull) and C(nerdctl pull) accept it and C(docker cp)
    gets the files out. It is an image index with one manifest per entry of O(platforms), all sharing the same
    layer, tagged O(tag).
  - The B(artifact form) is an ORAS-style manifest (C(artifactType) C(application/vnd.pibake.os-image.v1), empty
    config) in which each file is its own blob with a media type and an C(org.opencontainers.image.title)
    annotation, tagged O(tag) followed by O(artifact_suffix) (C(oras pull) restores the files by name).
  - With O(attach), the SBOM (C(*.cdx.json), C(*.spdx.json), C(*sbom*.json)) and the checksum files are also
    attached to both forms as referrer manifests; registries without the referrers API get the OCI 1.1 fallback
    tag C(sha256-<digest>).
  - Manifest annotations (version, variant, profile, base image digest, git revision, created time) are read
    from C(os.info) in O(deploy_dir) and can be overridden with O(annotations). Manifests carry no clock time,
    so publishing the same folder again reports no change.
  - Blobs the registry already has are not sent again (checked with HEAD). Large blobs go in chunks
    of O(chunk_size_mib); transient failures are retried; an interrupted upload resumes where the registry
    stopped on the next run (the session is remembered in O(state_dir), never the credentials).
  - Uses the C(oras) Python SDK. Runs on the controller.
options:
  deploy_dir:
    description: Folder of finished build outputs (what C(playbooks/build-image.yml) writes).
    type: path
    required: true
  repository:
    description:
      - Repository to push to, below O(namespace) unless it names a registry (C(host:5000/team/os) works too).
      - Defaults to C(NAME) from C(os.info), lower-cased.
    type: str
  tag:
    description:
      - Tag of the image form. Defaults to C(VERSION) from C(os.info), followed by C(-VARIANT) when C(os.info) has
        a C(VARIANT) that the version does not already contain.
    type: str
  extra_tags:
    description: More tags for the same publication (for example V(latest)); each also gets its artifact tag.
    type: list
    elements: str
    default: []
  forms:
    description: Which forms to push.
    type: list
    elements: str
    choices: [image, artifact]
    default: [image, artifact]
  artifact_suffix:
    description: Appended to each tag for the artifact form when both forms are pushed.
    type: str
    default: "-artifact"
  platforms:
    description:
      - Platforms the image form declares, as C(os/arch[/variant]). The content is the same for all; declaring
        both the build host's and the device's lets every container engine pull it without a platform flag.
    type: list
    elements: str
    default: [linux/amd64, linux/arm64]
  annotations:
    description:
      - Manifest annotations to add or override. Short keys V(version), V(variant), V(profile), V(created),
        V(git_revision), V(base_image), V(base_image_digest) map to the standard or C(dev.pibake.image.*) keys;
        any other key is used as written.
    type: dict
    default: {}
  annotation_defaults:
    description:
      - Like O(annotations), but used only for keys that neither C(os.info) nor O(annotations) provide (the
        publish playbook passes the inventory's V(pibake_profile) here).
    type: dict
    default: {}
  attach:
    description: Attach the SBOM and the checksum files as referrers of both forms.
    type: bool
    default: true
  chunk_size_mib:
    description: Size of one upload chunk; memory use stays near this size whatever the file size.
    type: int
    default: 16
  state_dir:
    description:
      - Where unfinished upload sessions are remembered so that a re-run resumes them.
      - Defaults to C($PIBAKE_CACHE_DIR/oci-uploads) or C(~/.cache/pibake/oci-uploads).
    type: path
extends_documentation_fragment:
  - pibake.image.registry
attributes:
  check_mode:
    support: full
    description: Can run in check mode and then reports what it would change, changing nothing.
    details: Hashes the files and asks the registry which blobs and tags differ; sends nothing.
  diff_mode:
    support: none
    description: The module returns no diff.
notes:
  - An unreachable registry, refused credentials (HTTP 401) and a denied repository (HTTP 403) each fail with one
    sentence saying what to fix.
seealso:
  - module: pibake.image.oci_pull
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Publish deploy/ to the internal registry
  pibake.image.oci_publish:
    deploy_dir: "{{ playbook_dir }}/../deploy"
    registry: registry.example.internal:5000
    namespace: ourbox
    repository: ourbox-mini-os
    tag: 1.4.0-dev
    extra_tags: [dev-latest]
    username: "{{ lookup('ansible.builtin.env', 'PIBAKE_REGISTRY_USER') }}"
    password: "{{ lookup('ansible.builtin.env', 'PIBAKE_REGISTRY_PASSWORD') }}"
    progress_log: "{{ playbook_dir }}/../build/publish-progress.log"

- name: Publish only the ORAS-style artifact, registry and credentials from PIBAKE_REGISTRY* variables
  pibake.image.oci_publish:
    deploy_dir: /srv/deploy
    forms: [artifact]
"""

RETURN = r"""
registry:
  description: Registry host the publication went to.
  returned: always
  type: str
  sample: registry.example.internal:5000
repository:
  description: Repository including the namespace.
  returned: always
  type: str
  sample: ourbox/ourbox-mini-os
image:
  description: The image form (absent when not pushed).
  returned: when image is in forms
  type: dict
  contains:
    ref:
      description: First tag reference.
      type: str
      sample: registry.example.internal:5000/ourbox/ourbox-mini-os:1.4.0-dev
    refs:
      description: Every tag reference of this form.
      type: list
      elements: str
    digest:
      description: Digest of the index (or manifest with one platform).
      type: str
    pinned:
      description: Reference pinned by digest, for C(pibake.image.oci_pull) or C(docker pull).
      type: str
artifact:
  description: The artifact form, with the same keys as RV(image).
  returned: when artifact is in forms
  type: dict
tags_moved:
  description: Tag references that pointed elsewhere (or nowhere) before.
  returned: always
  type: list
  elements: str
annotations:
  description: Manifest annotations written.
  returned: always
  type: dict
files:
  description: Published files with C(name), C(size), C(digest), C(media_type).
  returned: always
  type: list
  elements: dict
left_out:
  description: Files of O(deploy_dir) that belong to another build and were not pushed.
  returned: always
  type: list
  elements: str
blobs:
  description: >-
    Every blob with C(name), C(digest), C(size), C(uploaded) (bytes sent), C(skipped) (the registry had it),
    C(resumed_from) (offset an interrupted upload resumed at) and C(seconds).
  returned: always
  type: list
  elements: dict
referrers:
  description: Attached SBOM and checksum manifests with C(role), C(subject), C(digest), C(ref), C(changed).
  returned: always
  type: list
  elements: dict
bytes_uploaded:
  description: Bytes sent in this run.
  returned: always
  type: int
seconds:
  description: Wall time of the whole publication.
  returned: always
  type: float
hash_seconds:
  description: Part of RV(seconds) spent hashing the files and building the manifests.
  returned: always
  type: float
upload_mib_per_s:
  description: RV(bytes_uploaded) divided by the time spent on blob uploads.
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
    from ansible_collections.pibake.image.plugins.module_utils._oci import defaults_from_os_info, publish
    from ansible_collections.pibake.image.plugins.module_utils._oci_client import HAS_ORAS, ORAS_IMPORT_ERROR
    IMPORT_ERROR = None if HAS_ORAS else ORAS_IMPORT_ERROR
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def main():
    argument_spec = {
        "deploy_dir": {"type": "path", "required": True},
        "repository": {"type": "str"},
        "tag": {"type": "str"},
        "extra_tags": {"type": "list", "elements": "str", "default": []},
        "forms": {"type": "list", "elements": "str", "choices": ["image", "artifact"],
                  "default": ["image", "artifact"]},
        "artifact_suffix": {"type": "str", "default": "-artifact"},
        "platforms": {"type": "list", "elements": "str", "default": ["linux/amd64", "linux/arm64"]},
        "annotations": {"type": "dict", "default": {}},
        "annotation_defaults": {"type": "dict", "default": {}},
        "attach": {"type": "bool", "default": True},
        "chunk_size_mib": {"type": "int", "default": 16},
        "state_dir": {"type": "path"},
    }
    argument_spec.update(registry_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if IMPORT_ERROR is not None:
        module.fail_json(msg="The oras Python package is missing on the controller; run `make venv` "
                             "(or pip install -r requirements.txt).", exception=IMPORT_ERROR)
    params = module.params
    progress = TransferProgress(params["progress_log"])
    try:
        defaults = defaults_from_os_info(params["deploy_dir"])
        repository = params["repository"] or defaults["repository"]
        tag = params["tag"] or defaults["tag"]
        if not repository or not tag:
            raise PibakeError("Give repository and tag, or an os.info with NAME and VERSION in deploy_dir.")
        settings = RegistrySettings.from_sources(
            registry_params(params), chunk_size=params["chunk_size_mib"] * 1024 * 1024)
        result = publish(
            params["deploy_dir"], settings, repository, tag,
            forms=params["forms"], artifact_suffix=params["artifact_suffix"], extra_tags=params["extra_tags"],
            platforms=params["platforms"], annotations=params["annotations"],
            annotation_defaults=params["annotation_defaults"], attach=params["attach"],
            state_dir=params["state_dir"], check_mode=module.check_mode, progress=progress,
        )
    except PibakeError as err:
        module.fail_json(msg=str(err))
    finally:
        progress.close()
    upload_seconds = sum(b["seconds"] for b in result["blobs"] if b["uploaded"])
    rate = result["bytes_uploaded"] / 1048576 / upload_seconds if upload_seconds else 0.0
    result["upload_mib_per_s"] = round(rate, 1)
    if result["left_out"]:
        module.warn(f"Left out of the release (another build's files in {params['deploy_dir']}): "
                    f"{', '.join(result['left_out'])}.")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
