# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Controller-side action for pibake.image.image_snapshot (see the module for docs).

state=planned needs the controller's templar (a role's variables are part of its key), so the keys are computed
here and passed to the module, which looks the snapshots up. state=saved goes to the module unchanged.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.pibake.image.plugins.module_utils import _fatstage, _snapshots
from ansible_collections.pibake.image.plugins.module_utils._partitions import parse_size

PLUGINS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORED = ("__pycache__", ".pyc", ".pyo")
UNSET = "<unset>"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        args = dict(self._task.args)
        if args.get("state", "planned") != "planned":
            return self._execute_module(module_name="pibake.image.image_snapshot", module_args=args,
                                        task_vars=task_vars)
        result = super().run(tmp, task_vars)
        roles = list(args.get("roles") or [])
        notes = []
        if not bool(args.get("enabled", True)):
            keys = [""] * len(roles)
            notes.append("Snapshot cache off (pibake_cache=off): every role runs, nothing is saved.")
        else:
            keys, notes = self._keys(args, roles, task_vars)
        args["keys"] = keys
        args.pop("enabled", None)
        planned = self._execute_module(module_name="pibake.image.image_snapshot", module_args=args,
                                       task_vars=task_vars)
        result.update(planned)
        if not result.get("failed"):
            result["msg"] = " ".join(notes + [str(planned.get("msg", ""))]).strip()
        return result

    def _keys(self, args, roles, task_vars):
        role_dirs = args.get("role_dirs") or {}
        plugins = _fatstage.tree_digest(PLUGINS_DIR, IGNORED)
        base = _snapshots.base_key(str(args.get("base_sha256") or ""), parse_size(args.get("grow") or "0"))
        described, notes = [], []
        for name in roles:
            folder = role_dirs.get(name) or ""
            variables = None
            if not folder or not os.path.isdir(folder):
                notes.append(f"Role {name} was not found on the controller; it and every later role run uncached.")
            else:
                try:
                    variables = self._role_variables(folder, task_vars)
                except AnsibleError as err:
                    notes.append(f"Role {name}'s variables cannot be templated on the controller "
                                 f"({str(err).splitlines()[0][:200]}); it and every later role run uncached.")
            described.append({"name": name, "tree": _fatstage.tree_digest(folder, IGNORED) if folder else "",
                              "vars": variables})
            if variables is None:
                break
        keys = _snapshots.chain_keys(base, described, plugins)
        return [key or "" for key in keys] + [""] * (len(roles) - len(keys)), notes

    def _load(self, path):
        for candidate in (path + ".yml", path + ".yaml"):
            if os.path.isfile(candidate):
                return self._loader.load_from_file(candidate, trusted_as_template=True) or {}
        return {}

    def _role_variables(self, folder, task_vars):
        """The role's argument_specs options, templated: play variables over defaults/main.yml over spec defaults."""
        specs = self._load(os.path.join(folder, "meta", "argument_specs"))
        options = ((specs.get("argument_specs") or {}).get("main") or {}).get("options") or {}
        defaults = self._load(os.path.join(folder, "defaults", "main"))
        available = dict(defaults)
        available.update(task_vars)
        templar = self._templar.copy_with_new_env(available_variables=available)
        values = {}
        for option in sorted(options):
            if option in task_vars:
                raw = task_vars[option]
            elif option in defaults:
                raw = defaults[option]
            elif isinstance(options[option], dict) and "default" in options[option]:
                raw = options[option]["default"]
            else:
                values[option] = UNSET
                continue
            values[option] = templar.template(raw)
        return values
