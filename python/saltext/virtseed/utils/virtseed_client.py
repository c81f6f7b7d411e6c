"""
The one client of virtseed's Salt modules: the ``cloud`` runner and the ``libvirt`` cloud
driver both forward their calls here, and this module publishes each as a job to the
virtseed sidecar's minion id and waits for its answer.

It holds the whole forwarding logic, once: which sidecar serves a provider or profile
(``sidecar:`` in a provider, else ``virtseed_sidecar`` in the master config, else the id
``virtseed install-runner`` wrote below), the wait for the return with the clone steps shown
as progress, re-publishing a query the sidecar never received, and errors in salt-cloud's
``{"Error": ...}`` shape.

It is a plain Python module, not a Salt loader module: callers pass their ``__opts__``
(a master's or salt-cloud's) and a progress callback.
"""

import glob
import logging
import os
import time

import salt.client
import salt.config
import salt.utils.event
import salt.utils.yaml

# `virtseed install-runner` rewrites this line in its copies, as the cloud driver's.
from saltext.virtseed.utils import virtseed_proof  # virtseed: proof import

log = logging.getLogger(__name__)

# The sidecar's minion id; `virtseed install-runner` writes its configured id here.
DEFAULT_SIDECAR = "virtseed"
# virtseed's release these modules belong to; sent with every call as `__virtseed_version__`,
# and a sidecar of another release refuses the call, saying which (the binary's unit tests
# keep this equal to Cargo.toml's version).
VERSION = "0.1.0"
VERSION_KWARG = "__virtseed_version__"
DEFAULT_TIMEOUT = 3600
# Calls that may be published again if the sidecar never received them.
IDEMPOTENT = {
    "cloud.list_nodes",
    "cloud.list_nodes_full",
    "cloud.list_nodes_select",
    "cloud.query",
    "cloud.list_images",
    "cloud.list_sizes",
    "cloud.list_locations",
    "cloud.action",
}
# How long each of several sidecars (a group) has to answer before the next is asked.
ALIVE_WAIT = 5
# How long a call waits for any sign of the sidecar before asking whether it is there.
FIRST_SIGN = 3


_MASTER_OPTS = {}


def master_opts(opts):
    """
    The master's own opts, loaded from `master` beside the caller's config file. salt-cloud's
    opts hold the master's keys too, but not all of its values (its `cachedir` is
    salt-cloud's; its `conf_file` is the master's when there is no `cloud` file), and the
    LocalClient needs the master's.
    """
    path = os.path.join(os.path.dirname(opts["conf_file"]), "master")
    if path not in _MASTER_OPTS:
        _MASTER_OPTS[path] = salt.config.master_config(path)
    return _MASTER_OPTS[path]


def _confdir(opts):
    return os.path.dirname(opts["conf_file"])


def cloud_conf(opts):
    """salt-cloud's main config file, beside the master's."""
    return os.path.join(_confdir(opts), "cloud")


def load_layered(opts, base):
    """salt-cloud's `base` file and `base.d/*.conf`, merged at the top level."""
    confdir = _confdir(opts)
    out = {}
    paths = [os.path.join(confdir, base)] + sorted(glob.glob(os.path.join(confdir, base + ".d", "*.conf")))
    for path in paths:
        if os.path.isfile(path):
            with open(path) as f:
                data = salt.utils.yaml.safe_load(f) or {}
            if isinstance(data, dict):
                out.update(data)
    return out


def _group(value):
    """
    A sidecar setting as the string the front ends pass around: one id, or several (a list,
    or ids joined by commas: sidecars beside the masters of a cluster or multi-master set,
    any of which can serve), in order of preference.
    """
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value if str(v).strip())
    return str(value)


def members(sidecar):
    """The ids of a sidecar setting (see `_group`), in order."""
    return [s.strip() for s in str(sidecar).split(",") if s.strip()]


def default_sidecar(opts):
    return _group(opts.get("virtseed_sidecar") or master_opts(opts).get("virtseed_sidecar") or DEFAULT_SIDECAR)


def _provider_sidecars(opts):
    """{provider alias: sidecar setting} for providers that name one (`sidecar:`)."""
    out = {}
    for alias, body in load_layered(opts, "cloud.providers").items():
        for entry in body if isinstance(body, list) else [body]:
            if isinstance(entry, dict) and entry.get("sidecar"):
                out[alias] = _group(entry["sidecar"])
    return out


def sidecar_for_provider(opts, alias):
    return _provider_sidecars(opts).get(str(alias).split(":")[0], default_sidecar(opts))


def sidecar_for_profile(opts, prof):
    profiles = load_layered(opts, "cloud.profiles")
    seen = set()
    while prof in profiles and prof not in seen:
        seen.add(prof)
        body = profiles[prof] or {}
        if body.get("provider"):
            return sidecar_for_provider(opts, body["provider"])
        prof = body.get("extends")
    return default_sidecar(opts)


def all_sidecars(opts):
    return sorted(set([default_sidecar(opts)] + list(_provider_sidecars(opts).values())))


def all_sidecar_ids(opts):
    """Every sidecar id the settings name (each member of each group)."""
    return sorted({m for g in all_sidecars(opts) for m in members(g)})


def names_of(instances):
    """Instance names: a list, or a comma-separated string."""
    if instances is None:
        return []
    if isinstance(instances, str):
        return [n.strip() for n in instances.split(",") if n.strip()]
    return [str(n) for n in instances]


def has_error(ret):
    return isinstance(ret, dict) and (
        "Error" in ret and not isinstance(ret["Error"], dict)
        or any(isinstance(v, dict) and "Error" in v for v in ret.values())
    )


def listing_error(listing):
    """
    What a provider's listing (`{name: {...}}`, the driver level of salt-cloud's `{alias:
    {driver: {...}}}`) says of its hosts that could not be listed: its `Error`, a string
    naming each such host (an entry is a map), or None.
    """
    err = listing.get("Error") if isinstance(listing, dict) else None
    return err if isinstance(err, str) else None


def without_error(listing):
    """A provider's listing without its `Error`: what its hosts that answered hold."""
    if not isinstance(listing, dict):
        return {}
    return {k: v for k, v in listing.items() if not (k == "Error" and isinstance(v, str))}


def merge(rets):
    """Merges the answers of several sidecars: per name, an answer beats an error."""
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
                out[k] = merge([out[k], v])
    return out


def call_all(opts, fun, arg=None, kwarg=None, names=(), progress=None):
    """`fun` on every sidecar the providers name, their answers merged."""
    sidecars = all_sidecars(opts)
    if len(sidecars) == 1:
        return call(opts, fun, arg, kwarg, names, sidecar=sidecars[0], progress=progress)
    return merge([call(opts, fun, arg, kwarg, names, sidecar=s, progress=progress) for s in sidecars])


def not_running(sidecar, opts):
    confdir = _confdir(opts)
    return (
        f"the virtseed sidecar {sidecar!r} does not answer: is it running? Start it as the "
        f"master's user with `virtseed -c {confdir} run`, and check that its key is accepted "
        f"(`salt-key -L` lists {sidecar!r} under Accepted Keys)"
    )


def _ask(client, event, opts, sidecar, fun, arg, pending, wait):
    """
    The sidecar's proven answer (its signed body) to a quick `fun`, read off the bus within
    `wait` seconds, or None (LocalClient.cmd waits far longer, and reports a silent minion as
    `False`). Other events seen meanwhile go to `pending`, for the caller.
    """
    jid = client.cmd_async(sidecar, fun, arg=list(arg), kwarg={VERSION_KWARG: VERSION})
    if not jid:
        return None
    tag = f"salt/job/{jid}/ret/{sidecar}"
    deadline = time.time() + wait
    while time.time() < deadline:
        ev = event.get_event(wait=0.5, full=True)
        if ev and ev["tag"] == tag:
            body = _proven(opts, sidecar, jid, fun, ev["data"].get("return"), ev["data"])
            if body is not None:
                return body
        elif ev:
            pending.append(ev)
    return None


def _alive(client, event, opts, sidecar, pending, wait=5):
    """Whether the sidecar answers a `test.ping` within `wait` seconds, with its proof."""
    body = _ask(client, event, opts, sidecar, "test.ping", [], pending, wait)
    return body is not None and body.get("return") is True


def _proven(opts, sidecar, jid, fun, ret, data=None):
    """
    The sidecar's signed answer to `jid` in `ret` (its body), or None, logged, when `ret` is
    not (a forgery: see virtseed_proof).
    """
    try:
        return virtseed_proof.open_return(opts, sidecar, jid, fun, ret)
    except virtseed_proof.Unproven as exc:
        log.warning(
            "virtseed: ignored an answer to %s (job %s) under the sidecar's id %r from %s: %s",
            fun,
            jid,
            sidecar,
            virtseed_proof.sender(data),
            exc,
        )
        return None


def _answer(body):
    """The caller's view of a signed answer: an error that is not a map becomes {"Error": ...}."""
    ret = body.get("return")
    if not body.get("success", True) and not isinstance(ret, dict):
        ret = {"Error": ret}
    return ret


def call(opts, fun, arg=None, kwarg=None, names=(), timeout=DEFAULT_TIMEOUT, sidecar=None, progress=None):
    """
    Publishes ``fun`` to the sidecar, shows its clone events through ``progress(name, step,
    data)``, and returns its answer: the sidecar's return, or ``{"Error": ...}``.
    """
    mopts = master_opts(opts)
    group = members(sidecar or default_sidecar(opts)) or [DEFAULT_SIDECAR]
    arg = list(arg or [])
    kwarg = dict(kwarg or {})
    kwarg[VERSION_KWARG] = VERSION
    keyed = [s for s in group if os.path.isfile(virtseed_proof.key_path(mopts, s))]
    if not keyed:
        # Every answer would be ignored as unproven: say why now, not after a long wait.
        return {"Error": virtseed_proof.no_key(mopts, group[0])}
    client = salt.client.get_local_client(mopts=mopts)
    event = salt.utils.event.get_master_event(mopts, mopts["sock_dir"], listen=True)
    try:
        event.subscribe("")
        sidecar = keyed[0]
        if len(keyed) > 1:
            # Several sidecars can serve: the first that proves it is there gets the call,
            # and only it (a call is published once: never served twice).
            sidecar = next((s for s in keyed if _alive(client, event, mopts, s, [], wait=ALIVE_WAIT)), None)
            if sidecar is None:
                return {"Error": "none of the virtseed sidecars " + ", ".join(repr(s) for s in keyed) + " answers: is any running?"}
            if sidecar != keyed[0]:
                log.warning("virtseed: sidecar %r does not answer; %r serves %s", keyed[0], sidecar, fun)
        jid = client.cmd_async(sidecar, fun, arg=arg, kwarg=kwarg)
        if not jid:
            return {"Error": f"could not publish {fun} to {sidecar!r}: " + not_running(sidecar, mopts)}
        return _wait(client, event, mopts, sidecar, fun, arg, kwarg, jid, names, timeout, progress)
    finally:
        event.destroy()


def _wait(client, event, opts, sidecar, fun, arg, kwarg, jid, names, timeout, progress):
    ret_tag = f"salt/job/{jid}/ret/{sidecar}"
    started = time.time()
    deadline = started + timeout
    last_check = started
    seen = False  # any sign of life from the sidecar for this call
    retries = 0
    # Checks in a row that found the sidecar silent, or without the job and its return:
    # one is not enough (a sidecar that restarted returns interrupted creates late).
    silent = missing = 0
    pending = []  # events read while pinging the sidecar
    steps = {}  # name -> (last step, when it came), for the "still waiting" lines
    while time.time() < deadline:
        ev = pending.pop(0) if pending else event.get_event(wait=1, full=True)
        if progress:
            _still_waiting(steps, progress)
        if ev is None:
            if not seen and time.time() - started > FIRST_SIGN:
                # Not a word since the publication: a sidecar that is not running is said
                # so in seconds, not after a long wait.
                if not _alive(client, event, opts, sidecar, pending):
                    return {"Error": not_running(sidecar, opts)}
                seen = True
                last_check = time.time()
            if time.time() - last_check > 15:
                last_check = time.time()
                if not _alive(client, event, opts, sidecar, pending, wait=10):
                    silent += 1
                    if silent >= 3:
                        return {"Error": f"the virtseed sidecar {sidecar!r} does not answer (jid {jid})"}
                    continue
                silent = 0
                # A publication can be lost (e.g. while the sidecar resubscribes): if the
                # sidecar is not running the job and no return was stored, it never got it.
                found = _ask(client, event, opts, sidecar, "saltutil.find_job", [jid], pending, 10)
                running = None if found is None else found.get("return")
                if running is None or running is False:
                    continue  # no proven answer: nothing is known, keep waiting
                # The job cache takes returns for any id from any minion (`_syndic_return`):
                # only the sidecar's signed answer counts there too.
                cached = (client.get_cache_returns(jid) or {}).get(sidecar)
                if cached:
                    body = _proven(opts, sidecar, jid, fun, cached.get("ret"))
                    if body is not None:
                        return _answer(body)
                if not running:
                    if fun in IDEMPOTENT and retries < 3:
                        retries += 1
                        jid = client.cmd_async(sidecar, fun, arg=arg, kwarg=kwarg)
                        ret_tag = f"salt/job/{jid}/ret/{sidecar}"
                        continue
                    missing += 1
                    if missing >= 2:
                        return {"Error": f"the virtseed sidecar {sidecar!r} has no record of {fun} (jid {jid}): it never received it, or it restarted without a journal; see `salt-run cloud.list_nodes`"}
                else:
                    missing = 0
            continue
        tag, data = ev["tag"], ev["data"]
        if tag == ret_tag:
            body = _proven(opts, sidecar, jid, fun, data.get("return"), data)
            if body is not None:
                return _answer(body)
            continue
        if tag.startswith("salt/cloud/"):
            parts = tag.split("/")
            ours = len(parts) >= 4 and (not names or parts[2] in names)
            try:
                data = virtseed_proof.open_event(opts, sidecar, tag, data)
            except virtseed_proof.Unproven as exc:
                # Another sidecar's events fail this check too: only those naming this
                # call's VMs are worth a warning.
                (log.warning if ours and names else log.debug)(
                    "virtseed: ignored event %s from %s: %s", tag, virtseed_proof.sender(data), exc
                )
                continue
            seen = True
            if progress and ours:
                progress(parts[2], parts[3], data)
                steps[parts[2]] = (parts[3], time.time(), started)
    return {"Error": f"no answer from the virtseed sidecar {sidecar!r} within {timeout} s"}


# Steps after which nothing more comes for a name.
FINAL_STEPS = {"created", "failed", "destroyed"}
# A name silent this long (the minion's first answer can take minutes) gets a line saying
# what it waits for, and again as long as it stays silent.
WAITING_EVERY = 15
WAITING_FOR = {
    "started": "waiting for the minion",
    "minion_up": "waiting for the minion",
    "key_accepted": "starting",
    "requesting": "cloning",
    "creating": "cloning",
    "destroying": "destroying",
}


def _still_waiting(steps, progress):
    now = time.time()
    for name, (step, at, started) in list(steps.items()):
        if step in FINAL_STEPS or now - at < WAITING_EVERY:
            continue
        progress(name, "waiting", {"waiting_for": WAITING_FOR.get(step, "after " + step), "elapsed_ms": int((now - started) * 1000)})
        steps[name] = (step, now, started)


def _seconds(ms):
    return f"{ms / 1000:.1f} s"


def progress_line(name, step, data):
    """
    One line per clone step, its name and step in columns: `web1  started  0.6 s` (the time
    since the create began, as the sidecar's event says), `web1  failed  2.1 s  <error>`.
    """
    data = data if isinstance(data, dict) else {}
    fields = [name, step if step != "waiting" else data.get("waiting_for", "waiting")]
    if isinstance(data.get("elapsed_ms"), (int, float)):
        fields.append(_seconds(data["elapsed_ms"]))
    if step == "failed" and data.get("error"):
        fields.append(str(data["error"]))
    return "  ".join([f"{fields[0]:<15}", f"{fields[1]:<24}"] + fields[2:]).rstrip()
