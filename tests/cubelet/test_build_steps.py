"""The step layer cache of E2B template definitions (services/cubelet/build_steps.py), on files:
keys chain, the longest cached prefix is taken, `force` stops it, a missing layer file is a miss,
eviction removes an entry with everything reading through its layer and never a running build's
chain, and the cubelet's own check of a definition names the step. The steps in a real build VM
are tests/e2e/test_e2e_template_sdk.py."""
from __future__ import annotations

import os
import time

import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as pb
from services.cubelet.build_steps import Entry, LayerCache, StepState, check_steps, plan, step_key

RUN = pb.BuildStep(type="RUN", args=["echo a"])
ENV = pb.BuildStep(type="ENV", args=["A", "1"])
RUN2 = pb.BuildStep(type="RUN", args=["echo b"])


def _layer(cache: LayerCache, name: str, size: int = 4096) -> str:
    (cache.root / name).write_bytes(os.urandom(size))
    return name


@pytest.fixture
def cache(tmp_path) -> LayerCache:
    c = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    c.ensure()
    return c


def _cached_run(cache: LayerCache, base: Entry, steps) -> list[Entry]:
    """Entries as a build of ``steps`` from ``base`` leaves them (one cut per RUN)."""
    out, key, layer, state = [], base.key, base.layer, base.state
    for s in steps:
        key = step_key(key, s)
        if s.type == "RUN":
            layer = _layer(cache, f"{key}.qcow2")
        e = Entry(key, layer, state, (*base.chain, layer) if layer != base.layer else base.chain)
        cache.put(e)
        out.append(e)
    return out


def test_the_longest_cached_prefix_is_taken_and_force_stops_it(cache):
    base = Entry("base-k", _layer(cache, "base-k.img"), StepState(), ("base-k.img",))
    cache.put(base)
    assert plan(cache, base, [RUN, ENV, RUN2]).first == 0
    done = _cached_run(cache, base, [RUN, ENV])
    p = plan(cache, base, [RUN, ENV, RUN2])
    assert p.first == 2 and p.start == cache.get(done[1].key) and p.keys[:2] == tuple(e.key for e in done)
    # The same steps after another first step: nothing cached (keys chain).
    assert plan(cache, base, [RUN2, ENV]).first == 0
    # force on the second step: only the first is taken.
    forced = pb.BuildStep(type="ENV", args=["A", "1"], force=True)
    assert plan(cache, base, [RUN, forced, RUN2]).first == 1
    # A layer file gone: its entry is a miss.
    (cache.root / done[0].layer).unlink()
    assert plan(cache, base, [RUN, ENV]).first == 0


def test_eviction_takes_what_reads_through_a_layer_and_spares_a_running_chain(cache):
    base = Entry("base-k", _layer(cache, "base-k.img"), StepState(), ("base-k.img",))
    cache.put(base)
    first, second = _cached_run(cache, base, [RUN, RUN2])
    old = time.time() - 100
    os.utime(cache.root / "base-k.json", (old, old))  # the least recently used
    cache.max_bytes = 0
    removed = cache.evict(keep={"base-k.img"})
    # base's layer is kept (a build reads it); the entries on it went from the oldest on.
    assert (cache.root / "base-k.img").exists()
    assert set(removed) >= {first.key, second.key}
    assert not (cache.root / first.layer).exists() and not (cache.root / second.layer).exists()
    cache.evict()
    assert not any(cache.root.glob("*.json")) and not (cache.root / "base-k.img").exists()


@pytest.mark.parametrize("step,words", [
    (pb.BuildStep(type="FROB"), "unknown instruction"),
    (pb.BuildStep(type="RUN"), "RUN takes"),
    (pb.BuildStep(type="COPY", args=["a", "/a"]), "COPY takes"),
    (pb.BuildStep(type="COPY", args=["a", "/a"], files_hash="0" * 63), "COPY takes"),
    (pb.BuildStep(type="ENV", args=["A"]), "name/value pairs"),
    (pb.BuildStep(type="WORKDIR", args=[""]), "WORKDIR takes one"),
    (pb.BuildStep(type="USER", args=["Bad User"]), "invalid user name"),
    (pb.BuildStep(type="RUN", args=["true", "root;rm"]), "invalid user name"),
])
def test_bad_steps_are_refused_naming_the_step(step, words):
    with pytest.raises(ValueError, match=words) as e:
        check_steps([RUN, step])
    assert str(e.value).startswith("step 2")
