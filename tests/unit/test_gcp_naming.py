"""GCE labels, instance names, request ids and the N1 shape names."""

from __future__ import annotations

import re
import uuid

from hypothesis import given
from hypothesis import strategies as st

from providers.gcp.families import family_of, n1_shape, network_gbps, split_shape
from providers.gcp.launch import instance_name, label_key, label_value
from providers.gcp.operations import request_uuid

_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@given(st.text(max_size=200))
def test_labels_are_always_valid_gce_labels(text):
    assert _VALUE.match(label_value(text))
    assert _KEY.match(label_key(text or "x"))


def test_valid_labels_are_kept_and_changed_ones_stay_distinct():
    assert label_value("team-a_1") == "team-a_1"
    assert label_key("gpubroker-owner") == "gpubroker-owner"
    assert label_value("A") != label_value("a")
    assert label_value("x" * 64) != label_value("x" * 65)
    assert len(label_value("x" * 300)) <= 63


def test_names_and_request_ids_are_deterministic_and_valid():
    assert instance_name("r-1", 3) == instance_name("r-1", 3)
    assert instance_name("r-1", 3) != instance_name("r-2", 3)
    assert _NAME.match(instance_name("Alloc:42/Try.1", 12))
    assert request_uuid("r-1", 0) == request_uuid("r-1", 0) != request_uuid("r-1", 1)
    assert uuid.UUID(request_uuid("r-1", 0)).version == 5


def test_n1_shapes_round_trip_and_families_resolve():
    shape = n1_shape("n1-standard-16", 2, "nvidia-tesla-t4")
    assert split_shape(shape) == ("n1-standard-16", "nvidia-tesla-t4", 2)
    assert split_shape("a3-highgpu-8g") == ("a3-highgpu-8g", None, 0)
    assert family_of("a3-megagpu-8g").host_sku == "A3Plus"
    assert family_of("e2-standard-4") is None
    assert network_gbps("n1-standard-8", 8) == 16 and network_gbps("n1-standard-64", 64) == 32
