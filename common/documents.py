"""serpens/v1 documents from text: bounded before they are parsed (issue 11 §5).

A document (an SFC or a Node config; YAML, or JSON when it starts with `{`) is checked in
three cheap passes before any Python object is built from it:

* its size (InputLimits.spec_bytes), a length comparison;
* for YAML, the parser's event stream (libyaml's when PyYAML has it): an anchor or alias
  anywhere is refused (an alias bomb of 500 bytes expands to gigabytes once composed), and
  mappings and lists nested deeper than InputLimits.depth are refused (the composer and the
  validators recurse; Python's recursion limit would end them with a RecursionError);
* for JSON, a scan of its brackets outside strings bounds the nesting the same way (the json
  module recurses too).

Refusals are SpecError naming where in the document the problem starts, e.g.
`spec.nfs.fw.config: YAML anchors and aliases are not accepted (line 7)`.
"""
from __future__ import annotations

import json
import re

import yaml

from .limits import LIMITS, InputLimits

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A JSON string followed by a colon (a key), any other string, or a structural character.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"\s*:|"(?:[^"\\]|\\.)*"|[\[\]{},]')


class SpecError(ValueError):
    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


def load_document(text: str, limits: InputLimits = LIMITS):
    """The document in `text` as plain data (dicts, lists, scalars), within `limits`."""
    is_json = check_text(text, limits.spec_bytes, limits)
    try:
        if is_json:
            return json.loads(text)
        return yaml.load(text, Loader=_YAML_LOADER)
    except (ValueError, yaml.YAMLError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError("spec", f"not valid YAML or JSON: {e}") from None


def check_text(text: str, size_limit: int, limits: InputLimits = LIMITS) -> bool:
    """The passes before parsing (size, then aliases and depth), for any text of serpens/v1
    documents (YAML streams of several too, as serpensctl apply reads); True if it is JSON."""
    check_size(text, "spec", size_limit)
    is_json = text.lstrip().startswith("{")
    try:
        if is_json:
            _check_json_depth(text, limits.depth)
        else:
            _check_yaml_events(text, limits.depth)
    except (ValueError, yaml.YAMLError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError("spec", f"not valid YAML or JSON: {e}") from None
    return is_json


def check_size(text: str, field_path: str, limit: int) -> None:
    """SpecError if `text` is more than `limit` bytes in UTF-8."""
    # A character is at least one byte: a long text is refused without encoding it.
    size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise SpecError(field_path, f"at most {limit} bytes, got {size}")


class _Frame:
    """An open mapping or list while walking a document, for the path of its children."""
    __slots__ = ("path", "mapping", "key", "awaiting_key", "index")

    def __init__(self, path: str, mapping: bool):
        self.path, self.mapping = path, mapping
        self.key, self.awaiting_key, self.index = None, True, 0

    def child(self) -> str:
        if not self.mapping:
            return f"{self.path}[{self.index}]"
        if self.awaiting_key:
            return self.path or "spec"   # a key: the problem is in this mapping
        return f"{self.path}.{self.key}" if self.path else str(self.key)

    def done(self, key=None) -> None:
        """A child node ended (for a mapping: its key, then its value)."""
        if not self.mapping:
            self.index += 1
        elif self.awaiting_key:
            self.key, self.awaiting_key = key, False
        else:
            self.awaiting_key = True


def _path(frames: list) -> str:
    return frames[-1].child() if frames else "spec"


def _check_yaml_events(text: str, max_depth: int) -> None:
    frames: list[_Frame] = []
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, (yaml.CollectionEndEvent)):
            frames.pop()
            if frames:
                frames[-1].done("?")
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue  # stream and document boundaries
        where = _path(frames)
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            raise SpecError(where, "YAML anchors and aliases are not accepted "
                            f"(line {event.start_mark.line + 1})")
        if isinstance(event, yaml.CollectionStartEvent):
            if len(frames) >= max_depth:
                raise SpecError(where, f"nested deeper than {max_depth} levels "
                                f"(line {event.start_mark.line + 1})")
            frames.append(_Frame("" if not frames else where, isinstance(
                event, yaml.MappingStartEvent)))
        elif frames:
            frames[-1].done(event.value)


def _check_json_depth(text: str, max_depth: int) -> None:
    frames: list[_Frame] = []
    for token in _JSON_TOKEN.finditer(text):
        t = token.group()
        if t in "{[":
            if len(frames) >= max_depth:
                raise SpecError(_path(frames), f"nested deeper than {max_depth} levels")
            frames.append(_Frame(frames[-1].child() if frames else "", t == "{"))
        elif t in "}]":
            if not frames:
                return  # unbalanced: json.loads says where
            frames.pop()
        elif not frames:
            continue
        elif t == ",":
            if not frames[-1].mapping:
                frames[-1].index += 1
        elif t.endswith(":") and frames[-1].mapping:
            raw = t[:t.rindex('"') + 1]
            try:
                frames[-1].key = json.loads(raw)
            except ValueError:
                frames[-1].key = raw
            frames[-1].awaiting_key = False
