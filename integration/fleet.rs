//! The sidecar in a real fleet, on real masters of each line (3006.30, 3007.17, 3008.5)
//! with a real salt-minion beside it: every target type the master resolves counts the
//! sidecar in exactly when the sidecar answers (the master's own expected-minion list,
//! from `run_job`, against the returns in its job cache), and the commands operators run
//! against `'*'` every day exit 0.

mod harness;

use harness::{text, Master, Minion, Sidecar};
use serde_json::{json, Value};
use std::time::Duration;

const NODEGROUPS: &str = "nodegroups:\n  everyone: '*'\n  infra: 'I@role:infra or G@virtseed:role:sidecar'\n  webs: 'web*'\n  pair: [web1, virtseed]\n";

/// Pillar: `dc` for everyone, `role: infra` for the sidecar; states: a no-op for everyone.
fn trees(m: &Master) {
    let w = |p: &str, s: &str| std::fs::write(m.dir.join(p), s).unwrap();
    w(
        "srv/pillar/top.sls",
        "base:\n  '*':\n    - common\n  virtseed:\n    - infra\n",
    );
    w("srv/pillar/common.sls", "dc: fra1\n");
    w("srv/pillar/infra.sls", "role: infra\n");
    w("srv/salt/top.sls", "base:\n  '*':\n    - noop\n");
    w("srv/salt/noop.sls", "noop:\n  test.nop: []\n");
}

/// Publishes `test.ping` to each target at once through Salt's LocalClient, then reads
/// back, per job, the minions the master expected (`run_job`'s `minions`, from
/// `CkMinions.check_minions`) and those that returned (the master's job cache).
const MATRIX: &str = r#"
import contextlib, json, os, sys, time, salt.client, salt.config
opts = salt.config.client_config(os.path.join(os.environ["MASTER_DIR"], "master"))
client = salt.client.LocalClient(mopts=opts)
cases = json.loads(sys.argv[1])
jobs = []
for tgt_type, tgt in cases:
    with contextlib.redirect_stdout(sys.stderr):  # "No minions matched the target."
        pub = client.run_job(tgt, "test.ping", tgt_type=tgt_type, timeout=30)
    jobs.append((tgt_type, tgt, pub.get("jid"), sorted(pub.get("minions", []))))
deadline = time.time() + 30
out = []
for tgt_type, tgt, jid, expected in jobs:
    got = {}
    while jid and time.time() < deadline:
        got = client.get_cache_returns(jid) or {}
        if set(expected) <= set(got):
            break
        time.sleep(0.2)
    out.append({"tgt_type": tgt_type, "tgt": tgt, "jid": jid, "expected": expected})
time.sleep(2)  # a return the master did not wait for would land meanwhile
for row in out:
    row["returned"] = sorted(client.get_cache_returns(row["jid"]) or {}) if row["jid"] else []
print(json.dumps(out))
"#;

/// `(tgt_type, tgt, whether the master should count the sidecar in)`, with the cache on
/// and the sidecar's grains and pillar in it.
fn targets() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("glob", json!("*"), true),
        ("glob", json!("web*"), false),
        ("pcre", json!("virt.*"), true),
        ("pcre", json!("web.*"), false),
        ("list", json!("web1,virtseed"), true),
        ("list", json!(["web1"]), false),
        ("grain", json!("virtseed:role:sidecar"), true),
        ("grain", json!("kernel:Linux"), false),
        ("grain_pcre", json!("virtseed:version:.*"), true),
        ("grain_pcre", json!("os_family:.*"), false),
        ("pillar", json!("role:infra"), true),
        ("pillar", json!("dc:fra1"), true),
        ("pillar", json!("role:web"), false),
        ("pillar_pcre", json!("role:inf.*"), true),
        ("pillar_pcre", json!("role:web.*"), false),
        ("pillar_exact", json!("role:infra"), true),
        ("pillar_exact", json!("role:infr*"), false),
        ("ipcidr", json!("127.0.0.0/8"), false),
        ("compound", json!("* and not G@os:Windows"), true),
        ("compound", json!("* and not G@virtseed:*"), false),
        ("compound", json!("G@os:Debian or virt*"), true),
        (
            "compound",
            json!("( web* or virt* ) and not I@role:infra"),
            false,
        ),
        (
            "compound",
            json!("L@web1,virtseed and G@virtseed:role:sidecar"),
            true,
        ),
        ("compound", json!("not web1"), true),
        ("compound", json!("web1 or S@10.0.0.0/8"), false),
        ("compound", json!("N@infra and not G@kernel:Windows"), true),
        ("nodegroup", json!("everyone"), true),
        ("nodegroup", json!("infra"), true),
        ("nodegroup", json!("webs"), false),
        ("nodegroup", json!("pair"), true),
    ]
}

fn matrix(m: &Master, cases: &[(&str, Value, bool)]) -> Vec<Value> {
    let arg: Vec<Value> = cases.iter().map(|(t, e, _)| json!([t, e])).collect();
    let out = m
        .python(MATRIX)
        .arg(serde_json::to_string(&arg).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(rows.len(), cases.len());
    rows
}

/// Every target: the sidecar returned exactly when the master expected it, the master's
/// expectation is the one written beside the target, and web1 answered where expected.
fn check_matrix(m: &Master, cases: &[(&str, Value, bool)], web1_matches: bool) {
    let rows = matrix(m, cases);
    let mut wrong = Vec::new();
    for (row, (_, _, counted)) in rows.iter().zip(cases) {
        let has = |k: &str, id: &str| row[k].as_array().unwrap().iter().any(|x| x == id);
        if has("expected", "virtseed") != has("returned", "virtseed")
            || has("expected", "virtseed") != *counted
            || (web1_matches && has("expected", "web1") != has("returned", "web1"))
        {
            wrong.push(row.to_string());
        }
    }
    assert!(
        wrong.is_empty(),
        "Salt {}: targets where the sidecar and the master disagree:\n{}",
        m.version,
        wrong.join("\n")
    );
}

/// `salt --out json ARGS`: exit 0, every minion's answer present, none missing.
fn fleet_run(m: &Master, args: &[&str]) -> Value {
    let mut all = vec!["--out", "json", "--static", "-t", "60"];
    all.extend_from_slice(args);
    let out = m.salt(&all);
    let so = text(&out.stdout);
    assert!(
        out.status.success() && !so.contains("did not return") && !so.contains("not available"),
        "salt {}: exit {:?}\n{so}\n{}",
        args.join(" "),
        out.status.code(),
        text(&out.stderr)
    );
    let v: Value = serde_json::from_str(&so).unwrap_or_else(|e| panic!("{e}: {so}"));
    for id in ["web1", "virtseed"] {
        assert!(
            v.get(id).is_some(),
            "salt {}: no {id} in {v}",
            args.join(" ")
        );
    }
    v
}

fn scenario(version: &str) {
    let m = Master::start_with(version, NODEGROUPS);
    trees(&m);
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("reported grains to the master", Duration::from_secs(60));
    let _web1 = Minion::accepted(&m, "web1");

    check_matrix(&m, &targets(), true);

    // What operators run against the fleet, every day.
    let v = fleet_run(&m, &["*", "test.ping"]);
    assert_eq!(v["virtseed"], true);
    fleet_run(&m, &["-C", "* and not G@os:Windows", "test.ping"]);
    fleet_run(&m, &["-N", "everyone", "test.ping"]);
    let v = fleet_run(&m, &["*", "grains.item", "os", "virtseed:role"]);
    assert_eq!(v["virtseed"]["virtseed:role"], "sidecar", "{v}");
    assert_eq!(v["virtseed"]["os"], "", "{v}");
    let v = fleet_run(&m, &["*", "saltutil.sync_all"]);
    assert_eq!(v["virtseed"]["modules"], json!([]), "{v}");
    let v = fleet_run(&m, &["*", "state.apply"]);
    let ours = v["virtseed"].as_object().unwrap();
    assert!(ours.values().all(|s| s["result"] == true), "{v}");
    fleet_run(&m, &["*", "saltutil.refresh_pillar"]);
    let v = fleet_run(&m, &["*", "pillar.get", "role"]);
    assert_eq!(v["virtseed"], "infra", "{v}");
    fleet_run(&m, &["*", "test.version"]);
    // Anything else gets Salt's own answer, and the exit code says so.
    let out = m.salt(&["--out", "json", "-t", "30", "virtseed", "cmd.run", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("'cmd.run' is not available."));

    for (fun, needle) in [
        ("manage.status", "virtseed"),
        ("manage.versions", "Up to date"),
        ("jobs.active", ""),
    ] {
        let out = m.salt_run(&["--out", "json", fun]);
        let so = text(&out.stdout);
        assert!(
            out.status.success() && so.contains(needle),
            "salt-run {fun}: exit {:?}\n{so}\n{}",
            out.status.code(),
            text(&out.stderr)
        );
        if fun == "manage.versions" {
            let v: Value = serde_json::from_str(&so).unwrap();
            assert!(
                v["Up to date"].get("virtseed").is_some(),
                "the sidecar speaks its master's release: {v}"
            );
        }
    }
    let out = m.salt_run(&["--out", "json", "cache.grains", "tgt=virtseed"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        v["virtseed"]["virtseed"]["role"],
        "sidecar",
        "{v}\n{}",
        text(&out.stderr)
    );
}

#[test]
fn fleet_salt_3006() {
    scenario("3006.30");
}

#[test]
fn fleet_salt_3007() {
    scenario("3007.17");
}

#[test]
fn fleet_salt_3008() {
    scenario("3008.5");
}

/// With `minion_data_cache: False` the master cannot see grains or pillar: it counts every
/// minion in grain and pillar targets (and, up to 3007, in compounds); the sidecar answers
/// those too, so none waits on it.
#[test]
fn fleet_without_minion_data_cache_3007() {
    let m = Master::start_with(
        "3007.17",
        &format!("minion_data_cache: False\n{NODEGROUPS}"),
    );
    trees(&m);
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("reported grains to the master", Duration::from_secs(60));
    let _web1 = Minion::accepted(&m, "web1");
    check_matrix(
        &m,
        &[
            ("grain", json!("kernel:Windows"), true),
            ("pillar", json!("role:web"), true),
            ("compound", json!("* and not G@virtseed:*"), true),
            ("ipcidr", json!("10.0.0.0/8"), true),
            ("glob", json!("web*"), false),
        ],
        // web1 matches on its own grains: counted in, it does not answer (Salt's way).
        false,
    );
}
