# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
#
# make build   installs what it needs, then builds the default image into deploy/
# make test    everything CI runs
SHELL := /bin/bash
.DEFAULT_GOAL := help

PROFILE ?= cubeos
VARIANT ?= dev
VERSION ?= dev
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
LINK    := .ansible/collections/ansible_collections/pibake/image
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help deps venv setup build test lint docs unit integration molecule faults e2e boot device clean distclean

help:
	@echo "make setup    install the host packages (bindep.txt) and the Python tools into .venv/; builds nothing"
	@echo "make build    make setup, then build the default image (PROFILE=$(PROFILE) VARIANT=$(VARIANT) VERSION=$(VERSION))"
	@echo "make test     run every check CI runs (stages: lint unit integration molecule faults ecosystem e2e boot)"
	@echo "make boot     the boot stage only: boot the e2e test builds in QEMU and check them over SSH"
	@echo "make device   apply the roles over SSH to the booted CubeOS test VM, twice (~30 min; not part of make test)"
	@echo "make clean    tear down anything a killed build left attached or mounted"
	@echo "The tools land in .venv/bin: run 'source .venv/bin/activate' or prefix commands with .venv/bin/"

deps:
	@tools/install-deps.sh

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -r requirements.txt
	@$(BIN)/pip install -q --no-deps -e . && rm -rf pibake_cli.egg-info
	@touch $@

$(LINK):
	@mkdir -p $(dir $(LINK))
	@ln -sfn ../../../.. $(LINK)

venv: $(VENV)/.installed $(LINK)

setup: deps venv

build: setup
	$(BIN)/ansible-playbook playbooks/build-image.yml -i inventories/$(PROFILE) -e variant=$(VARIANT) -e version=$(VERSION)

lint: venv
	$(BIN)/ansible-lint --profile production
	$(BIN)/ansible-playbook --syntax-check -i inventories/cubeos playbooks/*.yml
	$(BIN)/python tools/gen_role_docs.py --check roles/*
	$(BIN)/python tools/gen_variables_doc.py --check
	$(BIN)/python tools/gen_troubleshooting.py --check

docs: venv
	$(BIN)/python tools/gen_variables_doc.py
	$(BIN)/python tools/gen_troubleshooting.py

# One stage of `make test` each (tools/run-tests.sh has what each runs).
unit: venv
	PIBAKE_TEST_STAGES=unit tools/run-tests.sh

integration molecule faults e2e boot device: setup
	PIBAKE_TEST_STAGES=$@ tools/run-tests.sh

test: setup
	tools/run-tests.sh

clean: venv
	$(BIN)/ansible-playbook playbooks/clean.yml

distclean: clean
	rm -rf $(VENV) .ansible build
