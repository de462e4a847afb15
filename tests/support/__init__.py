# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Helpers shared by the test suites: a real local OCI registry, small arm64 test images, skopeo wrappers.

Use them from a test module with ``pytest_plugins = ["tests.support.fixtures"]`` (or import the classes).
"""
