//! Nothing a minion can forge moves virtseed. A real, ordinary accepted salt-minion
//! (`mallory`) forges, through Salt's own request channel, everything the bus lets it: the
//! sidecar's return to a waiting front end (`_minion_event` in its `events` form and in its
//! `tag`/`data` form, and a job-cache return through `_syndic_return`), progress events, and a
//! new clone's start event, readiness answers and sign-ins (`salt/auth`). The front ends (`salt-run cloud.profile`,
//! `salt-cloud -p`) print only the sidecar's real answer, the clone is ready only when its
//! real minion (played by a salt-minion built from its seed) proves its key, and its seed
//! stays until then. On 3006.30, 3007.17 and 3008.5.

mod harness;

use harness::site::{master_with_base_conf, play_guest, wait_exit};
use harness::{last_json, text, wait_for, EventLog, Master, Minion, Sidecar};
use serde_json::{json, Value};

use std::time::Duration;

/// Mallory's forgeries, one JSON op per argument, sent through Salt's own request channel
/// with mallory's accepted key:
/// - `{"events": [[tag, data], ...]}`: `_minion_event`, events form (data fired as it is);
/// - `{"tagdata": [tag, top]}`: `_minion_event`, tag/data form (the whole load is fired, with
///   mallory's true id and the keys of `top` at its top);
/// - `{"syndic": [jid, fun, id, return]}`: `_syndic_return`, storing `return` in the job cache
///   (and firing its event) under `id`.
const FORGER: &str = r#"
import json, sys, salt.config, salt.channel.client, salt.minion
opts = salt.config.minion_config(sys.argv[1])
opts.update(salt.minion.resolve_dns(opts))
ch = salt.channel.client.ReqChannel.factory(opts)
try:
    for op in sys.argv[2:]:
        op = json.loads(op)
        if "events" in op:
            load = {"cmd": "_minion_event", "id": opts["id"],
                    "events": [{"tag": t, "data": d} for t, d in op["events"]]}
        elif "tagdata" in op:
            tag, top = op["tagdata"]
            load = dict(top, cmd="_minion_event", id=opts["id"], tag=tag, data={})
        else:
            jid, fun, mid, ret = op["syndic"]
            load = {"cmd": "_syndic_return", "id": opts["id"], "jid": jid, "fun": fun,
                    "return": {mid: {"return": ret, "retcode": 0, "success": True}}}
        ch.send(load, tries=3, timeout=30)
    print("forged", len(sys.argv) - 2, flush=True)
finally:
    ch.close()
"#;

struct Mallory<'a> {
    m: &'a Master,
    _minion: Minion,
}

impl Mallory<'_> {
    fn forge(&self, ops: &[Value]) {
        let out = self
            .m
            .python(FORGER)
            .arg(self.m.dir.join("mallory/minion"))
            .args(ops.iter().map(Value::to_string))
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out.stdout).contains("forged"),
            "the forger failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Every form of a forged return `ret` for job `jid` (`fun`) under minion `id`.
    fn forge_return(&self, jid: &str, fun: &str, id: &str, ret: Value) {
        let tag = format!("salt/job/{jid}/ret/{id}");
        let load =
            json!({"id": id, "jid": jid, "fun": fun, "return": ret, "success": true, "retcode": 0});
        self.forge(&[
            json!({"events": [[tag, load]]}),
            json!({"tagdata": [tag, {"jid": jid, "fun": fun, "return": ret, "success": true, "retcode": 0}]}),
            json!({"syndic": [jid, fun, id, ret]}),
        ]);
    }
}

/// An ordinary minion, accepted, answering.
fn mallory(m: &Master) -> Mallory<'_> {
    let minion = Minion::accepted(m, "mallory");
    Mallory { m, _minion: minion }
}

/// The jid of the first job published after `after` events matching `fun` and `tgt`.
fn published(events: &EventLog, after: usize, fun: &str, tgt: &str) -> String {
    let mut jid = String::new();
    wait_for(
        &format!("the publication of {fun} to {tgt}"),
        Duration::from_secs(120),
        || {
            jid = events
                .events()
                .iter()
                .skip(after)
                .find(|e| {
                    let d = &e["data"];
                    e["tag"].as_str().is_some_and(|t| t.ends_with("/new"))
                        && d["fun"].as_str().is_some_and(|f| f.starts_with(fun))
                        && (d["tgt"] == tgt || d["tgt"] == json!([tgt]))
                })
                .and_then(|e| e["data"]["jid"].as_str().map(str::to_string))
                .unwrap_or_default();
            !jid.is_empty()
        },
    );
    jid
}

/// Everything the master's processes and the Salt CLIs logged (the master's `log` dir).
fn logs(m: &Master) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(m.dir.join("log")).unwrap().flatten() {
        all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    all
}

fn tagged(events: &EventLog, tag: &str) -> bool {
    events.events().iter().any(|e| e["tag"] == tag)
}

/// One create through a front end while mallory forges its answer, its progress and its
/// clone's readiness; then the clone's real minion comes and the real answer arrives.
fn forged_create(
    m: &Master,
    p: &harness::pool::Pool,
    events: &EventLog,
    mal: &Mallory,
    front: &[&str],
    name: &str,
) {
    let mark = events.events().len();
    let mut args = front[1..].to_vec();
    args.push(name);
    let child = m.tool_bg(front[0], &args);
    // salt-cloud asks `cloud.list_nodes` first: the create is `cloud.profile` (or `create`).
    let job = published(events, mark, "cloud.profile", "virtseed");
    let fun = events
        .events()
        .iter()
        .find(|e| e["tag"] == format!("salt/job/{job}/new"))
        .and_then(|e| e["data"]["fun"].as_str().map(str::to_string))
        .unwrap();

    // The sidecar's answer, forged three ways, and a progress step it never fired.
    mal.forge_return(
        &job,
        &fun,
        "virtseed",
        json!({name: {"forged": "by mallory", "minion_up": true}}),
    );
    mal.forge(&[json!({"tagdata": [format!("salt/cloud/{name}/forged_step"), {"name": name, "elapsed_ms": 1}]})]);

    // The clone's start event, then answers to its readiness check, all forged.
    let seed = p.dir.join(format!("{name}-seed.img"));
    wait_for("the seed", Duration::from_secs(60), || {
        seed.exists() && m.pki().join("minions").join(name).exists()
    });
    // A master with `zmq_filtering` gives its clones the same.
    let ud = harness::mread(&seed, "user-data");
    let master = std::fs::read_to_string(m.dir.join("master")).unwrap();
    assert_eq!(
        ud.contains("zmq_filtering: true"),
        master.contains("zmq_filtering: True"),
        "{ud}"
    );
    let start = format!("salt/minion/{name}/start");
    mal.forge(&[
        json!({"events": [[start, {"id": name, "cmd": "_minion_event", "data": "Minion started"}]]}),
        json!({"tagdata": [start, {"data": "Minion started"}]}),
    ]);
    let check = published(events, mark, "slsutil.renderer", name);
    for answer in [json!(true), json!("0000"), json!(format!("{:064x}", 7))] {
        mal.forge_return(&check, "slsutil.renderer", name, answer);
    }
    // `salt/auth` for the new name, a pending key, an acceptance and a denial of mallory's key.
    let minted = std::fs::read_to_string(m.pki().join("minions").join(name)).unwrap();
    let theirs = std::fs::read_to_string(m.dir.join("mallory/pki/minion.pub")).unwrap();
    let auth =
        |act: &str| json!({"id": name, "act": act, "result": act != "denied", "pub": theirs});
    mal.forge(&[
        json!({"events": [["salt/auth", auth("pend")], ["salt/auth", auth("accept")], ["salt/auth", auth("denied")]]}),
        json!({"tagdata": ["salt/auth", auth("denied")]}),
    ]);
    std::thread::sleep(Duration::from_secs(4));
    let minion_up = format!("salt/cloud/{name}/minion_up");
    assert!(
        !tagged(events, &minion_up),
        "forgeries made {name} ready: {}",
        events.text()
    );
    assert!(seed.exists(), "the seed went while {name} was not up");

    // The real minion comes: the real answer arrives, the forged ones are nowhere.
    let guest = play_guest(m, p, name);
    let out = wait_exit(child, Duration::from_secs(240));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{front:?}: {stdout}\n{stderr}\n{}",
        guest.log_text()
    );
    let ret = last_json(&out);
    let mine = &ret[name];
    assert_eq!(mine["minion_up"], true, "{ret}");
    assert!(
        mine["forged"].is_null(),
        "the forged answer was printed: {ret}"
    );
    assert!(!stdout.contains("forged"), "{stdout}");
    assert!(tagged(events, &minion_up));
    // The front end says what it ignored, and who sent it where Salt says (its log).
    let said = format!("{stderr}{}", logs(m));
    for from in ["minion 'mallory'", "an unknown sender"] {
        let line = format!(
            "ignored an answer to {fun} (job {job}) under the sidecar's id 'virtseed' from {from}"
        );
        assert!(said.contains(&line), "not reported: {line}\n{said}");
    }
    let (ok, v) = m.salt_json(name, &["test.ping"], 30);
    assert!(ok && v[name] == true, "{v}");
    // The forged sign-ins changed no key and reported nothing.
    assert_eq!(
        std::fs::read_to_string(m.pki().join("minions").join(name)).unwrap(),
        minted
    );
    assert!(!m.pki().join("minions_pre").join(name).exists());
    assert!(
        !events
            .events()
            .iter()
            .any(|e| e["tag"] == "virtseed/key/denied" && e["data"]["id"] == name),
        "a forged denial was reported"
    );
    drop(guest);
}

/// Another host signs in under the next clone's name before virtseed makes it (a real
/// salt-minion, its key pending): the minted key is accepted, the impostor's pending key is
/// removed and reported, and the clone (played from its seed) signs in and answers. On 3008
/// a pending key left beside the accepted one keeps the clone out (its key store reads
/// pending first).
fn impostor_signed_in_first(m: &Master, p: &harness::pool::Pool, events: &EventLog, name: &str) {
    let conf = format!(
        "id: {name}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n",
        m.port("ret_port"),
        m.port("publish_port")
    );
    let impostor = Minion::start(m, &m.dir.join("impostor"), &conf);
    harness::wait_for(
        "the impostor's pending key",
        Duration::from_secs(120),
        || m.pki().join("minions_pre").join(name).exists(),
    );
    drop(impostor);
    let theirs = std::fs::read_to_string(m.dir.join("impostor/pki/minion.pub")).unwrap();
    let child = m.salt_run_bg(&["--out", "json", "cloud.profile", "web", name]);
    harness::wait_for("the minted key", Duration::from_secs(120), || {
        m.pki().join("minions").join(name).exists()
    });
    let guest = play_guest(m, p, name);
    let out = wait_exit(child, Duration::from_secs(240));
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        guest.log_text()
    );
    assert_eq!(last_json(&out)[name]["minion_up"], true);
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(name)).unwrap();
    assert_ne!(
        salt_proto::keys::clean_key(&accepted),
        salt_proto::keys::clean_key(&theirs)
    );
    assert!(!m.pki().join("minions_pre").join(name).exists());
    assert!(
        events
            .events()
            .iter()
            .any(|e| e["tag"] == "virtseed/key/denied" && e["data"]["id"] == name),
        "the impostor's key was not reported: {}",
        events.text()
    );
    let (ok, v) = m.salt_json(name, &["test.ping"], 30);
    assert!(ok && v[name] == true, "{v}");
    drop(guest);
}

/// A reactor on `salt/cloud/*/created` that checks the event with `virtseed.proven` and says
/// what it found: `virtseed-test/proven/<name>` or `virtseed-test/unproven/<name>`.
const REACTOR: &str = r#"{% set name = tag.split('/')[2] %}
{% if salt['virtseed.proven'](tag, data) %}
proven:
  runner.event.send:
    - args:
      - tag: virtseed-test/proven/{{ name }}
{% else %}
unproven:
  runner.event.send:
    - args:
      - tag: virtseed-test/unproven/{{ name }}
{% endif %}
"#;

fn scenario(version: &str, master_conf: &str) {
    let sls = std::env::temp_dir().join(format!(
        "virtseed-reactor-{}.sls",
        &salt_proto::auth::new_nonce()[..8]
    ));
    std::fs::write(&sls, REACTOR).unwrap();
    let master_conf = format!(
        "{master_conf}\nreactor:\n  - 'salt/cloud/*/created':\n    - {}\n",
        sls.display()
    );
    let (m, p, _) = master_with_base_conf(
        version,
        &master_conf,
        &format!("fg{}", &version[..4]),
        |base| {
            format!("web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  minion_timeout: 240\n")
        },
    );
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    m.install_modules();
    let events = EventLog::start(&m);
    let mal = mallory(&m);
    let (a, b) = (format!("{}a", p.prefix), format!("{}b", p.prefix));

    forged_create(
        &m,
        &p,
        &events,
        &mal,
        &["salt-run", "--out", "json", "cloud.profile", "web"],
        &a,
    );
    forged_create(
        &m,
        &p,
        &events,
        &mal,
        &["salt-cloud", "--out", "json", "-y", "-p", "web"],
        &b,
    );
    let c = format!("{}c", p.prefix);
    impostor_signed_in_first(&m, &p, &events, &c);
    let log = sidecar.log_text();
    assert!(
        log.contains("ignored an answer to the readiness check"),
        "the sidecar did not report the forged readiness answers: {log}"
    );

    // Reactors: `virtseed.proven` takes the sidecar's own `created` events, and neither an
    // event mallory makes up nor the sidecar's own fired again by mallory, fields beside it.
    let fake = format!("{}f", p.prefix);
    let real = events
        .events()
        .into_iter()
        .find(|e| e["tag"] == format!("salt/cloud/{a}/created"))
        .expect("the sidecar's created event");
    let mut replayed = real["data"].clone();
    replayed.as_object_mut().unwrap().remove("_stamp");
    // Salt drops `salt/cloud/*` tags in `_minion_event`'s events form, not in its tag/data
    // form, which fires the whole load (the sender's `cmd`, `id`, `tag`, `data` beside the
    // fields it chose): a made-up event, and the sidecar's own with its proof.
    mal.forge(&[
        json!({"tagdata": [format!("salt/cloud/{fake}/created"), {"name": fake, "event": "created instance"}]}),
        json!({"tagdata": [format!("salt/cloud/{a}/created"), replayed]}),
    ]);
    for n in [&a, &b] {
        wait_for(
            &format!("the reactor taking {n}'s created event"),
            Duration::from_secs(120),
            || tagged(&events, &format!("virtseed-test/proven/{n}")),
        );
    }
    let unproven = |x: &str| {
        events
            .events()
            .iter()
            .filter(|e| e["tag"] == format!("virtseed-test/unproven/{x}"))
            .count()
    };
    let t = std::time::Instant::now();
    while !(unproven(&fake) >= 1 && unproven(&a) >= 1) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the reactor did not refuse the forged and tampered events: {}",
            logs(&m)
                .lines()
                .filter(|l| l.contains("reactor") || l.contains("virtseed") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!tagged(&events, &format!("virtseed-test/proven/{fake}")));
    let proven_a = events
        .events()
        .iter()
        .filter(|e| e["tag"] == format!("virtseed-test/proven/{a}"))
        .count();
    assert_eq!(proven_a, 1, "the replayed event of {a} was taken");
    std::fs::remove_file(&sls).ok();

    let out = m.salt_run(&["--out", "json", "cloud.destroy", &format!("{a},{b},{c}")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for n in [&a, &b, &c] {
        harness::site::nothing_left(&m, &p.name, n);
    }
}

/// With `zmq_filtering` (it hides nothing from a minion that wants to see: the test hands
/// mallory the jids; virtseed must work with it).
#[test]
fn forgeries_move_nothing_3006_zmq_filtering() {
    scenario("3006.30", "zmq_filtering: True");
}

#[test]
fn forgeries_move_nothing_3007() {
    scenario("3007.17", "");
}

#[test]
fn forgeries_move_nothing_3008() {
    scenario("3008.5", "");
}
