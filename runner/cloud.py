"""
virtseed's ``cloud`` runner: ``salt-run cloud.*`` served by the virtseed sidecar.

Installed by ``virtseed install-runner`` into the master's extension modules, where it takes
the place of Salt's own ``cloud`` runner (3006, 3007) or provides one (3008). It only
forwards: each call becomes a job for the sidecar's minion id (``virtseed_sidecar`` in the
master config, default ``virtseed``), and the sidecar's answer is returned. While a job
runs, the clone steps the sidecar fires (``salt/cloud/<name>/...``) are shown as progress.
All logic lives in the sidecar.
"""

import glob
import logging
import os
import time

import salt.client
import salt.utils.event
import salt.utils.yaml

log = logging.getLogger(__name__)

__virtualname__ = "cloud"

DEFAULT_TIMEOUT = 3600
# Calls that may be published again if the sidecar never received them.
IDEMPOTENT = {"cloud.list_nodes", "cloud.list_nodes_full", "cloud.list_nodes_select", "cloud.query", "cloud.list_images", "cloud.action"}
# The sidecar's minion id; `virtseed install-runner` writes its configured id here.
DEFAULT_SIDECAR = "virtseed"


def __virtual__():
    return __virtualname__


def _sidecar():
    return __opts__.get("virtseed_sidecar", DEFAULT_SIDECAR)


def _load_layered(base):
    """salt-cloud's `base` file and `base.d/*.conf`, merged at the top level."""
    confdir = os.path.dirname(__opts__["conf_file"])
    out = {}
    paths = [os.path.join(confdir, base)] + sorted(glob.glob(os.path.join(confdir, base + ".d", "*.conf")))
    for path in paths:
        if os.path.isfile(path):
            with open(path) as f:
                data = salt.utils.yaml.safe_load(f) or {}
            if isinstance(data, dict):
                out.update(data)
    return out


def _provider_sidecars():
    """{provider alias: sidecar id} for providers that name one (`sidecar:`)."""
    out = {}
    for alias, body in _load_layered("cloud.providers").items():
        for entry in body if isinstance(body, list) else [body]:
            if isinstance(entry, dict) and entry.get("sidecar"):
                out[alias] = str(entry["sidecar"])
    return out


def _sidecar_for_provider(alias):
    return _provider_sidecars().get(str(alias).split(":")[0], _sidecar())


def _sidecar_for_profile(prof):
    profiles = _load_layered("cloud.profiles")
    seen = set()
    while prof in profiles and prof not in seen:
        seen.add(prof)
        body = profiles[prof] or {}
        if body.get("provider"):
            return _sidecar_for_provider(body["provider"])
        prof = body.get("extends")
    return _sidecar()


def _all_sidecars():
    return sorted(set([_sidecar()] + list(_provider_sidecars().values())))


def _merge(rets):
    """Merges the answers of several sidecars: per name, an answer beats an error."""
    __context__["retcode"] = 0
    out = {}
    for ret in rets:
        if not isinstance(ret, dict):
            continue
        for k, v in ret.items():
            if k == "retcode":
                continue
            if k not in out or (isinstance(out[k], dict) and "Error" in out[k] and not (isinstance(v, dict) and "Error" in v)):
                out[k] = v
            elif isinstance(out[k], dict) and isinstance(v, dict) and "Error" not in v:
                out[k] = _merge([out[k], v])
    if any(isinstance(v, dict) and "Error" in v for v in out.values()):
        __context__["retcode"] = 1
        out["retcode"] = 1
    return out


def _call_all(fun, arg=None, kwarg=None, names=()):
    sidecars = _all_sidecars()
    if len(sidecars) == 1:
        return _call(fun, arg, kwarg, names, sidecar=sidecars[0])
    return _merge([_call(fun, arg, kwarg, names, sidecar=s) for s in sidecars])


def _names(instances):
    if instances is None:
        return []
    if isinstance(instances, str):
        return [n.strip() for n in instances.split(",") if n.strip()]
    return [str(n) for n in instances]


def _clean(kwargs):
    return {k: v for k, v in kwargs.items() if not k.startswith("__")}


def _progress(msg):
    try:
        __jid_event__.fire_event({"message": msg}, "progress")
    except Exception:  # pylint: disable=broad-except
        log.info("%s", msg)


def _call(fun, arg=None, kwarg=None, names=(), timeout=DEFAULT_TIMEOUT, sidecar=None):
    """Publishes ``fun`` to the sidecar, shows its clone events, returns its answer."""
    sidecar = sidecar or _sidecar()
    client = salt.client.get_local_client(__opts__["conf_file"])
    event = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True)
    try:
        event.subscribe("")
        jid = client.cmd_async(sidecar, fun, arg=list(arg or []), kwarg=kwarg or {})
        if not jid:
            return {"Error": f"could not publish {fun} to the virtseed sidecar {sidecar!r}", "retcode": 1}
        ret_tag = f"salt/job/{jid}/ret/{sidecar}"
        deadline = time.time() + timeout
        last_check = time.time()
        retries = 0
        # Checks in a row that found the sidecar silent, or without the job and its return:
        # one is not enough (a sidecar that restarted returns interrupted creates late).
        silent = missing = 0
        while time.time() < deadline:
            ev = event.get_event(wait=1, full=True)
            if ev is None:
                if time.time() - last_check > 15:
                    last_check = time.time()
                    if not client.cmd(sidecar, "test.ping", timeout=10):
                        silent += 1
                        if silent >= 3:
                            return {"Error": f"the virtseed sidecar {sidecar!r} does not answer (jid {jid})", "retcode": 1}
                        continue
                    silent = 0
                    # A publication can be lost (e.g. while the sidecar resubscribes): if the
                    # sidecar is not running the job and no return was stored, it never got it.
                    found = client.cmd(sidecar, "saltutil.find_job", [jid], timeout=10)
                    if sidecar not in found:
                        continue  # no answer: nothing is known, keep waiting
                    running = found[sidecar]
                    cached = client.get_cache_returns(jid) or {}
                    if cached.get(sidecar):
                        return cached[sidecar].get("ret")
                    if not running:
                        if fun in IDEMPOTENT and retries < 3:
                            retries += 1
                            jid = client.cmd_async(sidecar, fun, arg=list(arg or []), kwarg=kwarg or {})
                            ret_tag = f"salt/job/{jid}/ret/{sidecar}"
                            continue
                        missing += 1
                        if missing >= 2:
                            return {"Error": f"the virtseed sidecar {sidecar!r} has no record of {fun} (jid {jid}): it never received it, or it restarted without a journal; see `salt-run cloud.list_nodes`", "retcode": 1}
                    else:
                        missing = 0
                continue
            tag, data = ev["tag"], ev["data"]
            if tag == ret_tag:
                ret = data.get("return")
                failed = not data.get("success", True) or (
                    isinstance(ret, dict) and any(isinstance(v, dict) and "Error" in v for v in ret.values())
                )
                if failed:
                    # salt-run exits with a `retcode` found in the runner's return.
                    __context__["retcode"] = 1
                    if not isinstance(ret, dict):
                        ret = {"Error": ret}
                    ret["retcode"] = 1
                return ret
            if tag.startswith("salt/cloud/"):
                parts = tag.split("/")
                if len(parts) >= 4 and (not names or parts[2] in names):
                    _progress(f"{parts[2]}: {parts[3]}" + (f" ({data['elapsed_ms']} ms)" if "elapsed_ms" in data else ""))
        return {"Error": f"no answer from the virtseed sidecar {sidecar!r} within {timeout} s", "retcode": 1}
    finally:
        event.destroy()


def profile(prof=None, instances=None, opts=None, **kwargs):
    """
    Create VMs from a salt-cloud profile (served by virtseed).

    .. code-block:: bash

        salt-run cloud.profile my-profile web1
        salt-run cloud.profile prof=my-profile instances=web1,web2
    """
    if prof is None:
        prof = kwargs.pop("profile", None)
    if prof is None:
        return {"Error": "A profile (or prof) must be defined", "retcode": 1}
    if instances is None:
        instances = kwargs.pop("names", None)
    names = _names(instances)
    if not names:
        return {"Error": "One or more instances (comma-delimited) must be set", "retcode": 1}
    kw = _clean(kwargs)
    if isinstance(opts, dict):
        kw.update(opts)
    return _call("cloud.profile", [prof, names], kw, names, sidecar=_sidecar_for_profile(prof))


def create(provider, instances, opts=None, **kwargs):
    """Create VMs from a provider and profile keys given as keyword arguments."""
    names = _names(instances)
    kw = _clean(kwargs)
    if isinstance(opts, dict):
        kw.update(opts)
    return _call("cloud.create", [provider, names], kw, names, sidecar=_sidecar_for_provider(provider))


def destroy(instances, opts=None):
    """Destroy VMs virtseed made, with their volumes, seeds and keys."""
    names = _names(instances)
    return _call_all("cloud.destroy", [names], {}, names)


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
    return _call_all("cloud.list_images", [], {"provider": provider})


def action(func=None, cloudmap=None, instances=None, provider=None, instance=None, opts=None, **kwargs):
    """
    start, stop, reboot or show_instance on VMs virtseed made.

    .. code-block:: bash

        salt-run cloud.action start web1
    """
    # `salt-run cloud.action start web1` puts the name where salt-cloud's signature has
    # `cloudmap`.
    names = _names(instances) or _names(instance) or _names(cloudmap)
    return _call_all("cloud.action", [func, names], {}, names)
