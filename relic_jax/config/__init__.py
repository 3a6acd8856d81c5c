"""Configuration: the shared base config, logical-axis rules, the declared string choices
(`config.choices`) and validation."""

from relic_jax.config.base import DEFAULT_RULES, MESH_AXES, get_base_config, parent_config
from relic_jax.config.validation import ConfigError, head_dim_split, validate

__all__ = ["DEFAULT_RULES", "MESH_AXES", "ConfigError", "get_base_config", "head_dim_split",
           "parent_config", "validate"]
