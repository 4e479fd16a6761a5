"""A link's status is decided in one place (engine/status.py): the runtime switch
wins over the config's `enabled`, and an unknown link is a crmsync error."""

from __future__ import annotations

import pytest

from crmsync.config.loader import load_config_text
from crmsync.config.models import Config
from crmsync.engine.status import effective_enabled, enabled_links, require_link
from crmsync.errors import CrmsyncError, UnknownLink

TEXT = """\
state: sqlite:///state.db
systems:
  a: {connector: sql, url: "sqlite:///a.db", objects: {t: {table: t, key: id, updated_at: u}}}
  b: {connector: sql, url: "sqlite:///b.db", objects: {t: {table: t, key: id, updated_at: u}}}
links:
  on: {source: a.t, target: b.t, fields: [{source: x, target: x}]}
  off: {source: a.t, target: b.t, enabled: false, fields: [{source: y, target: y}]}
"""


@pytest.fixture
def config() -> Config:
    return load_config_text(TEXT, env={})[0]


def test_the_switch_wins_over_the_config(config: Config) -> None:
    on, off = config.links["on"], config.links["off"]
    assert effective_enabled(on, None) and not effective_enabled(off, None)
    assert not effective_enabled(on, False) and effective_enabled(off, True)
    assert enabled_links(config, {}) == ["on"]
    assert enabled_links(config, {"on": False, "off": True}) == ["off"]


def test_an_unknown_link_is_a_crmsync_error(config: Config) -> None:
    require_link(config, None)
    require_link(config, "on")
    with pytest.raises(UnknownLink) as info:
        require_link(config, "nope")
    assert isinstance(info.value, CrmsyncError) and not isinstance(info.value, KeyError)
    assert info.value.user_message == "no link named 'nope' (links: on, off)"
    assert info.value.name == "nope"
