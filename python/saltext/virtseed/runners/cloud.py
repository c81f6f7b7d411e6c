"""
virtseed's ``cloud`` runner: ``salt-run cloud.*`` served by the virtseed sidecar.

It takes the place of Salt's own ``cloud`` runner (3006, 3007) or provides one (3008), with
every call form of Salt's runner. It only forwards, through virtseed's one client
(``virtseed_client``, shared with the ``libvirt`` cloud driver): each call becomes a job for
the sidecar, whose answer is returned; while it runs, the clone steps are shown as progress.
``cloud.map_run`` goes through Salt's own map code and virtseed's ``libvirt`` driver.
"""

import logging

import salt.cloud


# The client beside this file: the package's (`saltext.virtseed`, pip). `virtseed
# install-runner` rewrites this line in its copies for extension_modules, whose client is
# extension_modules/utils/virtseed_client.py: never the other one, both may be installed, of
# different releases.
from saltext.virtseed.utils import virtseed_client as vc  # virtseed: client import

log = logging.getLogger(__name__)

__virtualname__ = "cloud"


def __virtual__():
    return __virtualname__


def _progress(name, step, data):
    msg = vc.progress_line(name, step, data)
    try:
        # salt-run prints a progress event with the event's `outputter` (unless --out says
        # otherwise): virtseed's prints the line alone, not the event dict.
        __jid_event__.fire_event({"message": msg, "outputter": "virtseed_progress"}, "progress")
    except Exception:  # pylint: disable=broad-except
        log.info("%s", msg)


def _done(ret):
    """The sidecar's answer as a runner return: `salt-run` exits non-zero on an error."""
    if not isinstance(ret, dict):
        ret = {"Error": ret}
    failed = vc.has_error(ret)
    __context__["retcode"] = 1 if failed else 0
    if failed:
        ret["retcode"] = 1
    return ret


def _call(fun, arg=None, kwarg=None, names=(), sidecar=None):
    return _done(vc.call(__opts__, fun, arg, kwarg, names, sidecar=sidecar, progress=_progress))


def _call_all(fun, arg=None, kwarg=None, names=()):
    return _done(vc.call_all(__opts__, fun, arg, kwarg, names, progress=_progress))


def _clean(kwargs):
    return {k: v for k, v in kwargs.items() if not k.startswith("__")}


def profile(prof=None, instances=None, opts=None, **kwargs):
    """
    Create VMs from a salt-cloud profile (served by virtseed). Profile keys given as
    arguments (``grains``, ``minion``, ``cpus``, ``wait_for_minion``, ...) override the
    profile's.

    .. code-block:: bash

        salt-run cloud.profile my-profile web1
        salt-run cloud.profile prof=my-profile instances=web1,web2
    """
    if prof is None:
        prof = kwargs.pop("profile", None)
    if prof is None:
        return _done({"Error": "A profile (or prof) must be defined"})
    if instances is None:
        instances = kwargs.pop("names", None)
    names = vc.names_of(instances)
    if not names:
        return _done({"Error": "One or more instances (comma-delimited) must be set"})
    kw = _clean(kwargs)
    if isinstance(opts, dict):
        kw.update(opts)
    return _call("cloud.profile", [prof, names], kw, names, sidecar=vc.sidecar_for_profile(__opts__, prof))


def create(provider=None, instances=None, opts=None, **kwargs):
    """Create VMs from a provider and profile keys given as keyword arguments."""
    if instances is None:
        instances = kwargs.pop("names", None)
    names = vc.names_of(instances)
    if not provider or not names:
        return _done({"Error": "cloud.create: a provider and one or more instances must be given"})
    kw = _clean(kwargs)
    if isinstance(opts, dict):
        kw.update(opts)
    return _call("cloud.create", [provider, names], kw, names, sidecar=vc.sidecar_for_provider(__opts__, provider))


def map_run(path=None, opts=None, **kwargs):
    """
    Runs a salt-cloud map file, as ``salt-cloud -m PATH``, through Salt's own map code and
    virtseed's ``libvirt`` cloud driver.
    """
    client = salt.cloud.CloudClient(vc.cloud_conf(__opts__))
    if isinstance(opts, dict):
        client.opts.update(opts)
    ret = client.map_run(path, **_clean(kwargs))
    return _done(ret if isinstance(ret, dict) else {"Error": f"cloud.map_run: {ret!r}"})


def destroy(instances=None, opts=None, **kwargs):
    """Destroy VMs virtseed made, with their volumes, seeds and keys."""
    names = vc.names_of(instances if instances is not None else kwargs.get("names"))
    if not names:
        return _done({"Error": "cloud.destroy: one or more instances must be given"})
    return _call_all("cloud.destroy", [names], {}, names)


# The listings below answer in salt-cloud's shape, `{alias: {"libvirt": {...}}}`, as `salt-cloud
# -Q`/`--list-*` show them: a provider's host that could not be listed is an `Error` string
# in that provider's listing, beside what its other hosts hold, and every other provider is
# listed as usual. Like salt-cloud and Salt's own runner, such a partial listing exits 0;
# a call the sidecar could not answer at all (`{"Error": ...}`) exits non-zero.


def list_nodes(provider="all"):
    return _call_all("cloud.list_nodes", [], {"provider": provider})


def list_nodes_full(provider="all"):
    return _call_all("cloud.list_nodes_full", [], {"provider": provider})


def list_nodes_select(provider="all"):
    return _call_all("cloud.list_nodes_select", [], {"provider": provider})


def query(query_type="list_nodes"):
    return _call_all("cloud.query", [query_type], {})


def full_query(query_type="list_nodes_full"):
    return _call_all("cloud.query", [query_type], {})


def select_query(query_type="list_nodes_select"):
    return _call_all("cloud.query", [query_type], {})


def list_images(provider="all"):
    """The usable base domains (shut off, not made by virtseed) of each provider's hosts."""
    return _call_all("cloud.list_images", [], {"provider": provider})


def list_sizes(provider="all"):
    """libvirt has no sizes: what sets a clone's size instead, per provider."""
    return _call_all("cloud.list_sizes", [], {"provider": provider})


def list_locations(provider="all"):
    """Each provider's hypervisor hosts, with their free memory."""
    return _call_all("cloud.list_locations", [], {"provider": provider})


def action(func=None, cloudmap=None, instances=None, provider=None, instance=None, opts=None, **kwargs):
    """
    start, stop, reboot or show_instance on VMs virtseed made.

    .. code-block:: bash

        salt-run cloud.action start web1
        salt-run cloud.action func=start instance=web1
    """
    # `salt-run cloud.action start web1` puts the name where salt-cloud's signature has
    # `cloudmap`.
    names = vc.names_of(instances) or vc.names_of(instance) or vc.names_of(kwargs.get("names")) or vc.names_of(cloudmap)
    return _call_all("cloud.action", [func, names], {}, names)
