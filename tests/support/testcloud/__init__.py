"""A test cloud of real hosts: each cloud instance boots as a host of its own.

An instance launched on moto's EC2 or the fake GCE (``tests/support/gce_server.py``)
becomes a host: a network namespace on one bridge with the instance's private IP, its
own ``/tmp``, ``/dev/shm``, ``/root`` (an overlay), host name and PIDs, a fake
instance-metadata service at 169.254.169.254:80 inside it that answers live from the
cloud backend, and the instance's user data (EC2 ``UserData``, GCE ``startup-script``)
run unmodified as root with an environment the test gives, as a machine image would.
Tests in the root namespace reach every host over the bridge. Needs root, ``ip netns``,
``unshare``, ``nsenter``, ``setpriv`` and overlayfs; nothing leaves the machine: the
root namespace forwards no packet, and 169.254.169.254 exists only inside the hosts.

Use the ``test_cloud`` fixture (import it into the test module, as with moto's)::

    from tests.support.testcloud.fixtures import test_cloud  # noqa: F401

    def test_x(test_cloud, moto_aws):
        test_cloud.env["GPUBROKER_RAY_ARGS"] = "--num-cpus=1"   # before booting
        test_cloud.watch_ec2(moto_aws.url, "us-east-1")          # boots RUNNING instances
        host = test_cloud.wait_for_host(instance_id)
        host.private_ip, host.log(), host.log_path, host.exit_code, host.pids()
        host.run(["cat", "/tmp/x"])          # a command inside the host (CompletedProcess)
        host.halt()                          # power off: every process, netns, veth
        host.halted                          # True once that is done (or a watcher did it)

or build one yourself::

    with TestCloud(subnets=("10.0.0.0/8", "172.31.0.0/16"), env=default_env(X="1")) as cloud:
        host = cloud.boot(instance_id, private_ip, user_data,
                          metadata=Ec2Metadata(endpoint_url, region, instance_id))
        host = cloud.boot(name, network_ip, script, metadata=GceMetadata(gce, zone, name))
        cloud.watch_ec2(endpoint_url, region)   # per region; boot once, halt when gone
        cloud.watch_gce(gce)                    # FakeGce (its state) or GceRest(url, project)
        cloud.hosts                             # hosts up now
    # on exit (exceptions too; idempotent): every host halted, bridge and state removed

Subnets: the bridge holds the last usable address of each subnet (``cloud.gateways``),
which is every host's default route. Moto 5.2 gives an instance launched without a
subnet a random 10.x.y.z address, and one in a default-VPC subnet an address of
172.31.0.0/16; the fake GCE gives 10.128.0.0/20 addresses. Hence the default subnets;
an address outside them is refused. Clouds on one machine take turns (a lock in
``/run/gbt``, waited for up to ``lock_timeout`` s), since they share these subnets; a
cloud refuses subnets that overlap a route of the machine (real traffic must not be
diverted).

Names: cloud id ``gbt`` + 5 hex; bridge ``<id>br``, veths ``<id>v<n>``, namespaces
``<id>-<n>``, state in ``/run/gbt/<id>`` with the owner's pid. ``cleanup_stale()``
removes what a crashed run left (owner dead) and never what a live run owns. If the test
process dies, its hosts die with it (parent-death signal); their namespaces and links
stay until ``cleanup_stale()``, which every ``TestCloud.start()`` calls.

Metadata (``metadata.py``): EC2 IMDSv2 only, tags only with ``InstanceMetadataTags``
enabled (as EC2 does); GCE with ``Metadata-Flavor: Google`` and
``metadata.google.internal`` in the host's ``/etc/hosts``.
"""

from tests.support.testcloud.cloud import DEFAULT_SUBNETS, Host, TestCloud, default_env, wait_for
from tests.support.testcloud.metadata import Ec2Metadata, GceMetadata, GceRest
from tests.support.testcloud.network import cleanup_stale, unavailable_reason

__all__ = [
    "DEFAULT_SUBNETS",
    "Ec2Metadata",
    "GceMetadata",
    "GceRest",
    "Host",
    "TestCloud",
    "cleanup_stale",
    "default_env",
    "unavailable_reason",
    "wait_for",
]
