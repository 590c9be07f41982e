"""Plugins (reference §8): operator-chosen code run at fixed points of an LLM call.

The pipeline's plugin stages (`odock.pipeline.stages.plugins`) call the engine; plugin authors subclass `Plugin`
and return `PluginResult`s. See `odock.plugins.base` for the phases and `odock.plugins.config` for the file.
"""

from odock.plugins.base import PHASES, Plugin, PluginResult, PluginSetup, PluginView
from odock.plugins.config import PluginConfigError, PluginsConfig, parse_plugins_config, read_plugins_file
from odock.plugins.engine import Plugins, plugin_env
from odock.plugins.storage import PluginStorage, StorageAccessDenied, StorageBackends

__all__ = [
    "PHASES",
    "Plugin",
    "PluginConfigError",
    "PluginResult",
    "PluginSetup",
    "PluginStorage",
    "PluginView",
    "Plugins",
    "PluginsConfig",
    "StorageAccessDenied",
    "StorageBackends",
    "parse_plugins_config",
    "plugin_env",
    "read_plugins_file",
]
