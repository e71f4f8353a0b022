"""Generate docs/api.md, the API reference, from the comments of proto/unimeter/v1/*.proto.

Run ``python -m tools.api_reference`` (or ``make docs``); ``--check`` exits 1 when docs/api.md is
stale, which the test suite uses so the reference never drifts from the contract.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
OUTPUT = REPO / "docs" / "api.md"

# SourceCodeInfo path tags (descriptor.proto field numbers).
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED = 2, 3
_ENUM_VALUE, _METHOD = 2, 2

_TYPES = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string",
    12: "bytes", 13: "uint32", 17: "sint32", 18: "sint64",
}  # fmt: skip


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        files = sorted(
            str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "unimeter" / "v1").glob("*.proto")
        )
        code = protoc.main(
            ["protoc", f"-I{PROTO_ROOT}", "--include_source_info", f"--descriptor_set_out={out}", *files]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comments(f: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): " ".join(loc.leading_comments.split()) for loc in f.source_code_info.location}


def _type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    name = field.type_name.rsplit(".", 1)[-1] if field.type_name else _TYPES.get(field.type, "?")
    if field.label == field.LABEL_REPEATED:
        return f"repeated {name}"
    return name


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# API reference (`unimeter.v1`)",
        "",
        "Generated from the comments of `proto/unimeter/v1/*.proto` by `python -m tools.api_reference`;",
        "do not edit by hand. Errors and their details: docs/semantics.md (Errors).",
        "",
    ]
    for f in _descriptors().file:
        docs = _comments(f)
        out += [f"## {f.name}", ""]
        for i, svc in enumerate(f.service):
            out += [f"### service {svc.name}", "", docs.get((_SERVICE, i), ""), ""]
            for j, m in enumerate(svc.method):
                stream = "stream " if m.server_streaming else ""
                request, response = m.input_type.rsplit(".", 1)[-1], m.output_type.rsplit(".", 1)[-1]
                sig = f"{m.name}({request}) → {stream}{response}"
                out.append(f"- `{sig}`: {docs.get((_SERVICE, i, _METHOD, j), '')}")
            out.append("")
        for i, msg in enumerate(f.message_type):
            out += [f"### message {msg.name}", "", docs.get((_MESSAGE, i), ""), ""]
            if msg.field:
                out += ["| field | type | meaning |", "|---|---|---|"]
                for j, fld in enumerate(msg.field):
                    typ = _type_name(fld)
                    nested = {n.name: n for n in msg.nested_type}
                    entry = nested.get(fld.type_name.rsplit(".", 1)[-1])
                    if entry is not None and entry.options.map_entry:
                        typ = f"map<{_type_name(entry.field[0])}, {_type_name(entry.field[1])}>"
                    out.append(f"| `{fld.name}` | `{typ}` | {docs.get((_MESSAGE, i, _FIELD, j), '')} |")
                out.append("")
        for i, enum in enumerate(f.enum_type):
            out += [f"### enum {enum.name}", "", docs.get((_ENUM, i), ""), ""]
            out += ["| value | number | meaning |", "|---|---|---|"]
            for j, v in enumerate(enum.value):
                out.append(f"| `{v.name}` | {v.number} | {docs.get((_ENUM, i, _ENUM_VALUE, j), '')} |")
            out.append("")
    return "\n".join(line.rstrip() for line in out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/api.md, or with ``--check`` report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
