"""Random ids: 32 hex digits, never repeated, in a forked child too."""

from __future__ import annotations

import os
import re
import threading

import pytest

from kernel import ids

pytestmark = pytest.mark.unit

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_128_bit_hex_and_do_not_repeat_across_blocks() -> None:
    many = [ids.random_id() for _ in range(2000)] + ids.random_ids(1000) + ids.random_ids(3)
    assert all(HEX32.fullmatch(i) for i in many)
    assert len(set(many)) == len(many)  # 3,003 ids span more than ten 256-id blocks
    assert ids.random_ids(0) == []


def test_threads_never_get_the_same_id() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def take(k: int) -> None:
        out[k] = [ids.random_id() for _ in range(3000)] + ids.random_ids(500)

    threads = [threading.Thread(target=take, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in out for i in chunk]
    assert len(set(every)) == len(every) == 4 * 3500


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    ids.random_id()  # the parent holds a block with unread ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(ids.random_ids(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = ids.random_ids(10)
    assert len(child) == 10 and not set(child) & set(parent)
