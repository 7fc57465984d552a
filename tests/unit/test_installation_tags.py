"""The installation id reaches every tag, label, token and name a launch gives a cloud."""

from __future__ import annotations

from providers.aws import launch as aws
from providers.base import TAG_INSTALLATION, TAG_OWNER, LaunchRequest, request_tags
from providers.gcp import launch as gcp


def _request(installation: str) -> LaunchRequest:
    return LaunchRequest(
        request_id=f"gpubroker-{installation}-alloc-1",
        region="us-east-1",
        zone="us-east-1a",
        instance_type="g5.xlarge",
        nodes=2,
        installation=installation,
    )


def test_every_cloud_name_differs_between_installations() -> None:
    a, b = _request("0123456789abcdef"), _request("fedcba9876543210")
    for req in (a, b):
        tags = request_tags(req, 1)
        assert tags[TAG_INSTALLATION] == req.installation and tags[TAG_OWNER] == "gpubroker"
        labels = gcp.labels_for(tags)
        assert labels[gcp.label_key(TAG_INSTALLATION)] == req.installation
        group = {t["Key"]: t["Value"] for t in aws.group_tags(req)}
        assert group[TAG_INSTALLATION] == req.installation
        name = {t["Key"]: t["Value"] for t in aws.node_tags(req, 0)}["Name"]
        assert req.installation in name
    assert aws.client_token(a.request_id, 0) != aws.client_token(b.request_id, 0)
    assert gcp.instance_name(a.request_id, 0) != gcp.instance_name(b.request_id, 0)
    assert aws.group_name(a.request_id) != aws.group_name(b.request_id)


def test_a_request_without_installation_adds_no_tag() -> None:
    assert TAG_INSTALLATION not in request_tags(_request(""), 0)
