"""trustzones: trust zones for streaming data.

Classify records, keep each classification in its own isolated zone, move data down only
through declared sanitising flows, and record every decision in a tamper-evident audit log.

Example::

    from trustzones import Config, Workspace

    with Workspace(Config.from_yaml("trustzones.yaml")) as ws:
        ws.produce("analytics.clickstream", [b'{...}'], principal="clickstream-service")
"""

from trustzones.config import Config
from trustzones.errors import TrustzonesError
from trustzones.zone import Workspace

__all__ = ["Config", "TrustzonesError", "Workspace"]
