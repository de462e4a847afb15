# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Helpers shared by the test suites: a real local OCI registry, small arm64 test images, skopeo wrappers.

Import the fixtures in a test module (``from tests.support.fixtures import registry``) or the classes.
"""
