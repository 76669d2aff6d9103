"""driver/capture.py: the backend protocol and choice, without a live ring."""
import inspect
from pathlib import Path

import pytest

from flowprobe.config import load_config_text
from flowprobe.driver.afpacket import Ring
from flowprobe.driver.afxdp import XskRing
from flowprobe.driver.capture import (CaptureRing, linktype_of, open_ring,
                                      rings_per_interface)
from flowprobe.errors import CaptureSetupError

METHODS = ("next_block", "release_block", "set_filter", "stats", "close")


@pytest.mark.parametrize("cls", [Ring, XskRing])
def test_backend_has_every_protocol_method(cls):
    """Ring and XskRing define each CaptureRing method with its parameters."""
    for name in METHODS:
        want = list(inspect.signature(getattr(CaptureRing, name)).parameters)
        assert list(inspect.signature(getattr(cls, name)).parameters) == want, name


def test_linktype_of_loopback_and_missing_interface():
    """Loopback delivers Ethernet framing; a missing interface is named."""
    assert linktype_of("lo") == 1
    with pytest.raises(CaptureSetupError, match="fpnosuch0: no such interface"):
        linktype_of("fpnosuch0")


def test_afxdp_reader_without_a_queue_is_a_setup_error():
    """With afxdp, readers follow RX queues: one past the last is refused."""
    cfg = load_config_text("capture:\n  backend: afxdp\n", "t")
    queues = rings_per_interface(cfg, "lo", workers=7)
    assert queues == len(list(Path("/sys/class/net/lo/queues").glob("rx-*")))
    with pytest.raises(CaptureSetupError, match="has no queue"):
        open_ring(cfg, "lo", queues)
