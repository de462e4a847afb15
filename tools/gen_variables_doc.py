#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Generate docs/reference/variables.md: every variable a user can set.

    tools/gen_variables_doc.py           rewrite docs/reference/variables.md
    tools/gen_variables_doc.py --check   exit 1 when it is out of date

Sources, so that the page cannot drift from the code:

* roles: each ``roles/<role>/meta/argument_specs.yml`` (every entry point), rendered by ``tools/gen_role_docs.py``
  (the same tables as the roles' README files, defaults taken from ``defaults/main.yml``);
* playbooks: the ``vars:`` of each play in ``playbooks/*.yml`` (the playbook's own settings and their defaults)
  and the usage lines of its header comment;
* environment: every ``PIBAKE_*`` name used by the build host's code (plugins, playbooks, pibake_cli, tools,
  Makefile), with a description from ``ENVIRONMENT`` below when there is one. (Roles pass ``PIBAKE_*`` names to
  the scripts they install on the device; those are the roles' business, not settings.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from typing import Dict, List, Optional

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join("docs", "reference", "variables.md")

ENVIRONMENT = {
    "PIBAKE_CACHE_DIR": "Cache of base images, downloads and snapshots (default `~/.cache/pibake`).",
    "PIBAKE_BUILD_LOG": "Log file of the run; set by the `pibake.image.build_log` callback, published as "
                        "`deploy/build.log`.",
    "PIBAKE_VM_DIR": "Folder of boot-test machine records (default `/run/pibake/vms`).",
    "PIBAKE_PROGRESS_FILE": "File long steps append progress lines to; set by the `pibake.image.progress` "
                            "callback for the tasks it runs.",
    "PIBAKE_PROGRESS_INTERVAL": "Seconds between two looks at the progress files (`pibake.image.progress`, "
                                "default 5).",
    "PIBAKE_PROGRESS_HEARTBEAT": "Seconds without progress before a \"still running\" line (default 60, 0 = off).",
    "PIBAKE_PROGRESS_FILES": "More progress files or glob patterns to follow, comma-separated.",
    "PIBAKE_PROGRESS_SUMMARY": "`false` turns off the list of output files at the end of the run.",
    "PIBAKE_INTERRUPT_GRACE": "Seconds after Ctrl-C before `pibake.image.interrupt_watchdog` ends a run that "
                              "ansible-core's shutdown hang holds (default 3).",
    "PIBAKE_INTERRUPT_DEADLINE": "Seconds after Ctrl-C after which `pibake.image.interrupt_watchdog` ends a run "
                                 "that still runs, with thread stacks (default 30).",
    "PIBAKE_REGISTRY": "Registry `host[:port]` for publish, pull and mirror.",
    "PIBAKE_REGISTRY_NAMESPACE": "Path in front of repository names, e.g. `ourbox`.",
    "PIBAKE_REGISTRY_TLS": "`true` (HTTPS, verified) or `false` (plain HTTP); unset: HTTPS except for localhost.",
    "PIBAKE_REGISTRY_CA_FILE": "CA certificate of a registry with a private CA.",
    "PIBAKE_REGISTRY_USER": "Registry login.",
    "PIBAKE_REGISTRY_PASSWORD": "Registry password or access token (never logged).",
    "PIBAKE_REPO": "The pibake.image checkout the `pibake` command runs (default: found from where it runs).",
    "PIBAKE_LEASE_DIR": "Folder of session leases (default `/run/pibake/leases`).",
    "PIBAKE_BINFMT_DIR": "Where binfmt_misc is mounted (default `/proc/sys/fs/binfmt_misc`); the fault tests point "
                         "it at a missing path to stand for a host without binfmt_misc.",
    "PIBAKE_CHROOT_EXE": "The `chroot` program the `pibake.image.chroot` connection runs.",
    "PIBAKE_TEST_STAGES": "`make test`: the stages to run, e.g. `\"lint unit\"`.",
    "PIBAKE_ECOSYSTEM_CHECKS": "`tools/ecosystem-checks.sh`: the checks to run (`docs sanity`).",
    "PIBAKE_ECOSYSTEM_KEEP": "`tools/ecosystem-checks.sh`: `1` keeps its temporary tree.",
    "PIBAKE_SANITY_ARGS": "`tools/ecosystem-checks.sh`: more `ansible-test sanity` arguments.",
}
# PIBAKE_* words that are not environment variables (os.info keys).
NOT_ENVIRONMENT = {"PIBAKE_VERSION"}
ENV_SOURCES = ("plugins", "playbooks", "pibake_cli", "tools", "Makefile", "ansible.cfg")


def _role_docs():
    spec = importlib.util.spec_from_file_location("gen_role_docs", os.path.join(REPO, "tools", "gen_role_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(path: str):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _text(value) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    return " ".join(str(value or "").split())


def roles_section(gen) -> List[str]:
    roles_dir = os.path.join(REPO, "roles")
    roles = sorted(r for r in os.listdir(roles_dir)
                   if os.path.isfile(os.path.join(roles_dir, r, "meta", "argument_specs.yml")))
    out = ["## Roles", "", "| role | what it does |", "|---|---|"]
    bodies: List[str] = []
    for role in roles:
        specs = (_load(os.path.join(roles_dir, role, "meta", "argument_specs.yml")) or {}).get("argument_specs") or {}
        main = specs.get("main") or next(iter(specs.values()), {}) or {}
        summary = gen._markdown(_text(main.get("short_description")))
        out.append(f"| [`pibake.image.{role}`](#pibakeimage{role}) | {summary} |")
        table, _problems = gen.render(os.path.join(roles_dir, role))
        description = gen._markdown(_text(main.get("description")))
        readme = os.path.join("roles", role, "README.md")
        bodies += ["", f"### `pibake.image.{role}`", ""]
        if description:
            bodies += [description, ""]
        if os.path.exists(os.path.join(REPO, readme)):
            bodies += [f"More in [{readme}](../../{readme}); `ansible-doc -t role pibake.image.{role}` shows the same.",
                       ""]
        bodies.append(table.replace("### Entry point", "#### Entry point").rstrip("\n"))
    return out + bodies


def _header_usage(path: str) -> List[str]:
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("---"):
                continue
            if not line.startswith("#"):
                break
            text = line[1:].rstrip()
            text = text[1:] if text.startswith(" ") else text
            if "SPDX-License-Identifier" in text or "Copyright:" in text:
                continue
            lines.append(text)
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def _default(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else "`''`"
    return f"`{json.dumps(value)}`"


def playbooks_section() -> List[str]:
    folder = os.path.join(REPO, "playbooks")
    out = ["## Playbooks", "",
           "Settings of the playbooks themselves (`-e name=value` overrides them). The roles a playbook runs take the",
           "role variables above; `build-image.yml` takes those of `pibake.image.pibake`."]
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".yml", ".yaml")):
            continue
        path = os.path.join(folder, name)
        try:
            plays = _load(path)
        except yaml.YAMLError:
            continue
        if not isinstance(plays, list):
            continue
        rows = []
        for play in plays:
            if not isinstance(play, dict) or "hosts" not in play:
                continue
            for var, value in (play.get("vars") or {}).items():
                if var.startswith("_") or var == "ansible_python_interpreter":
                    continue
                rows.append(f"| `{var}` | {_default(value).replace('|', chr(92) + '|')} |")
        usage = _header_usage(path)
        out += ["", f"### `playbooks/{name}`", ""]
        if usage:
            out += ["```text", *usage, "```", ""]
        if rows:
            out += ["| variable | default |", "|---|---|", *rows]
        else:
            out.append("No settings of its own.")
    return out


def environment_section() -> List[str]:
    used: Dict[str, set] = {}
    for source in ENV_SOURCES:
        base = os.path.join(REPO, source)
        paths = [base] if os.path.isfile(base) else [
            os.path.join(root, f) for root, dirs, files in os.walk(base) for f in files
            if "__pycache__" not in root]
        for path in paths:
            if not path.endswith((".py", ".yml", ".yaml", ".sh", ".cfg")) and os.path.basename(path) != "Makefile":
                continue
            if os.path.abspath(path) == os.path.abspath(__file__):
                continue
            with open(path, encoding="utf-8", errors="replace") as handle:
                for name in set(re.findall(r"\bPIBAKE_[A-Z0-9_]+\b", handle.read())) - NOT_ENVIRONMENT:
                    used.setdefault(name, set()).add(os.path.relpath(path, REPO))
    out = ["## Environment", "", "| variable | meaning | read by |", "|---|---|---|"]
    for name in sorted(used):
        files = sorted(used[name])
        shown = ", ".join(f"`{f}`" for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        out.append(f"| `{name}` | {ENVIRONMENT.get(name, '')} | {shown} |")
    return out


def render() -> str:
    gen = _role_docs()
    out = [
        "# Variables reference",
        "",
        "<!-- Generated by tools/gen_variables_doc.py from roles/*/meta/argument_specs.yml, playbooks/*.yml and the",
        "     code; do not edit. Change the argument specs (then run tools/gen_role_docs.py and this script). -->",
        "",
        "Every variable you can set: the roles' variables (from their argument specs, with the defaults that run),",
        "the playbooks' own settings, and the environment variables pibake reads on the build host. Where to set",
        "them is explained in [profiles and variants](../guides/profiles-and-variants.md): a profile's",
        "`inventories/<profile>/group_vars/all/*.yml`, or `-e` for one build.",
        "",
        "- [Roles](#roles)",
        "- [Playbooks](#playbooks)",
        "- [Environment](#environment)",
        "",
    ]
    out += roles_section(gen)
    out += [""] + playbooks_section()
    out += [""] + environment_section()
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/reference/variables.md.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    text = render()
    path = os.path.join(REPO, OUTPUT)
    current = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if args.check:
        if current != text:
            print(f"{OUTPUT} is out of date; run tools/gen_variables_doc.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
        print(f"updated {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
