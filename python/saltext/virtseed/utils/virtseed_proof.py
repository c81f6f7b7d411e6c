"""
The sidecar's proofs, checked: what virtseed's front ends believe.

Nothing on the master's event bus says who put it there. Any accepted minion can fire events
under any tag (``_minion_event``), including ``salt/job/<jid>/ret/<sidecar>`` for a job it saw
published, and can write returns into the job cache under any minion id
(``_syndic_return``, served by Salt 3006-3008 to every minion). So the ``cloud`` runner and
the ``libvirt`` cloud driver take an answer, or a progress event, only when it carries the
sidecar's signature: PKCS#1 v1.5 with SHA-224 over a JSON text, made with the sidecar's
minion key and checked here against the key the master accepted for the sidecar's id.

A signed return (the sidecar signs the returns of the calls that carry
``__virtseed_version__``, which these modules always send)::

    {"virtseed_signed": "return", "alg": "PKCS1v15-SHA224", "sig": B64,
     "body": '{"kind": "return", "id": .., "jid": .., "fun": .., "success": .., "return": ..}'}

A signed event: its data plus ``virtseed_proof: {"alg", "sig", "body": '{"kind": "event",
"tag": .., "data": ..}'}``. The answer read is always the one inside the signed body.
"""

import base64
import binascii
import json
import os

import salt.crypt

ALG = "PKCS1v15-SHA224"
EVENT_FIELD = "virtseed_proof"


class Unproven(Exception):
    """An answer or event that does not carry the sidecar's proof."""


# On a master of masters the sidecars run beside the syndic nodes' masters, and their keys are
# accepted there, not here: the operator puts a copy of each sidecar's public key in this
# directory of the top master's ``pki_dir`` (only root writes there).
SIDECARS_DIR = "virtseed_sidecars"


def sidecar_key_copy(opts, sidecar):
    """Where a copy of a sidecar's public key goes on a master that has no key accepted for it."""
    return os.path.join(opts["pki_dir"], SIDECARS_DIR, sidecar)


def key_path(opts, sidecar):
    """
    The key ``sidecar``'s proofs are checked with: the one this master accepted for its id, or
    (none accepted: a master of masters) the copy in ``pki_dir/virtseed_sidecars/<id>``.
    """
    pki = opts.get("cluster_pki_dir") if opts.get("cluster_id") else opts["pki_dir"]
    accepted = os.path.join(pki, "minions", sidecar)
    if not os.path.isfile(accepted) and os.path.isfile(sidecar_key_copy(opts, sidecar)):
        return sidecar_key_copy(opts, sidecar)
    return accepted


def no_key(opts, sidecar):
    """What to do when this master has no key to check ``sidecar``'s answers with."""
    return (
        f"this master has no key for the virtseed sidecar {sidecar!r} to check its answers with "
        f"({key_path(opts, sidecar)}): accept the sidecar's key (`salt-key -a {sidecar}`); on a "
        f"master of masters, whose sidecars run beside the syndic nodes' masters, copy the "
        f"sidecar's public key (the syndic node's `pki_dir/minions/{sidecar}`) to "
        f"{sidecar_key_copy(opts, sidecar)}"
    )


def _body(opts, sidecar, proof):
    if not isinstance(proof, dict) or not isinstance(proof.get("body"), str) or not isinstance(proof.get("sig"), str):
        raise Unproven("it carries no proof from the sidecar")
    if proof.get("alg") != ALG:
        raise Unproven(f"its proof uses {proof.get('alg')!r}, not {ALG}")
    try:
        sig = base64.b64decode(proof["sig"], validate=True)
    except (binascii.Error, ValueError):
        raise Unproven("its signature is not base64")
    path = key_path(opts, sidecar)
    if not os.path.isfile(path):
        raise Unproven(f"the master has no accepted key for {sidecar!r} ({path}) to check it with")
    try:
        ok = salt.crypt.verify_signature(path, proof["body"].encode(), sig, algorithm=ALG)
    except Exception as exc:  # pylint: disable=broad-except
        raise Unproven(f"its signature cannot be checked: {exc}")
    if not ok:
        raise Unproven(f"its signature does not verify with the key accepted for {sidecar!r}")
    try:
        body = json.loads(proof["body"])
    except ValueError:
        raise Unproven("its signed body is not JSON")
    if not isinstance(body, dict):
        raise Unproven("its signed body is not a map")
    return body


def open_return(opts, sidecar, jid, fun, ret):
    """
    The sidecar's answer to job ``jid`` (``fun``) inside ``ret``, as its signed body:
    ``{"success", "retcode", "return", ...}``; raises Unproven if ``ret`` is not the
    sidecar's signed answer to that very job.
    """
    if not isinstance(ret, dict) or ret.get("virtseed_signed") != "return":
        raise Unproven("it is not a signed answer")
    body = _body(opts, sidecar, ret)
    if body.get("kind") != "return" or body.get("id") != sidecar:
        raise Unproven("it was signed as something else")
    if body.get("jid") != str(jid) or body.get("fun") != fun:
        raise Unproven(f"it was signed for another job ({body.get('fun')} {body.get('jid')})")
    return body


def open_event(opts, sidecar, tag, data):
    """The data of event ``tag`` as the sidecar signed it; raises Unproven otherwise."""
    body = _body(opts, sidecar, data.get(EVENT_FIELD) if isinstance(data, dict) else None)
    if body.get("kind") != "event" or body.get("tag") != tag or not isinstance(body.get("data"), dict):
        raise Unproven("it was signed for another event")
    return body["data"]


def sender(data):
    """
    Who put an event on the bus, where Salt says: a minion's ``_minion_event`` in its
    tag/data form carries the sender's authenticated id at the top of the data. An event in
    the ``events`` form, or a return written through ``_syndic_return``, says nothing true.
    """
    if isinstance(data, dict) and data.get("cmd") == "_minion_event" and isinstance(data.get("id"), str):
        return f"minion {data['id']!r}"
    return "an unknown sender"


# A new minion's readiness: the answer that counts is one only the clone's own key can make.
# Salt's renderer computes, on the minion, HMAC-SHA256(its minion.pem, a fresh nonce); the
# maker of the key (the driver, for `seed: ssh`) knows what to expect. The sidecar asks the
# same (src/cloud/ready.rs): keep the two texts equal.
CHALLENGE = (
    '{{{{ salt["hashutil.hmac_compute"]("{nonce}", '
    'salt["file.read"](salt["config.get"]("pki_dir") ~ "/minion.pem") | trim) }}}}'
)


def challenge(nonce):
    """`slsutil.renderer`'s keyword arguments for the readiness check with `nonce`."""
    return {"string": CHALLENGE.format(nonce=nonce), "default_renderer": "jinja"}


def expected(private_pem, nonce):
    """The answer a minion holding `private_pem` gives to the check with `nonce`."""
    import hashlib  # pylint: disable=import-outside-toplevel
    import hmac  # pylint: disable=import-outside-toplevel

    key = private_pem.strip().encode() if isinstance(private_pem, str) else private_pem.strip()
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()
