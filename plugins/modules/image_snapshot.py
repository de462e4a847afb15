#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: image_snapshot
short_description: Snapshot cache of the customize phase - pick the snapshot to start from, save one after a role
version_added: 0.2.0
description:
  - After each role of the customize phase the image is saved in the cache under a key chaining the base
    image's SHA-256 (and O(grow)), then per role its name, a digest of its files, a digest of the collection's
    C(plugins/) folder, the role's variables and the previous key. A rebuild starts from the deepest snapshot
    whose key still matches and runs only the roles after it; a changed role invalidates itself and every later
    role, nothing earlier.
  - C(state=planned) (controller side, action plugin) computes the keys. A role's variables are the options of
    its C(meta/argument_specs.yml) main entry point, templated on the controller with the play's variables over
    the role's C(defaults/main.yml). When one cannot be templated there (a fact of the image, say), that role
    and every later one run and are not cached; the result's RV(msg) says so.
  - C(state=saved) copies the attached image of a session (O(lease)) into the cache as the snapshot O(key),
    consistently (root filesystem frozen, the staged boot files written into the copy's FAT), then evicts least
    recently used snapshots until the cache takes at most O(max_size). A snapshot is written under a temporary
    name and counts only once its record is written, so a build killed meanwhile leaves nothing a later build
    would use.
  - Snapshots are files C(<key>.img) (sparse) and C(<key>.json) in C(<cache_dir>/snapshots).
options:
  state:
    description: C(planned) to choose the snapshot to start from, C(saved) to save one.
    type: str
    choices: [planned, saved]
    default: planned
  cache_dir:
    description: The pibake cache folder; snapshots go into its C(snapshots) subfolder.
    type: path
    required: true
  enabled:
    description: With C(state=planned), C(false) plans every role to run and computes no key.
    type: bool
    default: true
  roles:
    description: With C(state=planned), the roles of the customize phase in order (names as in C(pibake_roles)).
    type: list
    elements: str
  role_dirs:
    description: With C(state=planned), the folder of each role of O(roles) (role name to path).
    type: dict
  base_sha256:
    description: With C(state=planned), SHA-256 of the base image.
    type: str
  grow:
    description: With C(state=planned), how much the base image is grown (C(pibake_grow)); part of every key.
    type: str
    default: "0"
  keys:
    description:
      - With C(state=planned), the keys per role as computed by the action plugin (set by it, not by playbooks);
        an empty string marks a role that is not cached.
    type: list
    elements: str
  lease:
    description: With C(state=saved), the lease of the attached image session to snapshot.
    type: path
  key:
    description: With C(state=saved), the key to save the snapshot under.
    type: str
  role:
    description: With C(state=saved), the role just run (recorded with the snapshot).
    type: str
  max_size:
    description:
      - With C(state=saved), the most disk space all snapshots may take (C(20G)); least recently used ones are
        evicted, the new one last. C(0) keeps none.
    type: str
    default: 20G
attributes:
  check_mode:
    support: full
    description: C(state=planned) only reads the cache (no use is recorded); C(state=saved) saves nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux build host (the controller), as root for C(state=saved).
notes:
  - C(state=saved) runs on the build host; from the customize play delegate it to C(localhost).
  - The copies are sparse (C(cp --sparse=always)); snapshots take the disk space of the image's used blocks.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Choose the snapshot to start from
  pibake.image.image_snapshot:
    state: planned
    cache_dir: ~/.cache/pibake
    roles: [pibake.image.base, pibake.image.cleanup]
    role_dirs:
      pibake.image.base: /work/pibake/roles/base
      pibake.image.cleanup: /work/pibake/roles/cleanup
    base_sha256: "{{ base.sha256 }}"
    grow: 1G
  register: plan

- name: Save the image after a role
  pibake.image.image_snapshot:
    state: saved
    cache_dir: ~/.cache/pibake
    lease: "{{ session.lease }}"
    key: "{{ plan.remaining[0].key }}"
    role: pibake.image.base
    max_size: 20G
  delegate_to: localhost
"""

RETURN = r"""
msg:
  description: One line for the build log (what is restored and what runs, or what was saved and evicted).
  returned: always
  type: str
restore:
  description: Snapshot image to start from instead of the base image; empty when none matches.
  returned: state=planned
  type: str
restore_key:
  description: Key of that snapshot.
  returned: state=planned
  type: str
restored:
  description: Roles whose result the snapshot holds (not run again).
  returned: state=planned
  type: list
  elements: str
remaining:
  description: Roles still to run, in order, each with its C(name) and C(key) (empty when not cached).
  returned: state=planned
  type: list
  elements: dict
path:
  description: The snapshot image saved.
  returned: state=saved
  type: str
evicted:
  description: Keys of the snapshots evicted to stay within O(max_size).
  returned: state=saved
  type: list
  elements: str
total_bytes:
  description: Disk space all snapshots take after the eviction.
  returned: state=saved
  type: int
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._signals import unwind_on_sigterm

try:
    from ansible_collections.pibake.image.plugins.module_utils import _session, _snapshots
    from ansible_collections.pibake.image.plugins.module_utils._partitions import parse_size
    IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def save(params):
    if not (params["lease"] and params["key"]):
        raise PibakeError("state=saved needs lease and key; this is a bug in the calling playbook.")
    store = _snapshots.Store(params["cache_dir"])
    partial = store.partial(params["key"])
    try:
        _session.copy_attached(params["lease"], partial)
        record = store.commit(params["key"], partial, {"role": params["role"] or ""})
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    evicted = store.evict(parse_size(params["max_size"]), keep=[params["key"]])
    total = store.total_bytes()
    kept = params["key"] not in evicted
    return dict(
        changed=True,
        path=store.image(params["key"]) if kept else "",
        evicted=evicted,
        total_bytes=total,
        msg=(f"Snapshot after role {params['role']} {'saved' if kept else 'did not fit and was evicted'} "
             f"({params['key'][:12]}, {int(record['size']) >> 20} MiB apparent); {len(evicted)} evicted, "
             f"cache now {total >> 20} MiB."),
    )


def planned(params, check_mode=False):
    roles = params["roles"] or []
    keys = params["keys"] if params["keys"] is not None else [""] * len(roles)
    store = _snapshots.Store(params["cache_dir"])
    result = _snapshots.plan(store, roles, [key or None for key in keys], mark_used=not check_mode)
    running = [role["name"] for role in result["remaining"]]
    if result["restored"]:
        msg = (f"Snapshot cache: roles restored from the cache: {', '.join(result['restored'])} "
               f"(snapshot {str(result['restore_key'])[:12]}); ")
    else:
        msg = "Snapshot cache: no role restored; "
    msg += f"roles to run: {', '.join(running) or 'none'}."
    return dict(changed=False, msg=msg, **result)


def main():
    unwind_on_sigterm()  # an interrupted copy leaves its partial file to the next sweep, nothing attached
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["planned", "saved"], default="planned"),
            cache_dir=dict(type="path", required=True),
            enabled=dict(type="bool", default=True),
            roles=dict(type="list", elements="str"),
            role_dirs=dict(type="dict"),
            base_sha256=dict(type="str"),
            grow=dict(type="str", default="0"),
            keys=dict(type="list", elements="str", no_log=False),
            lease=dict(type="path"),
            key=dict(type="str", no_log=False),
            role=dict(type="str"),
            max_size=dict(type="str", default="20G"),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="pibake.image module utilities failed to import.", exception=IMPORT_ERROR)
    try:
        if module.params["state"] == "saved":
            if module.check_mode:
                module.exit_json(changed=True, msg="check mode: no snapshot saved", key=module.params["key"])
            module.exit_json(**save(module.params))
        module.exit_json(**planned(module.params, check_mode=module.check_mode))
    except PibakeError as err:
        module.fail_json(msg=str(err))


if __name__ == "__main__":
    main()
