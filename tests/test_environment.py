"""The facts run.json carries about each host and its storage."""

from __future__ import annotations

from pathlib import Path

from trio_bench.environment import HOST_KEYS, host_facts, mount_of

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
30 22 0:40 / /mnt/shared rw,noatime shared:2 - nfs4 filer:/export/a rw,vers=4.2,rsize=1048576
31 30 0:41 / /mnt/shared/scratch\\040space rw shared:3 - tmpfs none rw,size=1024k
32 22 0:42 / /mnt/over rw - xfs /dev/sdb rw
33 22 0:43 / /mnt/over rw - zfs pool/over rw,xattr
"""


def test_the_mount_of_a_path_is_the_longest_matching_mount_point(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    nfs = mount_of("/mnt/shared/triobench/run1", str(info))
    assert nfs == {
        "fs_type": "nfs4",
        "mount_point": "/mnt/shared",
        "mount_source": "filer:/export/a",
        "mount_options": "rw,noatime,vers=4.2,rsize=1048576",
    }
    assert mount_of("/mnt/shared/scratch space/x", str(info))["fs_type"] == "tmpfs"
    assert mount_of("/mnt/sharedother", str(info))["fs_type"] == "ext4"  # not a prefix match
    assert mount_of("/mnt/over/data", str(info))["fs_type"] == "zfs"  # the later mount on top
    assert mount_of("/x", str(tmp_path / "missing")) == {}


def test_host_facts_name_the_machine() -> None:
    facts = host_facts()
    assert set(facts) <= set(HOST_KEYS)
    assert {"hostname", "cpus", "kernel", "python", "triobench"} <= set(facts)
    assert int(facts["cpus"]) >= 1
