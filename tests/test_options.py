"""Declared options (assetfs/options.py, config.py): parsing, refusals, and the README's
option table naming exactly the core's options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from assetfs import errors, options
from assetfs.config import CORE_OPTIONS, MountConfig
from assetfs.drivers.base import POLL_INTERVAL
from assetfs.drivers.memory import MemoryDriver

README = Path(__file__).parent.parent / "README.md"


def config(**raw: str) -> MountConfig:
    return MountConfig("memory://x/", Path("/mnt"), MemoryDriver, raw)


def test_values_are_parsed_with_their_defaults() -> None:
    made = config(cache_max="512M", write_back_delay="0", passthrough="no", ro="")
    assert made.cache_max == 512 << 20 and made.write_back_delay == 0.0
    assert not made.passthrough and made.read_only
    assert made.timeout == 30.0 and made["umount_timeout"] == 30.0
    assert config().driver_options == {}
    assert config(latency="0.5").driver_options == {"latency": "0.5"}


@pytest.mark.parametrize("raw, named", [
    ({"nosuchopt": "1"}, "nosuchopt"), ({"timeout": "soon"}, "timeout=soon"),
    ({"cache_max": "lots"}, "cache_max=lots"), ({"passthrough": "maybe"}, "passthrough"),
    ({"events": "sometimes"}, "events=sometimes"), ({"timeout": "-3"}, "timeout=-3"),
])
def test_unknown_or_malformed_options_are_refused_by_name(raw: dict[str, str],
                                                          named: str) -> None:
    with pytest.raises(errors.BadOption, match=re.escape(named)):
        MountConfig("memory://x/", Path("/mnt"), MemoryDriver, raw)


def test_prefix_options_take_every_name_with_the_prefix() -> None:
    declared = (options.Option("Ice.*", options.text, None, "an Ice property"),)
    assert options.parse({"Ice.Trace.Network": "2"}, declared) == {"Ice.Trace.Network": "2"}
    with pytest.raises(errors.BadOption):
        options.parse({"Iced": "1"}, declared)


def test_the_readme_option_table_names_exactly_the_core_options() -> None:
    table = README.read_text().split("### Options (`-o`)", 1)[1].split("\n\n", 2)[1]
    named = {re.match(r"\| `([a-z_]+)", row).group(1)  # type: ignore[union-attr]
             for row in table.splitlines()[2:]}
    named |= {m for row in table.splitlines() for m in re.findall(r"`([a-z_]+)=`", row)}
    assert named == {o.name for o in (*CORE_OPTIONS, POLL_INTERVAL)}
