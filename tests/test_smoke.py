from __future__ import annotations

import bridge

from .conftest import ServerProc


def test_lab_lists_null_and_zero(lab: ServerProc) -> None:
    with bridge.connect(lab.url) as host:
        names = {d.name: d.kind for d in host.devices()}
        assert names["null"] == "node" and names["zero"] == "node"
        with host.open("zero") as z:
            assert z.read(16) == bytes(16)
