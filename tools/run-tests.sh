#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
# Everything CI runs (`make test`). Stages run in order; the first failing stage stops the run.
# PIBAKE_TEST_STAGES limits the stages, e.g. PIBAKE_TEST_STAGES="lint unit".
#
# The e2e stage (the arm64 builds of both profiles, about half of the whole run) and the boot stage (QEMU boots of
# those builds) are the long pole and mostly single-threaded under emulation: when other stages are selected too,
# they start first in the background, one after the other, and the run waits for each in its place, so the second
# core is not idle. PIBAKE_TEST_PARALLEL=0 runs them in line. The device stage (configure-device.yml over SSH to a
# booted VM, twice; ~30 min under TCG) is not a default stage: `make device`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg" PYTHONDONTWRITEBYTECODE=1
STAGES=${PIBAKE_TEST_STAGES:-"lint unit integration molecule faults ecosystem e2e boot"}
PARALLEL=${PIBAKE_TEST_PARALLEL:-1}
OUT=tests/output
declare -A took
failed=""

pytest_stage() {  # pytest exits 5 when a selection is empty; that is a broken stage here, not a pass
  pytest -q -p no:cacheprovider "$@"
}

stage_lint() {
  ansible-lint --profile production -q || return 1
  for playbook in playbooks/*.yml; do ansible-playbook --syntax-check -i inventories/cubeos "$playbook" >/dev/null || return 1; done
  python tools/gen_role_docs.py --check roles/* && python tools/gen_variables_doc.py --check && python tools/gen_troubleshooting.py --check
}
stage_unit() { pytest_stage tests/unit; }
stage_integration() {
  pytest_stage -m "(integration or registry or flash) and not e2e and not boot and not faults" tests/integration tests/contracts
}
stage_faults() { pytest_stage -m faults tests/faults; }
stage_molecule() {
  local scenario
  for scenario in $(ls -d molecule/*/ | xargs -n1 basename | grep -v '^_'); do
    echo "--- molecule test -s $scenario"
    local start
    start=$(date +%s)
    molecule test -s "$scenario" || return 1
    echo "--- molecule test -s $scenario took $(( $(date +%s) - start )) s"
  done
}
# The arm64 builds of both profiles from the Debian base, finalized, and the checks on their outputs.
stage_e2e() { pytest_stage --basetemp=/tmp/pibake-e2e-pytest -m e2e tests/integration; }
# QEMU boots of the images the e2e stage built (reused from tests/output/e2e; built when missing).
stage_boot() {
  PIBAKE_E2E_REUSE=1 pytest_stage --basetemp=/tmp/pibake-boot-pytest -m "boot and not device" tests/integration
}
# The roles applied over SSH to a booted cubeos VM (device mode), twice.
stage_device() { PIBAKE_E2E_REUSE=1 pytest_stage --basetemp=/tmp/pibake-boot-pytest -m device tests/integration; }
stage_ecosystem() { tools/ecosystem-checks.sh; }

background=""  # the selected long stages, run one after the other in one background job
for stage in e2e boot; do [[ " $STAGES " == *" $stage "* ]] && background="$background $stage"; done

run_background() {  # each stage's log, exit code and seconds go to files; a failed stage skips the rest
  local stage start rc=0
  for stage in $background; do
    start=$(date +%s)
    if [ $rc = 0 ]; then "stage_$stage" >"$OUT/$stage-stage.log" 2>&1; rc=$?
    else echo "skipped: an earlier background stage failed" >"$OUT/$stage-stage.log"; fi
    echo $(( $(date +%s) - start )) >"$OUT/$stage-stage.seconds"
    echo $rc >"$OUT/$stage-stage.rc"
  done
}

run_stage() {
  local stage=$1 start
  start=$(date +%s)
  if [ -n "${background_pid:-}" ] && [[ " $background " == *" $stage "* ]]; then
    echo "(started in the background at the beginning; its output follows)"
    while [ ! -e "$OUT/$stage-stage.rc" ] && kill -0 "$background_pid" 2>/dev/null; do sleep 5; done
    cat "$OUT/$stage-stage.log" 2>/dev/null
    took[$stage]=$(cat "$OUT/$stage-stage.seconds" 2>/dev/null || echo "?")
    return "$(cat "$OUT/$stage-stage.rc" 2>/dev/null || echo 1)"
  fi
  "stage_$stage"; local rc=$?
  took[$stage]=$(( $(date +%s) - start ))
  return $rc
}

stop_background() {
  if [ -n "${background_pid:-}" ] && kill -0 "$background_pid" 2>/dev/null; then
    echo "=== stopping the background stages"
    kill -INT -- "-$background_pid" 2>/dev/null
    wait "$background_pid" 2>/dev/null
  fi
  background_pid=""
}

mkdir -p "$OUT"
if [ "$PARALLEL" = 1 ] && [ -n "$background" ] && [ "$(echo $STAGES | wc -w)" -gt "$(echo $background | wc -w)" ]; then
  for stage in $background; do rm -f "$OUT/$stage-stage".{rc,seconds,log}; done
  set -m  # its own process group, and SIGINT not ignored as it would be for a plain background job
  run_background &
  background_pid=$!
  set +m
  # Never leave the background builds or VMs running when this script stops early (Ctrl-C, a failed stage):
  # SIGINT lets pytest tear its fixtures down and the builds unwind.
  trap 'stop_background' EXIT
  echo "=== stages$background started in the background (logs: $OUT/<stage>-stage.log)"
fi

run_start=$(date +%s)
for stage in $STAGES; do
  echo "=== stage $stage"
  if ! run_stage "$stage"; then
    failed=$stage
  fi
  echo "=== stage $stage took ${took[$stage]} s"
  [ -n "$failed" ] && break
done

stop_background  # a stage failed before the e2e stage's turn
echo "=== make test summary"
for stage in $STAGES; do
  [ -n "${took[$stage]:-}" ] && printf '  %-12s %5s s\n' "$stage" "${took[$stage]}"
done
printf '  %-12s %5s s\n' "wall time" "$(( $(date +%s) - run_start ))"
# Nothing of ours may stay attached or mounted after the tests.
# A build stopped just now (Ctrl-C, a failed stage) is still being torn down by its guard: give it a moment.
for _ in $(seq 30); do
  leaks=$(losetup -a | grep -E '/(build|pytest-of-root|molecule|tests/output|pibake-e2e-pytest|pibake-boot-pytest)/' || true)
  [ -z "$leaks" ] && break
  sleep 2
done
if [ -n "$leaks" ]; then
  echo "make test: loop devices left attached:"; echo "$leaks"; failed=${failed:-leak-check}
fi
if [ -n "$failed" ]; then
  echo "make test: stage '$failed' failed"
  exit 1
fi
echo "make test: all stages passed"
