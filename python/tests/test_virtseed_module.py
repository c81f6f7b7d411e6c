"""
virtseed.proven, what reactors call: true only for an event whose fields are exactly the ones
the sidecar signed for its tag. Events are signed here as the sidecar signs them
(src/bus/proof.rs); forgery.rs runs the module in a real reactor.
"""

import json

import pytest

from saltext.virtseed.modules import virtseed as mod
from test_virtseed_proof import keys, signed  # noqa: F401 (the fixture)

TAG = "salt/cloud/web1/created"
DATA = {"name": "web1", "event": "created instance", "profile": "web"}


@pytest.fixture()
def opts(keys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(mod, "__opts__", keys["opts"], raising=False)
    monkeypatch.setattr(mod.vc, "all_sidecars", lambda opts: ["virtseed"])
    return keys


def event(priv, tag=TAG, data=DATA):
    return dict(data, virtseed_proof=signed(priv, {"kind": "event", "tag": tag, "data": data}))


def test_the_sidecars_event_is_proven_with_salts_stamp(opts):
    assert mod.proven(TAG, dict(event(opts["virtseed"]), _stamp="2026-12-06T00:00:00"))


def test_fields_beside_or_instead_of_the_signed_ones_are_not(opts):
    ev = event(opts["virtseed"])
    # `_minion_event`'s tag/data form fires the whole load: the sender's fields beside.
    assert not mod.proven(TAG, dict(ev, cmd="_minion_event", id="mallory", tag=TAG, data={}))
    assert not mod.proven(TAG, dict(ev, profile="evil"))
    less = dict(ev)
    del less["profile"]
    assert not mod.proven(TAG, less)


def test_another_key_another_tag_or_no_proof_is_not(opts):
    assert not mod.proven(TAG, event(opts["mallory"]))
    assert not mod.proven("salt/cloud/web2/created", event(opts["virtseed"]))
    assert not mod.proven(TAG, dict(DATA))
    assert not mod.proven(TAG, "not a map")
    assert not mod.proven(TAG, json.loads(json.dumps(event(opts["virtseed"])))
                          | {"virtseed_proof": {"alg": "x"}})


def test_any_sidecar_of_a_group_proves_its_own_events(opts):
    # A sidecar beside each master (`virtseed_sidecar: [a, b]`): an event is the one its
    # signer's key opens, whichever member it is.
    assert mod.proven(TAG, event(opts["virtseed"]), sidecar="elsewhere,virtseed")
    assert not mod.proven(TAG, event(opts["virtseed"]), sidecar="elsewhere")
