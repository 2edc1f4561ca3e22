from shared.providers import installation_id, parse_resource_name, resource_name


def test_resource_names_carry_the_installation_and_only_its_own_parse():
    ours, theirs = installation_id("secret-of-ours"), installation_id("secret-of-theirs")
    assert ours != theirs and len(ours) == 8 and ours == installation_id("secret-of-ours")
    assert "secret" not in ours
    job = "7b1f8a52-3c1e-4f0e-9a57-0e2f1d7c9b11"
    name = resource_name(ours, job, 2)
    assert len(name) <= 64  # Lambda's limit on instance and SSH key names
    assert parse_resource_name(name, ours) == (job, 2)
    assert parse_resource_name(name, theirs) is None
    assert parse_resource_name(f"tunefleet-{job}-2", ours) is None  # an older, unscoped name: not ours to end
    assert parse_resource_name(f"tunefleet-{ours}-x", ours) is None
