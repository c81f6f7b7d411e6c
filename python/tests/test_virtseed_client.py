"""
virtseed_client: how a provider's listing carries a host that could not be listed, and what
the front ends make of it (integration/hypervisor_down.rs runs them on real masters).
"""

from saltext.virtseed.utils import virtseed_client as vc

DOWN = "provider kvm-via-ssh: host 127.0.0.1 (qemu+ssh://127.0.0.1:1/system) cannot be reached: refused"


def test_a_listings_error_is_a_string_beside_its_entries():
    listing = {"web1": {"id": "u1", "state": "running"}, "Error": DOWN}
    assert vc.listing_error(listing) == DOWN
    assert vc.without_error(listing) == {"web1": {"id": "u1", "state": "running"}}


def test_a_vm_called_error_is_an_entry_not_an_error():
    listing = {"Error": {"id": "u2", "state": "running"}}
    assert vc.listing_error(listing) is None
    assert vc.without_error(listing) == listing


def test_nothing_listed_but_the_error():
    assert vc.without_error({"Error": DOWN}) == {}
    assert vc.listing_error({}) is None
    assert vc.listing_error(None) is None
    assert vc.without_error(None) == {}


def test_a_partial_listing_is_no_failed_call():
    # `salt-run cloud.query` exits 0 on it, as salt-cloud -Q and Salt's runner do...
    assert not vc.has_error({"kvm": {"libvirt": {"web1": {}}}, "kvm-via-ssh": {"libvirt": {"Error": DOWN}}})
    # ...and non-zero when the sidecar could not answer at all, or a named VM failed.
    assert vc.has_error({"Error": "the virtseed sidecar 'virtseed' does not answer"})
    assert vc.has_error({"web1": {"Error": "no VM named 'web1'"}})


def test_merged_listings_keep_each_sidecars_error():
    a = {"kvm": {"libvirt": {"web1": {"state": "running"}}}}
    b = {"kvm-via-ssh": {"libvirt": {"Error": DOWN}}}
    assert vc.merge([a, b]) == {**a, **b}


def test_a_group_of_sidecars_is_one_setting_in_order():
    # `virtseed_sidecar: [a, b]` (a sidecar beside each master, any of which serves): the
    # front ends carry it as one string and try its members in this order.
    assert vc._group(["virtseed", " virtseed-b "]) == "virtseed,virtseed-b"
    assert vc._group("virtseed") == "virtseed"
    assert vc.members("virtseed,virtseed-b") == ["virtseed", "virtseed-b"]
    assert vc.members("virtseed") == ["virtseed"]
    assert vc.members(" a , ,b ") == ["a", "b"]
    opts = {"virtseed_sidecar": ["virtseed-b", "virtseed"], "conf_file": "/nonexistent/master"}
    assert vc.default_sidecar(opts) == "virtseed-b,virtseed"
