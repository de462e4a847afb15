#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
#
# Ansible ecosystem checks: the `ecosystem` stage of `make test` (tools/run-tests.sh).
#
#   docs    ansible-galaxy collection build, install the artifact into a temporary collections path, then
#           ansible-doc every plugin (modules, action-backed modules, connection, callback, filter, ...) and every
#           role's argument spec from that installed copy, with no ansible.cfg of this checkout in effect.
#   sanity  ansible-test sanity on a copy of the collection laid out as .../ansible_collections/pibake/image (the
#           git-tracked and untracked-but-not-ignored files), run locally: no containers, no downloads but PyPI.
#
# Every finding fails the run: exit status 1 and a summary naming the failed checks.
#
# Environment:
#   PIBAKE_ECOSYSTEM_CHECKS   checks to run, default "docs sanity"
#   PIBAKE_SANITY_ARGS        extra ansible-test arguments, e.g. "--test pep8" or "--skip-test pylint"
#   PIBAKE_ECOSYSTEM_KEEP=1   keep the temporary tree (its path is printed)
#
# ansible-test keeps its per-test virtual environments (pinned by ansible-test itself, so nothing of them goes into
# requirements.txt) in .cache/ecosystem-home/.ansible/test/venv; the first run creates them (a few minutes), later
# runs reuse them. See docs/reference/ecosystem-checks.md.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
BIN=$REPO/.venv/bin
CHECKS=${PIBAKE_ECOSYSTEM_CHECKS:-"docs sanity"}
SANITY_ARGS=${PIBAKE_SANITY_ARGS:-}
TEST_HOME=$REPO/.cache/ecosystem-home
# Folders that are repository tooling rather than collection content: they are not shipped (galaxy.yml
# build_ignore) and the lint/unit/integration stages check them. ansible-test sanity does not look at them.
SANITY_EXCLUDE=(bench/ tools/ molecule/ pibake_cli/ tests/integration/ tests/support/ tests/contracts/ tests/faults/
                tests/unit/cli/ tests/unit/tools/)

say() { printf '%s\n' "ecosystem: $*"; }
die() { printf '%s\n' "ecosystem: $*" >&2; exit 1; }

# ------------------------------------------------------------------ prerequisites (one sentence each)
[ -x "$BIN/ansible-test" ] || die "no $BIN/ansible-test; run 'make venv' first."
[ -f galaxy.yml ] || die "run from the collection checkout (galaxy.yml not found in $REPO)."
command -v git >/dev/null || die "git is missing; install it (apt-get install git)."
export PATH="$BIN:$PATH"
unset ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS
CORE=$("$BIN/python" -c 'import ansible.release as r; print(".".join(r.__version__.split(".")[:2]))')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pibake-ecosystem.XXXXXX") || die "cannot create a temporary folder."
cleanup() {
  if [ "${PIBAKE_ECOSYSTEM_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ the collection copy
TREE=$WORK/ansible_collections/pibake/image
mkdir -p "$TREE"
# Tracked files that were deleted in the work tree are skipped; symlinks are copied as links.
git ls-files -co --exclude-standard -z |
  while IFS= read -r -d '' f; do
    if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
  done |
  xargs -0 -r cp -P --parents -t "$TREE" || die "copying the collection into $TREE failed."
say "collection copied to $TREE ($(find "$TREE" -type f | wc -l) files)"

declare -A result
failed=()

# ------------------------------------------------------------------ docs: build, install, ansible-doc
check_docs() {
  local dist=$WORK/dist colls=$WORK/installed cfg=$WORK/empty-ansible.cfg tarball
  mkdir -p "$dist" "$colls"
  : > "$cfg"
  say "docs: ansible-galaxy collection build"
  ansible-galaxy collection build "$TREE" --output-path "$dist" || { say "docs: the collection does not build"; return 1; }
  tarball=$(find "$dist" -maxdepth 1 -name "pibake-image-*.tar.gz" | head -n1)
  [ -n "$tarball" ] || { say "docs: the build wrote no pibake-image-*.tar.gz"; return 1; }
  say "docs: built $(basename "$tarball") ($(du -h "$tarball" | cut -f1), $(tar -tzf "$tarball" | grep -vc '/$') files)"
  # From here on only the installed copy may be visible: no ansible.cfg of this checkout (and its link to the
  # checkout on collections_path), no collections on sys.path.
  isolated() {
    (cd "$WORK" && ANSIBLE_CONFIG=$cfg ANSIBLE_COLLECTIONS_PATH=$colls ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false \
      ANSIBLE_NOCOLOR=1 "$@")
  }
  say "docs: ansible-galaxy collection install into $colls"
  isolated ansible-galaxy collection install --offline -p "$colls" "$tarball" || { say "docs: the artifact does not install"; return 1; }
  [ -f "$colls/ansible_collections/pibake/image/MANIFEST.json" ] || { say "docs: the install left no MANIFEST.json in $colls"; return 1; }
  isolated "$BIN/python" - "$TREE" "$colls" <<'PY'
import json
import os
import subprocess
import sys

tree, colls = sys.argv[1], sys.argv[2]
installed = os.path.join(colls, "ansible_collections", "pibake", "image")
ns = "pibake.image"
problems = []
# plugins/<dir> -> ansible-doc type; module_utils, doc_fragments, plugin_utils hold no documented plugins and
# action plugins are documented by the module of the same name.
TYPES = {"modules": "module", "connection": "connection", "callback": "callback", "filter": "filter",
         "test": "test", "lookup": "lookup", "inventory": "inventory", "become": "become", "cache": "cache",
         "vars": "vars", "strategy": "strategy", "shell": "shell", "cliconf": "cliconf", "httpapi": "httpapi",
         "netconf": "netconf", "keyword": "keyword"}
SKIP = {"module_utils", "doc_fragments", "plugin_utils", "action", "__pycache__"}


def names_in(folder, ext):
    return sorted(os.path.splitext(f)[0] for f in os.listdir(folder)
                  if f.endswith(ext) and not f.startswith("_") and f != "__init__.py")


def ansible_doc(args):
    proc = subprocess.run(["ansible-doc", *args], capture_output=True, text=True, check=False)
    noise = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, proc.stdout, noise


expected = {}
plugins = os.path.join(tree, "plugins")
for sub in sorted(os.listdir(plugins)) if os.path.isdir(plugins) else []:
    folder = os.path.join(plugins, sub)
    if sub in SKIP or not os.path.isdir(folder):
        continue
    if sub not in TYPES:
        problems.append(f"plugins/{sub}/: unknown plugin folder, ansible-doc cannot check it")
        continue
    kind = TYPES[sub]
    if kind in ("filter", "test"):
        # Jinja2 plugins are documented by YAML sidecar files, one per filter/test name; the listing adds any name
        # defined in Python without a sidecar so that it is caught as undocumented.
        found = set(names_in(folder, ".yml")) | set(names_in(folder, ".yaml"))
        rc, out, err = ansible_doc(["-t", kind, "-l", ns, "--json"])
        if rc == 0:
            found |= {name.split(".", 2)[-1] for name in json.loads(out or "{}")}
        else:
            problems.append(f"ansible-doc -t {kind} -l {ns} failed: {' '.join(err)[-500:]}")
    else:
        found = set(names_in(folder, ".py"))
    expected.setdefault(kind, set()).update(found)

action_dir = os.path.join(plugins, "action")
if os.path.isdir(action_dir):
    for name in names_in(action_dir, ".py"):
        if name not in expected.get("module", set()):
            problems.append(f"plugins/action/{name}.py: action plugin without a module of the same name documenting it")
        expected.setdefault("module", set()).add(name)

roles_dir = os.path.join(tree, "roles")
roles = sorted(r for r in os.listdir(roles_dir) if os.path.isdir(os.path.join(roles_dir, r))) if os.path.isdir(roles_dir) else []
for role in roles:
    specs = [os.path.join(roles_dir, role, "meta", f) for f in ("argument_specs.yml", "argument_specs.yaml")]
    if any(os.path.exists(p) for p in specs):
        expected.setdefault("role", set()).add(role)
    else:
        problems.append(f"roles/{role}: no meta/argument_specs.yml, so ansible-doc -t role has nothing to show")

def doc_calls(kind, names, text):
    """ansible-doc for several names at once; when that fails, one by one to name the culprit."""
    base = ["-t", kind] if text else ["-t", kind, "--json"]
    rc, out, err = ansible_doc([*base, *[f"{ns}.{n}" for n in names]])
    if rc == 0 and not err and out.strip():
        return {None: out}
    if len(names) == 1:
        what = "(text)" if text else ""
        problems.append(f"ansible-doc -t {kind} {ns}.{names[0]} {what}: rc={rc} {' | '.join(err)[-800:]}".replace("  ", " "))
        return {}
    outputs = {}
    for name in names:
        outputs.update({name: o for o in doc_calls(kind, [name], text).values()})
    return outputs


checked = 0
for kind, names in sorted(expected.items()):
    # What the installed copy offers must be what the source has: a plugin dropped by build_ignore, or one that
    # fails to load, shows up here.
    rc, out, err = ansible_doc(["-t", kind, "-l", ns, "--json"])
    if rc != 0:
        problems.append(f"ansible-doc -t {kind} -l {ns} failed: {' '.join(err)[-500:]}")
        listed = set()
    else:
        listed = {name.split(".", 2)[-1] for name in json.loads(out or "{}")}
    for name in sorted(names - listed):
        problems.append(f"{kind} {ns}.{name}: in the source tree but not listed by ansible-doc from the installed copy")
    names = sorted(names)
    checked += len(names)
    docs = {}
    for out in doc_calls(kind, names, text=False).values():
        docs.update(json.loads(out))
    for name in names:
        fqcn = f"{ns}.{name}"
        if fqcn not in docs:
            continue  # reported by doc_calls
        data = docs[fqcn] or {}
        doc = data.get("doc") or {}
        if kind == "role":
            if not data.get("entry_points"):
                problems.append(f"ansible-doc -t role {fqcn}: no entry points documented")
            origin = data.get("path") or ""
        else:
            if not doc.get("short_description"):
                problems.append(f"ansible-doc -t {kind} {fqcn}: no short_description in its documentation")
            origin = doc.get("filename") or ""
        if not origin:
            problems.append(f"ansible-doc -t {kind} {fqcn}: its JSON does not say which file it came from")
        elif not os.path.realpath(origin).startswith(os.path.realpath(colls) + os.sep):
            problems.append(f"ansible-doc -t {kind} {fqcn}: came from {origin}, not from the installed copy")
    # The text rendering parses the markup (O(), V(), C(), L() ...) which --json does not.
    doc_calls(kind, names, text=True)

print(f"ecosystem: docs: {checked} plugin(s) and role(s) documented from {installed}: "
      + ", ".join(f"{len(v)} {k}" for k, v in sorted(expected.items())))
for line in problems:
    print(f"ecosystem: docs: FINDING {line}")
sys.exit(1 if problems else 0)
PY
}

# ------------------------------------------------------------------ sanity: ansible-test sanity
write_get_pip_stand_in() {
  # ansible-test bootstraps pip into each sanity virtualenv with a get-pip script downloaded from
  # ci-files.testing.ansible.com, which is unreachable here. This stand-in, put where ansible-test caches that
  # script, does the same job with what is reachable: pip from the interpreter's ensurepip, then the pip version
  # ansible-test asks for (and anything else it names) from PyPI through the host's pip configuration.
  local version=$1 path
  path=$TEST_HOME/.ansible/test/cache/get_pip_${version//./_}.py
  mkdir -p "$(dirname "$path")"
  cat > "$path" <<'PY'
# pibake ecosystem-checks stand-in for get-pip.py (written by tools/ecosystem-checks.sh)
import ensurepip
import os
import subprocess
import sys

env = dict(os.environ)  # ensurepip sets PIP_CONFIG_FILE=/dev/null in os.environ; the installs below need the host's
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ensurepip.bootstrap(upgrade=True)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-input", *args], env=env)
if "--no-setuptools" in sys.argv[1:]:
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], env=env)
if "--no-wheel" in sys.argv[1:]:
    subprocess.call([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "wheel"], env=env)
PY
}

check_sanity() {
  local pip_version python log=$WORK/sanity.log rc ignore
  command -v shellcheck >/dev/null || { say "sanity: shellcheck is missing, so its sanity test would be skipped; apt-get install shellcheck"; return 1; }
  python=$("$BIN/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  pip_version=$("$BIN/python" - <<'PY'
import sys
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="%d.%d" % sys.version_info[:2]))["pip"])
PY
  ) || { say "sanity: cannot tell which pip version ansible-test wants"; return 1; }
  write_get_pip_stand_in "$pip_version"
  ignore=tests/sanity/ignore-$CORE.txt
  [ -f "$TREE/$ignore" ] || say "sanity: no $ignore (every finding counts)"
  local excludes=()
  for path in "${SANITY_EXCLUDE[@]}"; do
    [ -e "$TREE/$path" ] && excludes+=(--exclude "$path")
  done
  say "sanity: ansible-test sanity --python $python --local (ansible-test home $TEST_HOME)"
  # shellcheck disable=SC2086  # SANITY_ARGS is a list of words on purpose
  (cd "$TREE" && HOME=$TEST_HOME ansible-test sanity --python "$python" --local --color no \
     "${excludes[@]}" $SANITY_ARGS) 2>&1 | tee "$log" |
    grep --line-buffered -v -E '^(Collecting|Downloading|  Downloading|Using cached|Processing|Installing collected|Successfully|  Attempting|    Found existing|    Uninstalling|      Successfully|Looking in links|Requirement already)'
  rc=${PIPESTATUS[0]}
  if grep -q 'missing-gplv3-license' "$log"; then
    say "sanity: pibake.image is Apache-2.0; for each missing-gplv3-license above add to $ignore the line"
    grep -o 'plugins/[^:]*\.py:0:0: missing-gplv3-license' "$log" | sort -u |
      sed 's/:0:0: missing-gplv3-license$/ validate-modules:missing-gplv3-license  # pibake.image is Apache-2.0 (galaxy.yml), so the GPLv3 header check does not apply/' |
      sed 's/^/    /'
  fi
  if grep -q -E "^(ERROR|FATAL):" "$log" || [ "$rc" != 0 ]; then
    return 1
  fi
  grep -q 'WARNING: Required program' "$log" && { say "sanity: a sanity test was skipped for a missing program (see above)"; return 1; }
  return 0
}

for check in $CHECKS; do
  case $check in
    docs|sanity) ;;
    *) die "unknown check '$check'; PIBAKE_ECOSYSTEM_CHECKS takes: docs sanity" ;;
  esac
  say "=== $check"
  start=$(date +%s)
  if "check_$check"; then result[$check]=passed; else result[$check]=FAILED; failed+=("$check"); fi
  say "=== $check ${result[$check]} in $(( $(date +%s) - start )) s"
done

say "summary"
for check in $CHECKS; do printf '  %-8s %s\n' "$check" "${result[$check]}"; done
if [ "${#failed[@]}" -gt 0 ]; then
  say "FAILED: ${failed[*]} (findings above)"
  exit 1
fi
say "all checks passed"
