"""
``virtseed.proven``: whether an event is the virtseed sidecar's own, for reactors.

Any accepted minion can fire events under any tag (``salt/cloud/web1/created`` included), so a
reactor that acts on virtseed's events for anything that matters checks them first. Every event
the sidecar fires carries its proof (``virtseed_proof``: its signature over the tag and the
data, made with its minion key); this checks it against the key the master accepted for the
sidecar's id, as virtseed's own front ends do. Reactors render on the master, where Salt loads
this module (``salt['virtseed.proven']``). True means the event's fields are exactly the ones
the sidecar signed for that tag; one of the sidecar's own earlier events fired again also
passes, so make reactions idempotent (they name the VM)::

    {% if salt['virtseed.proven'](tag, data) %}
    ...
    {% endif %}
"""

import logging

from saltext.virtseed.utils import virtseed_client as vc  # virtseed: client import
from saltext.virtseed.utils import virtseed_proof  # virtseed: proof import

log = logging.getLogger(__name__)

__virtualname__ = "virtseed"


def __virtual__():
    return __virtualname__


def proven(tag, data, sidecar=None):
    """
    True when event ``tag`` with ``data`` was fired by the virtseed sidecar ``sidecar`` (by
    default, any sidecar the cloud providers name, or the default one), False otherwise (a
    forgery is logged with its sender where Salt says who sent it).

    CLI Example (on the master, as reactors call it):

    .. code-block:: bash

        salt-call --local virtseed.proven salt/cloud/web1/created '{...}'
    """
    if not isinstance(data, dict):
        return False
    try:
        sidecars = vc.members(sidecar) if sidecar else vc.all_sidecar_ids(__opts__)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("virtseed.proven: cannot read the sidecars of the cloud providers: %s", exc)
        sidecars = vc.members(vc.default_sidecar(__opts__))
    why = "no sidecar"
    # The fields a reactor reads must be the ones signed: only Salt's `_stamp` and the proof
    # itself may be added.
    plain = {k: v for k, v in data.items() if k not in ("_stamp", virtseed_proof.EVENT_FIELD)}
    for s in sidecars:
        try:
            signed = virtseed_proof.open_event(__opts__, s, tag, data)
        except virtseed_proof.Unproven as exc:
            why = str(exc)
            continue
        if signed == plain:
            return True
        why = "its fields differ from the ones the sidecar signed"
        break
    log.warning(
        "virtseed.proven: event %s from %s is not the sidecar's: %s",
        tag,
        virtseed_proof.sender(data),
        why,
    )
    return False
