"""QLARA_UVLOOP: which event loop the commands run on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from qlara_events import cli
from qlara_events.config import ConfigError, Settings


class TestUvloopSetting:
    """Parsing of QLARA_UVLOOP."""

    def test_off_by_default(self) -> None:
        """With nothing set the commands run on the standard loop (uvloop has not measured faster yet)."""
        assert Settings.from_env({}).uvloop is False

    @pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("off", False), ("true", True)])
    def test_explicit_values(self, raw: str, expected: bool) -> None:
        """The usual spellings of true and false are read."""
        assert Settings.from_env({"QLARA_UVLOOP": raw}).uvloop is expected

    def test_rejects_other_values(self) -> None:
        """Anything else is a configuration error naming the variable."""
        with pytest.raises(ConfigError, match="QLARA_UVLOOP"):
            Settings.from_env({"QLARA_UVLOOP": "fast"})


class TestCommandLoop:
    """The loop a command gets from the CLI's helpers."""

    @pytest.mark.parametrize(("raw", "name", "kind"), [("true", "uvloop", uvloop.Loop),
                                                        ("false", "asyncio", asyncio.BaseEventLoop)])
    def test_new_event_loop_follows_the_setting(self, raw: str, name: str, kind: type) -> None:
        """uvloop's loop when on, the standard one when off, and its name is what the start-up log says."""
        loop = cli.new_event_loop(Settings.from_env({"QLARA_UVLOOP": raw}))
        try:
            assert isinstance(loop, kind)
            assert not isinstance(loop, uvloop.Loop) or raw == "true"
            assert cli.loop_name(loop) == name
        finally:
            loop.close()

    @pytest.mark.parametrize(("raw", "name"), [("true", "uvloop"), ("false", "asyncio")])
    def test_operator_commands_run_on_that_loop(self, raw: str, name: str) -> None:
        """The one-shot commands' runner (migrate, accounts, ...) runs its coroutine on the chosen loop."""
        async def which() -> str:
            return cli.loop_name(asyncio.get_running_loop())

        assert cli._run(Settings.from_env({"QLARA_UVLOOP": raw}), which()) == name
