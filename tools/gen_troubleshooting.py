#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Generate docs/reference/troubleshooting.md: every error message pibake can print, with what to do.

    tools/gen_troubleshooting.py           rewrite docs/reference/troubleshooting.md
    tools/gen_troubleshooting.py --check   exit 1 when it is out of date (a message was added, changed or removed)
    tools/gen_troubleshooting.py --list    print the messages found, one per line (for grepping)

Where the messages come from:

* Python in ``plugins/`` and ``pibake_cli/``: every ``PibakeError(...)`` (and subclasses defined in the tree),
  ``PibakeCliError(...)``, Ansible's ``AnsibleError``/``AnsibleConnectionFailure``/``AnsibleFilterError``/
  ``AnsibleActionFail``/``AnsibleFileNotFound`` and ``fail_json(msg=...)``. Literal text is kept; an f-string's
  or ``%``'s value parts become ``<name>``. A message computed entirely at run time is listed by place only.
* YAML in ``roles/`` and ``playbooks/``: ``fail_msg`` of ``ansible.builtin.assert`` and ``msg`` of
  ``ansible.builtin.fail`` tasks (``{{ expr }}`` becomes ``<expr>``).
* Shell set-up scripts in ``tools/`` (``echo "pibake: ..." >&2``): what ``make build`` can print.

What to do: pibake's messages follow "what went wrong; what to do", so the part after the first ``; `` is the
advice. ``tools/troubleshooting_hints.yml`` maps regular expressions to better advice where that is not enough,
and each component has a default pointing at its guide.
"""

from __future__ import annotations

import argparse
import ast
import functools
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Tuple

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join("docs", "reference", "troubleshooting.md")
HINTS = os.path.join("tools", "troubleshooting_hints.yml")

BASE_ERRORS = {"PibakeError", "PibakeCliError", "AnsibleError", "AnsibleConnectionFailure", "AnsibleFilterError",
               "AnsibleActionFail", "AnsibleFileNotFound", "AnsibleModuleError", "AnsibleUndefinedVariable"}

# (path regex, component title, guide relative to docs/reference/, default advice)
COMPONENTS: List[Tuple[str, str, str, str]] = [
    (r"^tools/.*\.sh$|^Makefile$", "Set-up (make build, make test)", "../guides/01-quickstart.md",
     "Run the set-up on a Debian 12 build host as root: `make build` installs what is missing."),
    (r"module_utils/(_run|_errors|_progress)\.py", "Host commands (any step)", "../guides/01-quickstart.md",
     "Install what is missing with `make deps` (bindep.txt lists the Debian packages) and run again."),
    (r"^pibake_cli/", "The pibake command", "cli.md", "See `pibake --help` and the CLI reference."),
    (r"_base_image|_download|_debian_base|modules/base_image", "Base image", "../guides/base-image.md",
     "Check `pibake_base_image` (type, url, sha256, path); see the base image guide."),
    (r"_session|_lease|_guard|_loop|_offsetloop|_mounts|_fatstage|_fatfs|_binfmt|_partitions|_chroot_paths|"
     r"_mountpoint_guard|modules/image_session|modules/mountpoint_guard|playbooks/clean", "Image session",
     "../runbooks/clean-build-environment.md",
     "Run `make clean` (playbooks/clean.yml) and build again; the clean build environment runbook has the details."),
    (r"connection/chroot", "The chroot connection", "connection.md",
     "Check that the image is attached (the build does it) and that `ansible_host` names its mounted root."),
    (r"_snapshots|(action|modules)/image_snapshot", "Snapshot cache", "../guides/build-image.md",
     "Build with `-e pibake_cache=off`, or delete `<pibake_cache_dir>/snapshots`; see the build guide."),
    (r"_shrink|_expand|_ext4|_freespace|_compress|_checksum|_bmap|_imager|_sbom|_board_lint|_imagefile|_outputs|"
     r"_release_info|_cmdline|_configtxt|_image_cleanup|modules/(image_|board_lint|imager_manifest|deploy_outputs|"
     r"cmdline_option|config_txt)|playbooks/finalize|roles/finalize", "Finalize and outputs",
     "../guides/finalize.md", "See the finalize guide; the message names the file or partition concerned."),
    (r"_oci|_mirror|_docker_archive|modules/oci_|modules/docker_archive|doc_fragments/registry|playbooks/(publish|pull|"
     r"mirror)", "Registry (publish, pull, mirror)", "../guides/publish-pull.md",
     "Check the registry settings (`PIBAKE_REGISTRY`, TLS, credentials); see the publish and pull guide."),
    (r"_flash|_blockdev|_data_disk|modules/(flash|data_disk)|playbooks/(flash|prepare-data-disk)",
     "Flash and data disk", "../guides/flash.md",
     "Pick the SYSTEM disk by its /dev/disk/by-id name and read the safety rules in the flash guide."),
    (r"_qemu|modules/qemu_boot|playbooks/boot-test|playbooks/tasks/boot", "Boot test", "../guides/boot-test.md",
     "See the boot test guide."),
    (r"_target_mode|action/target_facts|modules/target_facts|playbooks/configure-device", "Image and device mode",
     "../guides/live-device.md", "See the live device guide."),
    (r"filter/", "Filters", "contracts.md", "Check the data given to the filter."),
    (r"roles/pibake/|playbooks/build-image", "Build (prepare, customize, finalize)", "../guides/build-image.md",
     "See the build guide."),
    (r"^roles/", "Roles", "variables.md", "Check the role's variables in the variables reference."),
    (r"", "Other", "../README.md", "Read the message: it names what to change."),
]


class Message:
    def __init__(self, text: str, path: str, where: str):
        self.text = " ".join(text.split())
        self.path = path
        self.where = where


# ---------------------------------------------------------------------------------------------------- Python
def _short(expr: ast.AST) -> str:
    if isinstance(expr, ast.Call) and expr.args:
        func = expr.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == "len":
            return "count"
        if name in ("join", "to_native", "to_text", "str", "repr", "basename", "dirname", "abspath", "realpath",
                    "quote", "int", "float", "round", "sorted", "list"):
            return _short(expr.args[0])
    if isinstance(expr, ast.BoolOp):
        return _short(expr.values[0])
    if isinstance(expr, ast.GeneratorExp):
        return _short(expr.elt)
    text = ast.unparse(expr)
    match = re.search(r"\[['\"]([\w-]+)['\"]\]$", text)
    if match:
        return match.group(1)
    if re.fullmatch(r"[\w.]+", text):
        return text.split(".")[-1]
    return text if len(text) <= 30 else text[:27] + "..."


def _render(node: ast.AST) -> Optional[str]:
    """The text of a message expression, with computed parts as <name>; None when nothing of it is literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(f"<{_short(value.value)}>")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left), _render(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else f"<{_short(node.left)}>") + \
            (right if right is not None else f"<{_short(node.right)}>")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        left = _render(node.left)
        if left is None:
            return None
        return re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdrifx]", "<value>", left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        base = _render(node.func.value)
        return re.sub(r"\{[^{}]*\}", "<value>", base) if base is not None else None
    if isinstance(node, ast.IfExp):
        body, other = _render(node.body), _render(node.orelse)
        if body is None and other is None:
            return None
        return " / ".join(x for x in (body, other) if x is not None)
    return None


def _error_classes(files: Iterable[str]) -> set:
    """Error classes: the known ones plus every class in the tree derived from one of them."""
    known = set(BASE_ERRORS)
    trees = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            trees.append(ast.parse(handle.read(), path))
    changed = True
    while changed:
        changed = False
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in known:
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    if bases & known:
                        known.add(node.name)
                        changed = True
    return known


def _python_messages(rel: str, classes: set) -> Tuple[List[Message], List[str]]:
    with open(os.path.join(REPO, rel), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), rel)
    messages, dynamic = [], []
    scopes: Dict[ast.AST, str] = {}

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            scopes[child] = inner
            visit(child, inner)

    visit(tree, "")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        expr = None
        if name in classes and node.args:
            expr = node.args[0]
        elif name == "fail_json":
            expr = next((k.value for k in node.keywords if k.arg == "msg"), None)
        if expr is None:
            continue
        where = f"{scopes[node]}()" if scopes.get(node) else "module level"
        text = _render(expr)
        if text is None or not text.strip() or not re.search(r"[A-Za-z]{3}", re.sub(r"<[^>]*>", "", text)):
            if not (name == "fail_json" and ast.unparse(expr).startswith(("str(", "missing_required_lib"))):
                dynamic.append(f"{rel} ({where}): {ast.unparse(expr)[:80]}")
            continue
        messages.append(Message(text, rel, where))
    return messages, dynamic


# ---------------------------------------------------------------------------------------------------- YAML
ASSERT = {"assert", "ansible.builtin.assert", "ansible.legacy.assert"}
FAIL = {"fail", "ansible.builtin.fail", "ansible.legacy.fail"}


def _jinja(text: str) -> str:
    def repl(match: "re.Match[str]") -> str:
        expr = match.group(1).strip()
        expr = expr.split("|")[0].strip()
        inner = re.search(r"\[['\"]([\w-]+)['\"]\]$", expr)
        if inner:
            expr = inner.group(1)
        return f"<{expr}>"
    text = re.sub(r"\{\{(.*?)\}\}", repl, str(text))
    return re.sub(r"\{%.*?%\}", "", text)


def _walk_tasks(items, found: List[Tuple[str, str]]) -> None:
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            _walk_tasks(item.get(key), found)
        name = str(item.get("name") or "").strip()
        for action in ASSERT | FAIL:
            if action in item and isinstance(item[action], dict):
                args = item[action]
                text = args.get("fail_msg", args.get("msg")) if action in ASSERT else args.get("msg")
                if isinstance(text, list):
                    text = " ".join(str(t) for t in text)
                if text:
                    found.append((str(text), name))


def _yaml_messages(rel: str) -> List[Message]:
    with open(os.path.join(REPO, rel), encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError:
            return []
    found: List[Tuple[str, str]] = []
    _walk_tasks(data if isinstance(data, list) else [], found)
    return [Message(_jinja(text), rel, f"task \"{name}\"" if name else "a task") for text, name in found]


# ---------------------------------------------------------------------------------------------------- shell
def _shell_messages(rel: str) -> List[Message]:
    messages = []
    with open(os.path.join(REPO, rel), encoding="utf-8") as handle:
        for line in handle:
            match = re.search(r"echo \"pibake: (.*?)\"\s*>&2", line)
            if match:
                text = re.sub(r"\$\{?(\w+)\}?|\$\([^)]*\)", lambda m: f"<{m.group(1) or 'value'}>", match.group(1))
                messages.append(Message("pibake: " + text, rel, "set-up"))
    return messages


# ---------------------------------------------------------------------------------------------------- assembling
def _files(folder: str, exts: Tuple[str, ...]) -> List[str]:
    result = []
    base = os.path.join(REPO, folder)
    for root, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "files", "templates"))
        for name in sorted(names):
            if name.endswith(exts):
                result.append(os.path.relpath(os.path.join(root, name), REPO))
    return result


@functools.lru_cache(maxsize=1)
def collect() -> Tuple[List[Message], List[str]]:
    py_files = [f for f in _files("plugins", (".py",)) + _files("pibake_cli", (".py",))]
    classes = _error_classes(os.path.join(REPO, f) for f in py_files)
    messages: List[Message] = []
    dynamic: List[str] = []
    for rel in py_files:
        found, computed = _python_messages(rel, classes)
        messages += found
        dynamic += computed
    for rel in _files("roles", (".yml", ".yaml")) + _files("playbooks", (".yml", ".yaml")):
        if "/meta/" in rel or "/defaults/" in rel or "/vars/" in rel or "/templates/" in rel:
            continue
        messages += _yaml_messages(rel)
    for rel in _files("tools", (".sh",)):
        messages += _shell_messages(rel)
    return messages, dynamic


def component(path: str) -> Tuple[str, str, str]:
    for pattern, title, guide, advice in COMPONENTS:
        if re.search(pattern, path):
            return title, guide, advice
    return COMPONENTS[-1][1:]


def advice_for(text: str, hints: List[Tuple["re.Pattern[str]", str]], default: str) -> str:
    for pattern, advice in hints:
        if pattern.search(text):
            return advice
    if "; " in text:
        action = text.split("; ", 1)[1].strip()
        if re.search(r"[A-Za-z]", re.sub(r"<[^>]*>", "", action)):
            return action
    return default


def load_hints() -> List[Tuple["re.Pattern[str]", str]]:
    path = os.path.join(REPO, HINTS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or []
    return [(re.compile(item["match"]), item["do"]) for item in data]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def render() -> str:
    messages, dynamic = collect()
    hints = load_hints()
    groups: Dict[str, Dict[str, dict]] = {}
    order = [c[1] for c in COMPONENTS]
    for msg in messages:
        title, guide, default = component(msg.path)
        entry = groups.setdefault(title, {}).setdefault(msg.text, {"where": [], "guide": guide, "default": default})
        place = f"`{msg.path}` ({msg.where})"
        if place not in entry["where"]:
            entry["where"].append(place)
    total = sum(len(v) for v in groups.values())
    out = [
        "# Troubleshooting: every message pibake prints",
        "",
        "<!-- Generated by tools/gen_troubleshooting.py from the sources; do not edit. Improve the advice in",
        "     tools/troubleshooting_hints.yml, or the message itself in the code. -->",
        "",
        "A pibake failure ends with one sentence: what went wrong and, after the semicolon, what to do. This page",
        f"lists all {total} of them, grouped by the part of pibake that prints them, with what to do and where each",
        "comes from. Search it for a distinctive part of your message; `<name>` stands for a value filled in at run",
        "time (a path, a device, a size...). The full run is also in `deploy/build.log` (or `build/logs/`).",
        "",
        "Before anything else:",
        "",
        "- A build that was killed or failed half-way: `make clean` (see the "
        "[clean build environment runbook](../runbooks/clean-build-environment.md)).",
        "- More detail: run the same command with `-v` (ansible-playbook) or `pibake ... -v`.",
        "",
        "| part | messages |",
        "|---|---|",
    ]
    for title in order:
        if title in groups:
            out.append(f"| [{title}](#{_anchor(title)}) | {len(groups[title])} |")
    for title in order:
        if title not in groups:
            continue
        entries = groups[title]
        guide = next(iter(entries.values()))["guide"]
        out += ["", f"## {title}", "", f"Guide: [{os.path.basename(guide)}]({guide})", ""]
        for text in sorted(entries, key=lambda t: re.sub(r"[^a-z0-9 ]", "", t.lower())):
            entry = entries[text]
            out.append(f"- **{_md(text)}**  ")
            out.append(f"  What to do: {_md(advice_for(text, hints, entry['default']))}  ")
            out.append(f"  From: {', '.join(entry['where'])}")
    if dynamic:
        out += ["", "## Messages composed at run time", "",
                "These places pass on a message built from the failing command's own output (its last lines of",
                "stderr, for example); the message says which command failed.", ""]
        out += [f"- `{line.split(':', 1)[0]}`" for line in sorted(set(dynamic))]
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    parser.add_argument("--list", action="store_true", help="print the messages found")
    args = parser.parse_args(argv)
    if args.list:
        for msg in collect()[0]:
            print(f"{msg.path}: {msg.text}")
        return 0
    text = render()
    path = os.path.join(REPO, OUTPUT)
    current = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if args.check:
        if current != text:
            print(f"{OUTPUT} is out of date; run tools/gen_troubleshooting.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
        print(f"updated {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
