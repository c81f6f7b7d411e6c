//! A clone that is the twin of another machine: the same machine-id.
//!
//! A template that was booted before keeps its `/etc/machine-id`. virtseed's guest side (and,
//! for `seed: ssh`, the driver's first `preflight_cmds`) gives each clone its own; a template
//! without it (a stock cloud-init image booted with a minion, say) hands the same id to
//! every clone, and with it the same DHCP client id (one lease for all on a real network),
//! the same journal and the same D-Bus identity. Nothing on libvirt's side tells; the minion
//! does: Salt's `machine_id` grain, which the master caches beside every minion's other
//! grains. A clone whose machine-id another accepted minion reported (its template, or an
//! earlier clone of it) is such a twin.

use super::addresses::{cached_grains, grain_text};
use std::path::Path;

/// The accepted minion other than `id` that reported the same machine-id as `id` (`(its
/// machine-id, the other's id)`), read from the master's data cache (`cachedir`) and its
/// accepted keys (`key_dir/minions`). None when `id` reported none (no cache, no grain) or
/// no other one matches. A minion whose key is gone (a destroyed clone whose cache Salt kept)
/// is not counted.
pub fn machine_id_twin(cachedir: &Path, key_dir: &Path, id: &str) -> Option<(String, String)> {
    let mine = cached_grains(cachedir, id).and_then(|g| grain_text(&g, "machine_id"))?;
    let mine = mine.trim().to_string();
    if mine.is_empty() {
        return None;
    }
    let mut others: Vec<String> = std::fs::read_dir(key_dir.join("minions"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|o| o != id && !o.starts_with('.'))
        .collect();
    others.sort();
    others.into_iter().find_map(|o| {
        let theirs = cached_grains(cachedir, &o).and_then(|g| grain_text(&g, "machine_id"))?;
        (theirs.trim() == mine).then(|| (mine.clone(), o))
    })
}

/// What a create says of a twin: which id, shared with whom, why, what to do.
pub fn twin_error(name: &str, machine_id: &str, other: &str) -> String {
    format!(
        "{name} came up with machine-id {machine_id}, the same as minion {other}: its template \
         keeps a machine-id of its own (a base booted before, without virtseed's guest side to \
         give each clone its own), so every clone of it would share one DHCP client id, one \
         lease and one journal. Empty the template's /etc/machine-id (and remove \
         /var/lib/dbus/machine-id), e.g. `virt-sysprep --operations machine-id -d TEMPLATE`, \
         or install virtseed's guest side in it (docs/golden-images.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    fn write(path: &Path, v: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        std::fs::write(path, buf).unwrap();
    }

    /// 3006/3007's layout (`minions/<id>/data.p`).
    fn older(cache: &Path, id: &str, mid: &str) {
        let grains = Value::Map(vec![(s("id"), s(id)), (s("machine_id"), s(mid))]);
        let data = Value::Map(vec![
            (s("grains"), grains),
            (s("pillar"), Value::Map(vec![])),
        ]);
        write(&cache.join("minions").join(id).join("data.p"), &data);
    }

    /// 3008's (`grains/<id>.p`), strings as binary as some msgpack packers write them.
    fn newer(cache: &Path, id: &str, mid: &str) {
        let grains = Value::Map(vec![(
            Value::Binary(b"machine_id".to_vec()),
            Value::Binary(mid.as_bytes().to_vec()),
        )]);
        write(&cache.join("grains").join(format!("{id}.p")), &grains);
    }

    fn accept(pki: &Path, id: &str) {
        std::fs::create_dir_all(pki.join("minions")).unwrap();
        std::fs::write(pki.join("minions").join(id), "key").unwrap();
    }

    #[test]
    fn a_clone_sharing_an_accepted_minions_machine_id_is_a_twin() {
        let (cache, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (c, p) = (cache.path(), pki.path());
        // Nothing cached for the clone yet: no verdict.
        accept(p, "web2");
        assert_eq!(machine_id_twin(c, p, "web2"), None);
        older(c, "web2", "aaaa");
        older(c, "web1", "bbbb");
        accept(p, "web1");
        assert_eq!(machine_id_twin(c, p, "web2"), None, "distinct ids");
        // The template, once a minion here, reported the clone's id.
        older(c, "template", "aaaa\n");
        assert_eq!(
            machine_id_twin(c, p, "web2"),
            None,
            "a minion whose key is gone is not counted"
        );
        accept(p, "template");
        assert_eq!(
            machine_id_twin(c, p, "web2"),
            Some(("aaaa".into(), "template".into()))
        );
        // 3008's layout, and an empty machine-id never matches.
        let (cache, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (c, p) = (cache.path(), pki.path());
        for id in ["a", "b", "e1", "e2"] {
            accept(p, id);
        }
        newer(c, "a", "cafe");
        newer(c, "b", "cafe");
        newer(c, "e1", "");
        newer(c, "e2", "");
        assert_eq!(
            machine_id_twin(c, p, "b"),
            Some(("cafe".into(), "a".into()))
        );
        assert_eq!(machine_id_twin(c, p, "e1"), None);
        let e = twin_error("web2", "cafe", "a");
        assert!(e.contains("machine-id cafe, the same as minion a"), "{e}");
    }
}
