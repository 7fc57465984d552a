"""AWS quotas (moto has no EC2 Service Quotas: absent, then answered by injection) and check."""

from __future__ import annotations

from typing import Any

import pytest

from broker.domain import Pricing
from providers.aws.quotas import QUOTA_CODES, nodes_that_fit
from providers.base import LaunchRequest, ProviderCheck
from tests.support.aws_faults import Answer, FailCalls, inject

LIMITS = {"L-417A185B": 768.0, "L-DB2E81BA": 64.0, "L-7212CCBC": 384.0, "L-3819A6DF": 32.0}


def _quota(params: dict[str, Any]) -> dict[str, Any]:
    code = params["QuotaCode"]
    return {
        "Quota": {
            "ServiceCode": params["ServiceCode"],
            "QuotaCode": code,
            "QuotaName": next(q.title for q in QUOTA_CODES if q.code == code),
            "Value": LIMITS[code],
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }
    }


def test_quotas_the_endpoint_lacks_yield_none_and_say_so(aws_provider: Any) -> None:
    assert list(aws_provider.quotas(["us-east-1"])) == []
    assert any("L-417A185B" in note and "us-east-1" in note for note in aws_provider.notes)


def test_unreadable_quotas_never_crash(aws_provider: Any) -> None:
    fault = FailCalls("GetServiceQuota", code="AccessDeniedException", service="service-quotas")
    with inject(aws_provider, fault):
        assert list(aws_provider.quotas(["us-west-2"])) == []
    assert any("us-west-2" in note and "AccessDenied" in note for note in aws_provider.notes)


def test_quotas_become_vcpu_records_with_usage(aws_provider: Any) -> None:
    aws_provider.launch(
        LaunchRequest(
            request_id="q-1",
            region="us-east-1",
            zone="us-east-1a",
            instance_type="p5.48xlarge",
            nodes=1,
        )
    )
    with inject(aws_provider, Answer("GetServiceQuota", _quota, service="service-quotas")):
        records = {r.name: r for r in aws_provider.quotas(["us-east-1"])}
    assert set(records) == set(LIMITS)
    on_demand_p = records["L-417A185B"]
    assert (on_demand_p.scope, on_demand_p.unit, on_demand_p.pricing) == (
        "P",
        "vcpus",
        Pricing.ON_DEMAND,
    )
    assert on_demand_p.limit == 768.0 and on_demand_p.used == 192.0
    assert nodes_that_fit(on_demand_p, 192) == 3
    assert records["L-3819A6DF"].used == 0.0 and records["L-3819A6DF"].pricing is Pricing.SPOT


def test_regions_default_to_every_enabled_region(
    aws_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.config import load_settings
    from providers.aws import create

    monkeypatch.delenv("GPUBROKER_AWS_REGIONS")
    regions = create(load_settings()).regions()
    assert {"us-east-1", "us-west-2", "eu-west-1"} <= set(regions)
    assert regions == sorted(regions)


def test_check_reports_source_and_endpoint(aws_provider: Any, moto_aws: Any) -> None:
    quick = aws_provider.check()
    assert quick == ProviderCheck("aws", True, "env", moto_aws.url, "region us-east-1")
    verified = aws_provider.check(probe=True)
    assert verified.usable and "work" in verified.detail
    assert set(verified.to_dict()) == {"provider", "usable", "credentials", "endpoint", "detail"}


def test_check_without_credentials_is_not_usable(
    aws_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from providers.aws import create

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = create(aws_settings).check(probe=True)
    assert not result.usable and result.credentials is None
    assert "no credentials" in result.detail
