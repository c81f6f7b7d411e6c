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

``seed: ssh`` (templates with neither cloud-init nor virtseed's guest unit, as salt-cloud's
libvirt guide assumes): here Salt's pair is kept. Only its public half goes to the sidecar
(job argument ``minion_pub``), which pre-accepts exactly that key, atomically, and clones
and starts the VM without a seed (with ``ssh_forward: true``, a loopback port forwarded to
the guest's port 22). Then this driver, in salt-cloud's process, finds the address, waits
for SSH and runs Salt's own ``salt.utils.cloud.bootstrap`` (``deploy_script``: the guide's
``deploy_command``/``script``/``script_args``/``file_map``/``sudo`` as users wrote them),
which sends the private key to the guest over SSH only, waits for the minion, and on any
failure asks the sidecar to destroy the clone, which removes the key.
"""

import binascii
import logging
import os
import socket
import sys
import time

import salt.client
import salt.cloud
import salt.config as config
import salt.utils.event
import salt.utils.cloud
import salt.utils.yaml
from salt.exceptions import SaltCloudPasswordError, SaltCloudSystemExit


# The client beside this file: the package's (`saltext.virtseed`, pip). `virtseed
# install-runner` rewrites this line in its copies for extension_modules, whose client is
# extension_modules/utils/virtseed_client.py: never the other one, both may be installed, of
# different releases.
from saltext.virtseed.utils import virtseed_client as vc  # virtseed: client import
from saltext.virtseed.utils import virtseed_proof  # virtseed: proof import

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
    """
    This provider's part of a `{alias: {driver: {...}}}` answer. A host of it that could not
    be listed is the listing's `Error`, beside what its other hosts hold (every other
    provider is listed as usual): kept there for the listings salt-cloud shows (`-Q`, `-F`,
    `-S`, `--list-images`), and logged, for the lookups that show nothing (`-d`, `-a`, maps,
    the `cloud` states go through `list_nodes_min`).
    """
    mine = ret.get(_alias(), {})
    if isinstance(mine, dict) and "Error" in mine:
        raise SaltCloudSystemExit(_text(mine["Error"]))
    listing = mine.get(__virtualname__, {}) if isinstance(mine, dict) else {}
    err = vc.listing_error(listing)
    if err:
        log.warning("virtseed: %s", err)
    return listing


def _must_not_be_action(call, fun):
    if call == "action":
        raise SaltCloudSystemExit(f"The {fun} function must be called with -f or --function.")


def _must_be_action(call, fun):
    if call != "action":
        raise SaltCloudSystemExit(f"The {fun} action must be called with -a or --action.")


# --- create / destroy -------------------------------------------------------------------

def _remove_salt_key(vm_):
    """
    Removes the key `Cloud.create` accepted for this VM, if the file still holds exactly that
    key (virtseed pre-accepts its own, or, with `seed: ssh`, this very key, atomically).
    """
    pub = vm_.get("pub_key")
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
    `seed: ssh`, written or implied (`_deploys_by_ssh`): then deploy over SSH (`_create_by_ssh`).
    """
    if _deploys_by_ssh(vm_):
        return _create_by_ssh(vm_)
    _remove_salt_key(vm_)
    vm_.pop("pub_key", None)
    vm_.pop("priv_key", None)
    return _clone(vm_)


def _deploys_by_ssh(vm_):
    """
    `seed: ssh` as written; without `seed:`, salt-cloud's deploy keys (`ssh_username` with
    `password` or `private_key`, and `deploy` not false), as in the guide's profile. The
    sidecar's config applies the same rule (src/config/cloud/resolve.rs, `Lookup::seed`);
    `vm_` holds the main `cloud` file, the provider and the profile merged, as it looks there.
    """
    if vm_.get("seed") is not None:
        return str(vm_["seed"]) == "ssh"
    given = lambda key: vm_.get(key) not in (None, "")  # noqa: E731
    return (
        given("ssh_username")
        and (given("password") or given("private_key"))
        and vm_.get("deploy") is not False
    )


def _clone(vm_, extra=None):
    """Asks the sidecar for the clone; returns its report, raises on its error."""
    name = vm_["name"]
    profile = vm_.get("profile")
    if profile and profile in __opts__.get("profiles", {}):
        over = _overrides(vm_, profile)
        over.update(extra or {})
        ret = _forward("cloud.profile", [profile, [name]], over, [name],
                       sidecar=vc.sidecar_for_profile(__opts__, profile))
    else:
        kw = _forwardable(vm_)
        kw.update(extra or {})
        ret = _forward("cloud.create", [_alias(), [name]], kw, [name])
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
    """
    What Salt's lookups use (`-d`, `-a`, `-p`'s and maps' check for existing VMs, the `cloud`
    states): the VMs of this provider's hosts that answered, never an `Error` entry (Salt
    would take it for a VM: a `--hard` map would destroy it).
    """
    _must_not_be_action(call, "list_nodes_min")
    nodes = vc.without_error(list_nodes(call="function"))
    return {n: {"id": v.get("id"), "state": v.get("state")} for n, v in nodes.items()}


def list_nodes_select(call=None):
    """The fields `query.selection` names (in the cloud config), else list_nodes' own."""
    selection = __opts__.get("query.selection") or DEFAULT_SELECTION
    nodes = list_nodes_full(call="function")
    ret = salt.utils.cloud.list_nodes_select(vc.without_error(nodes), selection, call)
    err = vc.listing_error(nodes)
    if err:
        ret["Error"] = err
    return ret


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


# --- seed: ssh ---------------------------------------------------------------------------

# Keys of salt-cloud's deploy events that hold secrets, dropped whatever their value.
# Run over SSH before the deploy script (salt-cloud's `preflight_cmds`, after the keys are
# uploaded to its temporary dir): what a template that was booted before left, that the
# deploy does not replace. The minion's old key, id and cache; cloud-init's instance state;
# dhclient's leases; SSH host keys older than this boot (made again, each type); a
# machine-id that is not this VM's (its SMBIOS UUID). As virtseed's guest side does for the
# seeded flows (guest/virtseed-credentials.sh).
CLEAN_TEMPLATE_STATE = (
    "sh -c '"
    "rm -f /etc/salt/pki/minion/minion.pem /etc/salt/pki/minion/minion.pub "
    "/etc/salt/pki/minion/minion_master.pub /etc/salt/minion_id; "
    "rm -rf /var/cache/salt/minion /var/lib/cloud/instance /var/lib/cloud/instances "
    "/var/lib/cloud/data /var/lib/cloud/sem; rm -f /var/lib/dhcp/*.lease*; "
    "for k in /etc/ssh/ssh_host_*_key; do [ -e \"$k\" ] && [ \"$k\" -ot /run/systemd ] || continue; "
    "t=${k##*/ssh_host_}; t=${t%_key}; rm -f \"$k\" \"$k.pub\"; "
    "ssh-keygen -q -t \"$t\" -N \"\" -f \"$k\"; done; "
    "u=$(tr -d - 2>/dev/null < /sys/class/dmi/id/product_uuid); "
    "[ -z \"$u\" ] || [ \"$(cat /etc/machine-id 2>/dev/null)\" = \"$u\" ] || echo \"$u\" > /etc/machine-id; "
    "true'"
)

SECRET_EVENT_KEYS = ("password", "passwd", "priv_key", "private_key", "minion_pem", "master_pem")


class DeployFailed(Exception):
    """A step of the SSH deploy failed; the message names it."""


def _create_by_ssh(vm_):
    """
    `seed: ssh`: Salt's keypair (made by `Cloud.create`, or here) is deployed over SSH by
    Salt's own `bootstrap`; the sidecar clones without a seed and pre-accepts exactly its
    public half. Any failure after the clone destroys it, key and all.
    """
    name = vm_["name"]
    begun = time.time()
    if not vm_.get("pub_key") or not vm_.get("priv_key"):
        keysize = config.get_cloud_config_value("keysize", vm_, __opts__, default=2048)
        vm_["priv_key"], vm_["pub_key"] = salt.utils.cloud.gen_keys(keysize)
    _remove_salt_key(vm_)
    # `seed: ssh` said outright: the sidecar never sees the password (not forwarded), so a
    # map entry's own password would not imply it there.
    out = _clone(vm_, {"minion_pub": vm_["pub_key"], "wait_for_minion": False, "seed": "ssh"})
    # As the seeded clones: the master's own ports unless the profile's `minion:` says.
    mopts = vc.master_opts(__opts__)
    minion = dict(vm_.get("minion") or {})
    minion.setdefault("master_port", mopts.get("ret_port", 4506))
    minion.setdefault("publish_port", mopts.get("publish_port", 4505))
    vm_["minion"] = minion
    t0 = time.time()
    try:
        _deploy_and_wait(vm_, out)
    except Exception as exc:  # pylint: disable=broad-except
        why = str(exc) if isinstance(exc, DeployFailed) else f"SSH deploy: {exc}"
        try:
            _forward("cloud.destroy", [[name]], {}, [name])
            done = "the clone was destroyed with its key"
        except Exception as derr:  # pylint: disable=broad-except
            done = f"destroying the clone failed too ({derr}): see `salt-cloud -Q`"
        _fire(vm_, "failed", {"error": f"{why}; {done}"})
        raise SaltCloudSystemExit(f"{name}: {why}; {done}") from None
    timings = out.setdefault("timings_ms", {})
    timings["deployed_and_up"] = int((time.time() - t0) * 1000)
    # As the seeded clones' `first_ping`: from this create's start to the minion's answer.
    timings["first_ping"] = int((time.time() - begun) * 1000)
    out["deployed"] = True
    out["minion_up"] = True
    # The clone had no address when it was made (not booted yet): its address now, as the
    # seeded clones' returns and `created` events carry it.
    ips = _addresses_now(name)
    if ips:
        out.update(ips)
        out.pop("ip_note", None)
    _fire(vm_, "created", dict({"event": "created instance"}, **ips))
    return out


def _addresses_now(name):
    """The VM's `public_ips`/`private_ips` as `show_instance` gives them now; {} if none."""
    try:
        node = _action("show_instance", name) or {}
    except Exception:  # pylint: disable=broad-except
        return {}
    ips = {k: list(node.get(k) or []) for k in ("public_ips", "private_ips")}
    return ips if ips["public_ips"] or ips["private_ips"] else {}


def _deploy_and_wait(vm_, out):
    name = vm_["name"]
    value = lambda key, default=None: config.get_cloud_config_value(key, vm_, __opts__, default=default)
    # As Salt's libvirt driver: `private_key` names the SSH key's file, which `bootstrap`
    # reads as `key_filename`.
    key_file = config.get_cloud_config_value("private_key", vm_, __opts__, search_global=False)
    if key_file and not vm_.get("key_filename"):
        if not os.path.isfile(key_file):
            raise DeployFailed(f"private_key {key_file!r} is not a file on the master")
        vm_["key_filename"] = key_file
    host, port = _address(vm_, out, int(value("wait_for_ip_timeout", 300)))
    vm_["ssh_host"], vm_["ssh_port"] = host, port
    _wait_for_ssh(host, port, int(value("wait_for_ip_timeout", 300)))
    mopts = vc.master_opts(__opts__)
    event = salt.utils.event.get_master_event(mopts, mopts["sock_dir"], listen=True)
    try:
        event.subscribe("")
        user_cmds = config.get_cloud_config_value("preflight_cmds", vm_, __opts__, default=[]) or []
        vm_["preflight_cmds"] = [CLEAN_TEMPLATE_STATE] + list(user_cmds)
        ret = _bootstrap(vm_)
        if isinstance(ret, dict) and "Error" in ret:
            user = value("ssh_username", "root")
            raise DeployFailed(
                f"SSH login to {host}:{port} as {user} failed (password or key refused?): "
                f"{_text(ret['Error'])}"
            )
        _wait_minion(event, mopts, name, int(value("minion_timeout", 300)), vm_["priv_key"])
    finally:
        event.destroy()


def _address(vm_, out, timeout):
    """Where SSH is: the forwarded loopback port, or an address of the VM (ip_source)."""
    if out.get("ssh_port"):
        return "127.0.0.1", int(out["ssh_port"])
    port = int(config.get_cloud_config_value("ssh_port", vm_, __opts__, default=22))
    deadline = time.time() + timeout
    while time.time() < deadline:
        node = _action("show_instance", vm_["name"]) or {}
        ips = list(node.get("public_ips") or []) + list(node.get("private_ips") or [])
        if ips:
            return ips[0], port
        time.sleep(3)
    raise DeployFailed(
        f"no address for {vm_['name']} within {timeout} s (ip_source); under QEMU user "
        "networking set `ssh_forward: true`"
    )


def _wait_for_ssh(host, port, timeout):
    """
    Until an SSH server greets on host:port. A bare TCP connect is not enough: QEMU's
    forwarded port accepts at once, long before the guest's sshd runs.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.settimeout(10)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise DeployFailed(f"no SSH server answered on {host}:{port} within {timeout} s")


def _bootstrap(vm_):
    """
    Salt's `bootstrap`, with secrets kept out of its events: its `deploying` event carries
    the whole `vm_` (Salt 3006-3008 drop `password` and `minion_pem` from the top level
    only), which holds the private key and the password.
    """
    secrets = [str(vm_[k]) for k in ("priv_key", "password", "sudo_password", "private_key") if vm_.get(k)]
    salt_fire = salt.utils.cloud.fire_event

    def fire(key, msg, tag, sock_dir=None, args=None, transport="zeromq"):
        return salt_fire(key, msg, tag, sock_dir, args=_scrub(args, secrets), transport=transport)

    # Imported, not loaded: `bootstrap` reads the loader's `__opts__` (a default argument of
    # its `fire_event` calls, evaluated eagerly), which the loader would have injected.
    had_opts = hasattr(salt.utils.cloud, "__opts__")
    if not had_opts:
        salt.utils.cloud.__opts__ = __opts__
    salt.utils.cloud.fire_event = fire
    try:
        return salt.utils.cloud.bootstrap(vm_, __opts__)
    except SaltCloudPasswordError as exc:
        user = config.get_cloud_config_value("ssh_username", vm_, __opts__, default="root")
        raise DeployFailed(
            f"SSH login to {vm_['ssh_host']}:{vm_['ssh_port']} as {user} failed: {exc}"
        ) from None
    except SaltCloudSystemExit as exc:
        raise DeployFailed(f"the deploy failed on the guest: {exc}") from None
    finally:
        salt.utils.cloud.fire_event = salt_fire
        if not had_opts:
            del salt.utils.cloud.__opts__


def _scrub(data, secrets):
    if isinstance(data, dict):
        return {
            k: _scrub(v, secrets) for k, v in data.items()
            if not any(part in str(k).lower() for part in SECRET_EVENT_KEYS)
        }
    if isinstance(data, (list, tuple)):
        return [_scrub(v, secrets) for v in data]
    if isinstance(data, str) and any(s and s in data for s in secrets):
        return "********"
    return data


def _wait_minion(event, mopts, name, timeout, private_pem):
    """
    Until the deployed minion proves it holds the key deployed for it: its start event (a
    hint: any minion can fire one) sends the readiness check, which is asked again until a
    proven answer or the timeout (see virtseed_proof.challenge).
    """
    deadline = time.time() + timeout
    tag = f"salt/minion/{name}/start"
    while time.time() < deadline:
        ev = event.get_event(wait=1, full=True)
        if ev and ev["tag"] in (tag, "minion_start"):
            if ev["tag"] == tag or ev["data"].get("id") == name:
                break
    else:
        raise DeployFailed(f"the deployed minion {name} did not start within {timeout} s")
    client = salt.client.get_local_client(mopts=mopts)
    while time.time() < deadline:
        nonce = binascii.hexlify(os.urandom(16)).decode()
        wait = max(5, min(30, int(deadline - time.time())))
        got = client.cmd(name, "slsutil.renderer", kwarg=virtseed_proof.challenge(nonce), timeout=wait).get(name)
        if isinstance(got, str) and got.strip() == virtseed_proof.expected(private_pem, nonce):
            return
        if got is not None:
            log.warning("virtseed: ignored an answer to %s's readiness check that does not prove its key", name)
    raise DeployFailed(f"the deployed minion {name} started but did not answer its readiness check")


def _fire(vm_, step, data):
    """
    `salt/cloud/NAME/STEP` with the fields Salt's drivers give it (`filter_event(step, vm_,
    ["name", "profile", "provider", "driver"])`: `profile` only when there is one).
    """
    mopts = vc.master_opts(__opts__)
    fields = {k: vm_[k] for k in ("name", "profile", "provider", "driver") if vm_.get(k)}
    fields.setdefault("provider", _active())
    fields.setdefault("driver", __virtualname__)
    data = dict(data, **fields)
    # `fire_event` sets `args[key] = msg`: the message is the event's `event` field.
    msg = data.pop("event", f"{step} instance")
    salt.utils.cloud.fire_event(
        "event", msg, f"salt/cloud/{vm_['name']}/{step}", mopts["sock_dir"], args=data,
        transport=__opts__.get("transport", "zeromq"),
    )
