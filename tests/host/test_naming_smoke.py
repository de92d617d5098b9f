from xfrmid.naming import resolve


def test_ipsec0_maps_to_16384():
    assert resolve("ipsec0").if_id == 16384
