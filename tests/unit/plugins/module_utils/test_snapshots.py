# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The snapshot cache's keys and store: chaining, deepest match, atomic commits, sweeping and LRU eviction."""

import json
import os
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _fatstage, _snapshots

MIB = 1 << 20


def roles(*changes):
    described = [{"name": f"r{n}", "tree": f"tree{n}", "vars": {"v": n}} for n in range(3)]
    for index, field, value in changes:
        described[index][field] = value
    return described


def keys_of(*changes, base="b", plugins="p"):
    return _snapshots.chain_keys(_snapshots.base_key(base, 0), roles(*changes), plugins)


def test_keys_are_stable_and_distinct():
    keys = keys_of()
    assert keys == keys_of() and len(set(keys)) == 3 and all(len(key) == 64 for key in keys)


@pytest.mark.parametrize("field, value", [("vars", {"v": 99}), ("tree", "changed"), ("name", "other")])
def test_a_changed_role_changes_its_key_and_every_later_one_only(field, value):
    before, after = keys_of(), keys_of((1, field, value))
    assert after[0] == before[0] and after[1] != before[1] and after[2] != before[2]


def test_base_image_grow_and_plugins_change_every_key():
    before = keys_of()
    for after in (keys_of(base="other"), keys_of(plugins="other"),
                  _snapshots.chain_keys(_snapshots.base_key("b", MIB), roles(), "p")):
        assert all(a != b for a, b in zip(after, before))


def test_a_role_whose_variables_are_unknown_is_not_cached_nor_any_later_one():
    keys = keys_of((1, "vars", None))
    assert keys[0] == keys_of()[0] and keys[1:] == [None, None]


def test_variable_order_does_not_matter():
    assert keys_of((0, "vars", {"a": 1, "b": 2})) == keys_of((0, "vars", {"b": 2, "a": 1}))


def save(store, key, size=MIB, role="r"):
    partial = store.partial(key)
    with open(partial, "wb") as handle:
        handle.write(os.urandom(size))
    return store.commit(key, partial, {"role": role})


def test_commit_makes_a_snapshot_count_and_leaves_no_partial(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    record = save(store, "k1", role="base")
    assert store.load("k1") == record and record["role"] == "base" and record["size"] == MIB
    assert sorted(os.listdir(store.path)) == [".lock", "k1.img", "k1.json"]


def test_an_image_without_record_or_of_the_wrong_size_does_not_count(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    os.makedirs(store.path)
    (tmp_path / "snapshots" / "lone.img").write_bytes(b"x" * 10)
    save(store, "cut")
    with open(store.image("cut"), "r+b") as handle:
        handle.truncate(100)
    assert store.load("lone") is None and store.load("cut") is None and store.entries() == []


def test_plan_starts_from_the_deepest_matching_snapshot(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    save(store, "k0")
    save(store, "k2")  # a deeper one may exist without the middle one (evicted)
    plan = _snapshots.plan(store, ["a", "b", "c", "d"], ["k0", "k1", "k2", "k3"])
    assert plan["restore"] == store.image("k2") and plan["restore_key"] == "k2"
    assert plan["restored"] == ["a", "b", "c"] and plan["remaining"] == [{"name": "d", "key": "k3"}]


def test_plan_without_any_match_or_keys_runs_every_role(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    save(store, "k0")
    plan = _snapshots.plan(store, ["a", "b"], [None, None])
    assert plan["restore"] == "" and plan["restored"] == []
    assert plan["remaining"] == [{"name": "a", "key": ""}, {"name": "b", "key": ""}]


def test_a_plan_with_the_cache_off_or_empty_writes_nothing(tmp_path):
    store = _snapshots.Store(str(tmp_path / "cache"))
    assert _snapshots.plan(store, ["a"], [None])["remaining"] == [{"name": "a", "key": ""}]
    assert _snapshots.plan(store, ["a"], ["k0"])["restored"] == []
    assert not (tmp_path / "cache").exists()


def test_a_lookup_marks_the_snapshot_used(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    save(store, "old")
    save(store, "new")
    time.sleep(0.01)
    store.deepest(["old"])
    assert [record["key"] for record in store.entries()] == ["new", "old"]


def test_a_check_mode_plan_finds_the_snapshot_without_marking_it_used(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    save(store, "old")
    save(store, "new")
    before = {record["key"]: record["last_used"] for record in store.entries()}
    time.sleep(0.01)
    plan = _snapshots.plan(store, ["a"], ["old"], mark_used=False)
    assert plan["restored"] == ["a"]
    assert {record["key"]: record["last_used"] for record in store.entries()} == before


def test_eviction_removes_least_recently_used_until_under_the_limit(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    for key in ("a", "b", "c", "d"):
        save(store, key)
        time.sleep(0.01)
    store.touch("a")
    removed = store.evict(int(2.5 * MIB), keep=["d"])
    assert removed == ["b", "c"] and store.total_bytes() <= 2.5 * MIB
    assert sorted(record["key"] for record in store.entries()) == ["a", "d"]


def test_the_snapshot_to_keep_goes_last_even_when_it_alone_is_too_big(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    save(store, "a")
    save(store, "big", size=3 * MIB)
    assert store.evict(2 * MIB, keep=["big"]) == ["big"]
    store.touch("a")
    assert store.evict(0) == ["a"] and store.total_bytes() == 0


def test_sweep_removes_leftovers_of_killed_builds_only(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    os.makedirs(store.path)
    folder = tmp_path / "snapshots"
    (folder / "dead.img.partial-999999999").write_bytes(b"x")
    mine = folder / f"live.img.partial-{os.getpid()}"
    mine.write_bytes(b"x")
    for name in ("orphan.img", "k.json.tmp.1"):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (time.time() - 3600,) * 2)
    (folder / "fresh.img").write_bytes(b"x")  # a commit between its two renames
    save(store, "kept")
    assert sorted(store.sweep()) == ["dead.img.partial-999999999", "k.json.tmp.1", "orphan.img"]
    assert sorted(os.listdir(folder)) == [".lock", "fresh.img", "kept.img", "kept.json", mine.name]


def test_records_are_json_with_what_the_log_needs(tmp_path):
    store = _snapshots.Store(str(tmp_path))
    save(store, "k", role="pibake.image.base")
    record = json.loads((tmp_path / "snapshots" / "k.json").read_text())
    assert {"key", "role", "size", "created", "last_used", "version"} <= set(record)


def test_tree_digest_ignores_bytecode_but_sees_content_and_names(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "main.yml").write_text("- debug: {}\n")
    ignore = ("__pycache__", ".pyc")
    first = _fatstage.tree_digest(str(tmp_path), ignore)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (tmp_path / "y.pyc").write_bytes(b"\0")
    assert _fatstage.tree_digest(str(tmp_path), ignore) == first
    (tmp_path / "tasks" / "main.yml").write_text("- debug: {}\n# comment\n")
    assert _fatstage.tree_digest(str(tmp_path), ignore) != first
