"""
virtseed's ``libvirt`` cloud driver: every salt-cloud front end served by the virtseed
sidecar.

``salt-cloud -p/-m/-d/-Q/-F/-S/-a/--list-images``, the ``cloud`` execution module and the
``cloud`` states (orchestration) all call a provider's driver module. This file is named
``libvirt.py`` so that, installed in ``extension_modules/clouds`` (``virtseed
install-runner``) or by a Salt extension package, it takes the place of Salt's own libvirt
driver (3006, 3007) or provides one (3008, which has none). Existing ``cloud.providers`` and
``cloud.profiles`` files work unchanged.

It only forwards, through virtseed's one client (``virtseed_client``, shared with the
``cloud`` runner): the sidecar clones, seeds the identity, pre-accepts the key it minted,
fires salt-cloud's events, waits for the minion and rolls back on failure.

Keys: Salt's ``Cloud.create`` mints a keypair and writes its public half to
``pki_dir/minions/<id>`` before it calls any driver (unless ``deploy: False``), with a plain
``open(..., "w")``: over whatever key is there, a concurrent create's or another machine's.
virtseed discards Salt's pair instead: for VMs of this driver, Salt's write is skipped
(``_accept_key_unless_virtseed`` below), and ``create`` removes the file if it still holds
exactly Salt's key (should the skip not apply), and never forwards the private key. The
sidecar mints its own key, gives it to the guest through the seed and pre-accepts it
atomically, never over another machine's key. A private key so never leaves the master's
host nor reaches the bus, an event, the job cache or a log.
"""

import logging
import os
import sys

import salt.cloud
import salt.config as config
import salt.utils.cloud
import salt.utils.yaml
from salt.exceptions import SaltCloudSystemExit


def _in_package():
    """Whether this file is the pip-installed package's (`saltext.virtseed`), not a copy."""
    try:
        import saltext.virtseed as pkg  # pylint: disable=import-outside-toplevel
    except ImportError:
        return False
    here = os.path.realpath(__file__)
    return here.startswith(os.path.realpath(os.path.dirname(pkg.__file__)) + os.sep)


# The client beside this file: the package's when pip installed it (the loader finds this
# file through the `salt.loader` entry point), else extension_modules/utils's (`virtseed
# install-runner`). Never the other one: both may be installed, of different releases.
if _in_package():
    from saltext.virtseed.utils import virtseed_client as vc
else:
    try:
        import virtseed_client as vc
    except ImportError:  # pragma: no cover
        from saltext.virtseed.utils import virtseed_client as vc

log = logging.getLogger(__name__)

__virtualname__ = "libvirt"

# Keys of a VM's config that Salt adds itself: never forwarded as profile keys.
SALT_KEYS = {
    "name", "profile", "provider", "driver", "pub_key", "priv_key", "os", "inline_script",
    "master_pub", "master_pem", "profiles",
}
# Parts of key names that hold secrets (salt-cloud's SSH deploy `password`, `private_key`,
# ...): virtseed seeds instead of logging in, so they are never forwarded (the job's
# arguments would reach the job cache).
SECRET_PARTS = ("password", "passwd", "secret", "token", "private_key", "priv_key")

# `-S` without `query.selection` in the cloud config.
DEFAULT_SELECTION = ("id", "name", "state", "public_ips", "private_ips", "size", "image")


def __virtual__():
    return __virtualname__


def _accept_key_unless_virtseed(pki_dir, pub, id_):
    """
    `salt.utils.cloud.accept_key`, except for a VM of this driver (`Cloud.create`'s `vm_`,
    its caller's local): virtseed accepts the key it minted, atomically and never over
    another, and Salt's write would replace whatever key `minions/<id>` holds.
    """
    vm_ = sys._getframe(1).f_locals.get("vm_")  # pylint: disable=protected-access
    if isinstance(vm_, dict) and str(vm_.get("provider", "")).endswith(":" + __virtualname__):
        log.debug("%s: salt-cloud's key not accepted; virtseed pre-accepts its own", id_)
        return None
    return _accept_key_unless_virtseed.salt_accept_key(pki_dir, pub, id_)


# Installed once per process (a module reload finds it there).
if not hasattr(salt.utils.cloud.accept_key, "salt_accept_key"):
    _accept_key_unless_virtseed.salt_accept_key = salt.utils.cloud.accept_key
    salt.utils.cloud.accept_key = _accept_key_unless_virtseed


def _active():
    """This call's provider as `alias:driver`."""
    return __active_provider_name__ or __virtualname__  # pylint: disable=undefined-variable


def _alias():
    return _active().split(":")[0]


def get_configured_provider():
    """
    The provider is usable when it names a libvirt `url`.

    """
    return config.is_provider_configured(__opts__, _active(), ("url",))


def _progress(name, step, data):
    """
    One line per clone step on stderr (salt-cloud's stdout stays its return, `--out json`
    included), and in salt-cloud's log.
    """
    line = vc.progress_line(name, step, data)
    log.info("%s", line)
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # no stderr (a daemon's)
        pass


def _forward(fun, arg=None, kwarg=None, names=(), sidecar=None):
    ret = vc.call(
        __opts__, fun, arg, kwarg, names,
        sidecar=sidecar or vc.sidecar_for_provider(__opts__, _alias()),
        progress=_progress,
    )
    if isinstance(ret, dict) and "Error" in ret and not isinstance(ret["Error"], dict):
        raise SaltCloudSystemExit(_text(ret["Error"]))
    if not isinstance(ret, dict):
        raise SaltCloudSystemExit(f"{fun}: unexpected answer from the virtseed sidecar: {ret!r}")
    return ret


def _text(err):
    return "; ".join(str(e) for e in err) if isinstance(err, list) else str(err)


def _ours(ret):
    """This provider's part of a `{alias: {driver: {...}}}` answer."""
    mine = ret.get(_alias(), {})
    if isinstance(mine, dict) and "Error" in mine:
        raise SaltCloudSystemExit(_text(mine["Error"]))
    return mine.get(__virtualname__, {})


def _must_not_be_action(call, fun):
    if call == "action":
        raise SaltCloudSystemExit(f"The {fun} function must be called with -f or --function.")


def _must_be_action(call, fun):
    if call != "action":
        raise SaltCloudSystemExit(f"The {fun} action must be called with -a or --action.")


# --- create / destroy -------------------------------------------------------------------

def _discard_salt_key(vm_):
    """
    Removes the key `Cloud.create` accepted for this VM, if the file still holds exactly that
    key (virtseed pre-accepts its own), and drops the pair from `vm_`.
    """
    pub = vm_.pop("pub_key", None)
    vm_.pop("priv_key", None)
    if not pub:
        return
    minion = vm_.get("minion") if isinstance(vm_.get("minion"), dict) else {}
    key_id = minion.get("id", vm_["name"])
    if vm_.get("use_fqdn") and vm_.get("domain"):
        key_id = f"{key_id}.{vm_['domain']}"
    elif "append_domain" in minion:
        key_id = f"{key_id}.{minion['append_domain']}"
    path = os.path.join(__opts__["pki_dir"], "minions", key_id)
    try:
        with open(path) as f:
            if f.read().strip() != pub.strip():
                return
        os.remove(path)
    except FileNotFoundError:
        return
    log.debug("removed the key salt-cloud accepted for %s; virtseed pre-accepts its own", key_id)


def _forwardable(keys):
    return {
        k: v for k, v in keys.items()
        if k not in SALT_KEYS and not k.startswith("__")
        and not any(part in k.lower() for part in SECRET_PARTS)
    }


def _main_cloud_config():
    try:
        with open(__opts__["conf_file"]) as f:
            return salt.utils.yaml.safe_load(f) or {}
    except (KeyError, OSError):
        return {}


def _overrides(vm_, profile):
    """What this VM's config sets beyond its profile (a map's per-VM keys, vm_overrides)."""
    alias, driver = vm_["provider"].split(":")
    provider = dict(__opts__["providers"][alias][driver])
    provider.pop("profiles", None)
    base = salt.cloud.Cloud.vm_config(
        vm_["name"], _main_cloud_config(), provider, __opts__["profiles"][profile], {}
    )
    return _forwardable({k: v for k, v in vm_.items() if k not in base or base[k] != v})


def create(vm_):
    """
    Clone one VM through the sidecar: from its profile with this VM's own keys on top (a map
    entry's, `vm_overrides`), or from the provider and the given keys (`cloud.create`).
    """
    name = vm_["name"]
    _discard_salt_key(vm_)
    profile = vm_.get("profile")
    if profile and profile in __opts__.get("profiles", {}):
        over = _overrides(vm_, profile)
        ret = _forward("cloud.profile", [profile, [name]], over, [name],
                       sidecar=vc.sidecar_for_profile(__opts__, profile))
    else:
        ret = _forward("cloud.create", [_alias(), [name]], _forwardable(vm_), [name])
    out = ret.get(name)
    if not isinstance(out, dict):
        raise SaltCloudSystemExit(f"the virtseed sidecar made no report for {name}: {ret!r}")
    if "Error" in out:
        raise SaltCloudSystemExit(_text(out["Error"]))
    return out


def destroy(name, call=None):
    """Destroy a VM virtseed made: domain, volumes, seed, and its key."""
    if call == "function":
        raise SaltCloudSystemExit("The destroy action must be called with -d, --destroy, -a or --action.")
    ret = _forward("cloud.destroy", [[name]], {}, [name])
    out = ret.get(name)
    if isinstance(out, dict) and "Error" in out:
        raise SaltCloudSystemExit(_text(out["Error"]))
    return out


# --- queries -----------------------------------------------------------------------------

def list_nodes(kwargs=None, call=None):
    """The VMs virtseed made on this provider: id, name, state, IPs, size, image."""
    _must_not_be_action(call, "list_nodes")
    return _ours(_forward("cloud.list_nodes", [], {"provider": _alias()}))


def list_nodes_full(kwargs=None, call=None):
    """`list_nodes` plus virtseed's record of each VM (profile, MACs, key fingerprint...)."""
    _must_not_be_action(call, "list_nodes_full")
    return _ours(_forward("cloud.list_nodes_full", [], {"provider": _alias()}))


def list_nodes_min(kwargs=None, call=None):
    _must_not_be_action(call, "list_nodes_min")
    return {n: {"id": v.get("id"), "state": v.get("state")} for n, v in list_nodes(call="function").items()}


def list_nodes_select(call=None):
    """The fields `query.selection` names (in the cloud config), else list_nodes' own."""
    selection = __opts__.get("query.selection") or DEFAULT_SELECTION
    return salt.utils.cloud.list_nodes_select(list_nodes_full(call="function"), selection, call)


def show_instance(name, kwargs=None, call=None):
    _must_be_action(call, "show_instance")
    return _action("show_instance", name)


def avail_images(kwargs=None, call=None):
    """The base domains a profile can clone: shut off, and not made by virtseed."""
    _must_not_be_action(call, "avail_images")
    return _ours(_forward("cloud.list_images", [], {"provider": _alias()}))


def avail_sizes(kwargs=None, call=None):
    """libvirt has no sizes: says which profile keys size a clone."""
    _must_not_be_action(call, "avail_sizes")
    return _ours(_forward("cloud.list_sizes", [], {"provider": _alias()}))


def avail_locations(kwargs=None, call=None):
    """The provider's hypervisor hosts, with their free memory."""
    _must_not_be_action(call, "avail_locations")
    return _ours(_forward("cloud.list_locations", [], {"provider": _alias()}))


# --- actions -----------------------------------------------------------------------------

def _action(func, name):
    ret = _forward("cloud.action", [func, [name]], {}, [name])
    out = ret.get(name)
    if isinstance(out, dict) and "Error" in out:
        raise SaltCloudSystemExit(_text(out["Error"]))
    return out


def start(name, kwargs=None, call=None):
    _must_be_action(call, "start")
    return _action("start", name)


def stop(name, kwargs=None, call=None):
    _must_be_action(call, "stop")
    return _action("stop", name)


def reboot(name, kwargs=None, call=None):
    _must_be_action(call, "reboot")
    return _action("reboot", name)
