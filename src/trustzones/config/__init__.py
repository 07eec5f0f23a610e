"""Zones as code: load and validate ``trustzones.yaml``.

Example::

    from trustzones.config import Config

    config = Config.from_yaml("trustzones.yaml")   # raises ConfigError listing every problem
    print(config.zones["payments"].classification)
"""

from trustzones.config._config import CONFIG_FILENAME, Config, Issue
from trustzones.config.schema import SchemaField, field_map

__all__ = ["CONFIG_FILENAME", "Config", "Issue", "SchemaField", "field_map"]
