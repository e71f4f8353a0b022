"""docs/api.md is generated from the .proto comments, is current, and every element is documented."""

from __future__ import annotations

from tools.api_reference import main, render


def test_api_reference_is_current() -> None:
    assert main(["--check"]) == 0, "run `make docs` to regenerate docs/api.md"


def test_every_service_method_message_field_and_enum_value_is_documented() -> None:
    text = render()
    undocumented = [
        line
        for line in text.splitlines()
        if line.endswith("|  |") or line.endswith("`: ") or line.endswith("`:")
    ]
    assert undocumented == []
    for heading in [line for line in text.splitlines() if line.startswith("### ")]:
        section = text.split(heading + "\n\n", 1)[1]
        assert section.split("\n", 1)[0].strip(), f"{heading} has no description"
