"""
virtseed_proof: what the front ends believe. Proofs are made here as the sidecar makes them
(src/bus/proof.rs: PKCS#1 v1.5 SHA-224 over the JSON body, with the sidecar's key); the
integration tests check the sidecar's own against real masters.
"""

import base64
import json
import os

import pytest
import salt.crypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from saltext.virtseed.utils import virtseed_proof as vp

JID = "20261206000000000001"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    paths = {}
    for who in ("virtseed", "mallory"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        priv = d / f"{who}.pem"
        priv.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        paths[who] = str(priv)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (d / "minions").mkdir(exist_ok=True)
        if who == "virtseed":
            (d / "minions" / "virtseed").write_bytes(pub)
    return {"opts": {"pki_dir": str(d)}, **paths}


def signed(priv, body):
    text = json.dumps(body)
    sig = salt.crypt.sign_message(priv, text.encode(), algorithm=vp.ALG)
    return {"alg": vp.ALG, "body": text, "sig": base64.b64encode(sig).decode()}


def a_return(priv, **over):
    body = {"kind": "return", "id": "virtseed", "jid": JID, "fun": "cloud.profile", "success": True, "retcode": 0, "return": {"web1": {"state": "running"}}}
    body.update(over)
    return dict(signed(priv, body), virtseed_signed="return")


def test_the_sidecars_signed_answer_opens(keys):
    body = vp.open_return(keys["opts"], "virtseed", JID, "cloud.profile", a_return(keys["virtseed"]))
    assert body["return"] == {"web1": {"state": "running"}}


@pytest.mark.parametrize(
    "ret, why",
    [
        ({"web1": {"state": "running"}}, "not a signed answer"),
        (True, "not a signed answer"),
        ("a_return(mallory)", "does not verify"),
        ("a_return(virtseed, jid='20261206000000000002')", "another job"),
        ("a_return(virtseed, fun='cloud.destroy')", "another job"),
        ("a_return(virtseed, id='mallory')", "something else"),
        ("a_return(virtseed, kind='event')", "something else"),
    ],
)
def test_what_a_minion_can_send_does_not_open(keys, ret, why):
    if isinstance(ret, str):
        ret = eval(ret, {"a_return": a_return, "mallory": keys["mallory"], "virtseed": keys["virtseed"]})  # pylint: disable=eval-used
    with pytest.raises(vp.Unproven, match=why):
        vp.open_return(keys["opts"], "virtseed", JID, "cloud.profile", ret)


def test_a_changed_body_or_a_bad_signature_does_not_open(keys):
    ret = a_return(keys["virtseed"])
    tampered = dict(ret, body=ret["body"].replace("running", "stopped"))
    with pytest.raises(vp.Unproven, match="does not verify"):
        vp.open_return(keys["opts"], "virtseed", JID, "cloud.profile", tampered)
    with pytest.raises(vp.Unproven, match="not base64"):
        vp.open_return(keys["opts"], "virtseed", JID, "cloud.profile", dict(ret, sig="%%%"))
    with pytest.raises(vp.Unproven, match="PKCS1v15-SHA1"):
        vp.open_return(keys["opts"], "virtseed", JID, "cloud.profile", dict(ret, alg="PKCS1v15-SHA1"))


def test_without_the_sidecars_accepted_key_nothing_opens(keys):
    with pytest.raises(vp.Unproven, match="no accepted key for 'other'"):
        vp.open_return(keys["opts"], "other", JID, "cloud.profile", a_return(keys["virtseed"], id="other"))


def test_events_open_for_their_own_tag_only(keys):
    data = {"name": "web1", "elapsed_ms": 5}
    ev = dict(data, virtseed_proof=signed(keys["virtseed"], {"kind": "event", "tag": "salt/cloud/web1/started", "data": data}))
    assert vp.open_event(keys["opts"], "virtseed", "salt/cloud/web1/started", ev) == data
    with pytest.raises(vp.Unproven, match="another event"):
        vp.open_event(keys["opts"], "virtseed", "salt/cloud/web1/created", ev)
    with pytest.raises(vp.Unproven, match="no proof"):
        vp.open_event(keys["opts"], "virtseed", "salt/cloud/web1/started", data)


def test_the_sender_is_named_only_where_salt_says_it():
    assert vp.sender({"cmd": "_minion_event", "id": "mallory", "tag": "x"}) == "minion 'mallory'"
    assert vp.sender({"id": "mallory"}) == "an unknown sender"
    assert vp.sender(None) == "an unknown sender"


def test_the_readiness_check_matches_the_sidecars():
    # The same literal and the same answer as src/cloud/ready.rs's unit tests.
    assert vp.challenge("abcd") == {
        "string": '{{ salt["hashutil.hmac_compute"]("abcd", salt["file.read"](salt["config.get"]("pki_dir") ~ "/minion.pem") | trim) }}',
        "default_renderer": "jinja",
    }
    pem = "-----BEGIN RSA PRIVATE KEY-----\nAAA\n-----END RSA PRIVATE KEY-----\n"
    assert vp.expected(pem, "0123abcd") == "dc2a52145de13cd38d691f85e5951c42b3ff3175794980496afa7327390ce57e"


def test_a_cluster_keeps_its_keys_in_the_cluster_pki_dir():
    assert vp.key_path({"pki_dir": "/p", "cluster_id": "c", "cluster_pki_dir": "/c"}, "v") == os.path.join("/c", "minions", "v")
    assert vp.key_path({"pki_dir": "/p"}, "v") == os.path.join("/p", "minions", "v")


def test_a_master_of_masters_checks_with_its_copy_of_the_sidecars_key(keys, tmp_path):
    # The top master accepted no key for the sidecar (it runs beside a syndic node's master):
    # nothing opens until the operator puts a copy in pki_dir/virtseed_sidecars/<id>.
    opts = {"pki_dir": str(tmp_path)}
    ret = a_return(keys["virtseed"])
    with pytest.raises(vp.Unproven, match="no accepted key for 'virtseed'"):
        vp.open_return(opts, "virtseed", JID, "cloud.profile", ret)
    assert "virtseed_sidecars/virtseed" in vp.no_key(opts, "virtseed")
    copy = tmp_path / "virtseed_sidecars" / "virtseed"
    copy.parent.mkdir()
    copy.write_bytes(open(os.path.join(keys["opts"]["pki_dir"], "minions", "virtseed"), "rb").read())
    assert vp.key_path(opts, "virtseed") == str(copy)
    assert vp.open_return(opts, "virtseed", JID, "cloud.profile", ret)["return"] == {"web1": {"state": "running"}}
    # Another key's answers still do not open with it.
    with pytest.raises(vp.Unproven, match="does not verify"):
        vp.open_return(opts, "virtseed", JID, "cloud.profile", a_return(keys["mallory"]))
    # An accepted key, where there is one, is the one that counts.
    (tmp_path / "minions").mkdir()
    (tmp_path / "minions" / "virtseed").write_bytes(b"not a key")
    assert vp.key_path(opts, "virtseed") == str(tmp_path / "minions" / "virtseed")
