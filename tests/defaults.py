"""The loop's and the sink's configuration as the service builds it from settings left at their
defaults, with a test's own changes: the defaults live in `Settings` only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from connector.omnisend.sink import SinkConfig
from connector.pipeline import PipelineConfig
from connector.settings import Settings

DEFAULT_SETTINGS = Settings.model_construct()  # every field at its default, nothing read


def sink_config(**changes: Any) -> SinkConfig:
    return replace(SinkConfig.from_settings(DEFAULT_SETTINGS), **changes)


def pipeline_config(topic: str, **changes: Any) -> PipelineConfig:
    return replace(PipelineConfig.from_settings(DEFAULT_SETTINGS, topic), **changes)
