#!/usr/bin/env python3
"""Writes salt-proto's test vectors with real Salt code.

Run inside a Salt venv against a running private master (scripts/gen-vectors.sh does both):

    python gen-vectors.py MASTER_CONFIG_DIR OUT_DIR

Writes OUT_DIR/<kind>-salt-<version>.json for kind in crypticle, rsa, auth, publish, event.
Everything binary is hex. The keys here are throwaway test keys of a throwaway master.
"""
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid

import salt.client
import salt.config
import salt.crypt
import salt.payload
import salt.utils.crypt
import salt.utils.event
import salt.version
import zmq

VERSION = salt.version.__version__
CONF_DIR, OUT = sys.argv[1], sys.argv[2]
H = lambda b: b.hex()  # noqa: E731


def write(kind, data):
    data["salt_version"] = VERSION
    path = os.path.join(OUT, f"{kind}-salt-{VERSION}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", path)


def priv_key(pem_text):
    if hasattr(salt.crypt, "PrivateKeyString"):
        return salt.crypt.PrivateKeyString(pem_text)
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(pem_text)
    return salt.crypt.PrivateKey(f.name)


def pub_key(pem_text):
    if hasattr(salt.crypt, "PublicKeyString"):
        return salt.crypt.PublicKeyString(pem_text)
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(pem_text)
    return salt.crypt.PublicKey(f.name)


def new_keypair(bits=2048):
    d = tempfile.mkdtemp()
    if hasattr(salt.crypt, "write_keys"):
        salt.crypt.write_keys(d, "k", bits)
    else:
        salt.crypt.gen_keys(d, "k", bits)
    with open(os.path.join(d, "k.pem")) as f:
        priv = f.read()
    with open(os.path.join(d, "k.pub")) as f:
        pub = f.read()
    return priv, pub, d


def crypticle():
    key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc="
    cases = []
    objs = [
        {"cmd": "_return", "id": "m1", "jid": "20240101000000000000", "return": True},
        {"fun": "test.arg", "arg": ["a", 1, {"__kwarg__": True, "k": "v"}], "tgt": "web*",
         "bin": b"\xff\x00\x80", "nested": {"l": [None, 1.5, -3, 2**40]}, "serial": 7},
        "a plain string",
        {},
    ]
    real_urandom = os.urandom
    for i, obj in enumerate(objs):
        for nonce in (None, uuid.UUID(int=i + 1).hex):
            iv = bytes(range(i, i + 16))
            os.urandom = lambda n, iv=iv: iv if n == 16 else real_urandom(n)
            try:
                c = salt.crypt.Crypticle({}, key)
                out = c.dumps(obj, nonce=nonce) if nonce else c.dumps(obj)
            finally:
                os.urandom = real_urandom
            cases.append({"msgpack": H(salt.payload.dumps(obj)), "nonce": nonce,
                          "iv": H(iv), "out": H(out)})
    # AES-256 keys (key_size=256) decrypt the same way.
    key256 = salt.crypt.Crypticle.generate_key_string(key_size=256)
    c256 = salt.crypt.Crypticle({}, key256, key_size=256)
    write("crypticle", {"key_string": key, "cases": cases,
                        "aes256": {"key_string": key256,
                                   "out": H(c256.dumps({"x": 1})), "msgpack": H(salt.payload.dumps({"x": 1}))}})


def rsa():
    priv, pub, d = new_keypair(2048)
    pk, pubk = priv_key(priv), pub_key(pub)
    msg = b"virtseed signs this"
    data = {
        "private_pem": priv,
        "public_pem": pub,
        "x931_salt": H(pk.encrypt(b"salt")),
        "pkcs1_sha1": H(salt.crypt.sign_message(os.path.join(d, "k.pem"), msg)),
        "pkcs1_sha224": H(salt.crypt.sign_message(os.path.join(d, "k.pem"), msg, algorithm="PKCS1v15-SHA224")),
        "message": H(msg),
        "oaep_sha1": H(pubk.encrypt(b"key string text", "OAEP-SHA1")),
        "oaep_sha224": H(pubk.encrypt(b"key string text", "OAEP-SHA224")),
        "oaep_plain": H(b"key string text"),
        "pem_finger": salt.utils.crypt.pem_finger(os.path.join(d, "k.pub")),
        "pem_finger_key": salt.utils.crypt.pem_finger(key=pub),
        "clean_key": salt.crypt.clean_key(pub),
    }
    write("rsa", data)


def master_opts():
    return salt.config.master_config(os.path.join(CONF_DIR, "master"))


def req(opts, load, timeout_ms=10000):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{opts['ret_port']}")
    s.send(salt.payload.dumps({"enc": "clear", "load": load, "version": 3}))
    if not s.poll(timeout_ms):
        s.close()
        return None
    reply = s.recv()
    s.close()
    return reply


def auth_and_publish():
    opts = master_opts()
    pki = opts["pki_dir"]
    with open(os.path.join(pki, "master.pub")) as f:
        master_pub = f.read()
    cases = {}

    def auth(mid, pub, token=None, enc_algo="OAEP-SHA1", sig_algo="PKCS1v15-SHA1", timeout_ms=10000):
        nonce = uuid.uuid4().hex
        load = {"cmd": "_auth", "id": mid, "nonce": nonce, "enc_algo": enc_algo,
                "sig_algo": sig_algo, "pub": salt.crypt.clean_key(pub)}
        if token is not None:
            load["token"] = pub_key(master_pub).encrypt(token, enc_algo)
        reply = req(opts, load, timeout_ms)
        if reply is None and timeout_ms == 10000:
            raise SystemExit(f"master did not answer _auth for {mid}")
        return nonce, reply

    # accepted: key pre-placed in minions/, with a token (master key "cached")
    priv, pub, _ = new_keypair()
    mid = "vector-accepted"
    with open(os.path.join(pki, "minions", mid), "w") as f:
        f.write(pub)
    token = b"A" * 76
    nonce, reply = auth(mid, pub, token)
    inner = salt.payload.loads(salt.payload.loads(reply)["load"])
    pk = priv_key(priv)
    aes = pk.decrypt(inner["aes"])
    session = pk.decrypt(inner["session"])
    cases["accepted"] = {"id": mid, "nonce": nonce, "reply": H(reply), "private_pem": priv,
                         "public_pem": pub, "token": H(token), "aes": aes.decode(),
                         "session": session.decode(), "publish_port": opts["publish_port"]}
    # accepted with SHA224 algorithms, no token
    nonce2, reply2 = auth(mid, pub, None, "OAEP-SHA224", "PKCS1v15-SHA224")
    cases["accepted_sha224"] = {"id": mid, "nonce": nonce2, "reply": H(reply2)}
    # pending: unknown key, no autosign
    ppriv, ppub, _ = new_keypair()
    n3, r3 = auth("vector-pending", ppub)
    cases["pending"] = {"id": "vector-pending", "nonce": n3, "reply": H(r3), "private_pem": ppriv}
    # denied: same id as the accepted one, another key
    n4, r4 = auth(mid, ppub)
    cases["denied"] = {"id": mid, "nonce": n4, "reply": H(r4)}
    # bad algorithm: unsigned clear reply
    # 3008 answers an unsigned "bad enc algo"; 3006/3007 raise in the handler and never reply.
    n5, r5 = auth(mid, pub, None, "OAEP-MD5", timeout_ms=3000)
    cases["bad_enc_algo"] = {"id": mid, "nonce": n5, "reply": H(r5) if r5 else None}
    write("auth", {"master_pub": master_pub, "cases": cases})

    # A real publication to that minion, as its SUB socket receives it.
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{opts['publish_port']}")
    time.sleep(1.0)

    lc = salt.client.LocalClient(mopts=opts)
    jid = lc.cmd_async(mid, "test.arg", ["a", 1], kwarg={"k": "v"})
    frames = None
    deadline = time.time() + 10
    while time.time() < deadline:
        if sub.poll(1000):
            frames = sub.recv_multipart()
            break
    if frames is None:
        raise SystemExit("no publication seen")
    write("publish", {"aes": aes.decode(), "master_pub": master_pub, "id": mid,
                      "jid": str(jid), "frames": [H(f) for f in frames]})
    return opts


def events(opts):
    """Event bus bytes both ways: what a subscriber reads from the real master, and what
    Salt's own firer writes to the pull socket."""
    data = {"k": "v", "n": 1, "bin": b"\xff\x00", "l": [1, "two"]}
    # Subscriber side: read the real publisher while Salt fires an event.
    sub = socket.socket(socket.AF_UNIX)
    sub.connect(os.path.join(opts["sock_dir"], "master_event_pub.ipc"))
    sub.settimeout(0.3)
    time.sleep(0.5)
    ev = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
    ev.fire_event(data, "virtseed/vector")
    got = b""
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            chunk = sub.recv(65536)
            if not chunk:
                break
            got += chunk
            if b"virtseed/vector" in got:
                # keep reading briefly to finish the frame
                deadline = min(deadline, time.time() + 0.5)
        except socket.timeout:
            if b"virtseed/vector" in got:
                break
    sub.close()
    ev.destroy() if hasattr(ev, "destroy") else None

    # Firer side: a fake pull socket records what fire_event writes.
    tmp = tempfile.mkdtemp(prefix="vs-ev")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(os.path.join(tmp, "master_event_pull.ipc"))
    srv.listen(1)
    fired = []

    def accept():
        c, _ = srv.accept()
        c.settimeout(2)
        buf = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout:
            pass
        fired.append(buf)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    fopts = dict(opts)
    fopts["sock_dir"] = tmp
    ev2 = salt.utils.event.get_master_event(fopts, tmp, listen=False)
    ev2.fire_event(data, "virtseed/vector")
    time.sleep(0.5)
    ev2.destroy() if hasattr(ev2, "destroy") else None
    t.join(5)
    write("event", {"tag": "virtseed/vector", "data_msgpack": H(salt.payload.dumps(data, use_bin_type=True)),
                    "subscribed_stream": H(got), "fired": H(fired[0] if fired else b"")})


crypticle()
rsa()
o = auth_and_publish()
events(o)
