"""``--set key=value`` overrides: a dotted field path, set in the parsed job in place."""
from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..proto import JobConf
from .text import ConfigError, FieldPath, Origins, parse_error_message

_SEGMENT = re.compile(r"(\w+)(?:\[([^\]]+)\])?")


def apply_override(job: JobConf, item: str, origins: Origins | None = None) -> None:
    """Applies one ``key=value`` (``run.steps=50``, ``model.layer[conv1].convolution.nb_filter=16``).

    ``key`` is a dotted field path; repeated messages take an index or, for layers, a name in
    brackets. ``value`` is text-format: numbers, enum names, strings (quotes optional),
    ``[a, b]`` for repeated fields (which are replaced). Raises ConfigError naming the item.
    """
    label = f"--set {item}"
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(label, "", "expected key=value, e.g. run.steps=100")
    msg: Message = job
    path: FieldPath = ()
    segments = key.strip().split(".")
    for depth, segment in enumerate(segments):
        m = _SEGMENT.fullmatch(segment)
        if m is None:
            raise ConfigError(label, key, f"cannot read {segment!r}: use name or name[index]")
        name, index = m.groups()
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:
            raise ConfigError(label, key, f"{type(msg).__name__} has no field {name!r}; its "
                              f"fields: {', '.join(f.name for f in msg.DESCRIPTOR.fields)}")
        oneof = fd.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) not in (None, name):
            raise ConfigError(label, key, f"this layer is a {msg.WhichOneof(oneof.name)} layer, "
                              f"not {name}")
        last = depth == len(segments) - 1
        if last:
            if index is not None:
                raise ConfigError(label, key, "give the whole list, e.g. name=[1, 2], not one element")
            if fd.message_type is not None:
                raise ConfigError(label, key, f"{name} is a block: set its fields ({key}.FIELD=...)")
            _merge_value(msg, fd, value.strip(), label, key)
            if origins is not None:
                count = len(getattr(msg, name)) if fd.is_repeated else 1
                for i in range(max(count, 1)):
                    origins.overrides[path + ((name, i),)] = label
            return
        if fd.message_type is None:
            raise ConfigError(label, key, f"{name} is a value, not a block")
        if fd.is_repeated:
            elements = getattr(msg, name)
            i = _element_index(elements, index, label, key, name)
            msg, path = elements[i], path + ((name, i),)
        else:
            if index is not None:
                raise ConfigError(label, key, f"{name} is not repeated: drop [{index}]")
            msg, path = getattr(msg, name), path + ((name, 0),)


def _element_index(elements: Any, index: str | None, label: str, key: str, name: str) -> int:
    """The position of ``name[index]`` among ``elements``: an int, or an element's ``name``."""
    if index is None:
        raise ConfigError(label, key, f"{name} is repeated: pick one, e.g. {name}[0]")
    if re.fullmatch(r"-?\d+", index):
        i = int(index)
        if not -len(elements) <= i < len(elements):
            raise ConfigError(label, key, f"{name}[{i}] does not exist ({len(elements)} given)")
        return i % len(elements)
    for i, element in enumerate(elements):
        if "name" in element.DESCRIPTOR.fields_by_name and element.name == index:
            return i
    raise ConfigError(label, key, f"no {name} is named {index!r}")


def _merge_value(msg: Message, fd: FieldDescriptor, value: str, label: str, key: str) -> None:
    """Sets field ``fd`` of ``msg`` from the text ``value`` (text-format syntax)."""
    if fd.is_repeated and value.replace(" ", "") == "[]":
        msg.ClearField(fd.name)
        return
    if fd.type == FieldDescriptor.TYPE_STRING:
        items = value[1:-1].split(",") if fd.is_repeated and value.startswith("[") else [value]
        quoted = [v.strip() if v.strip()[:1] in "\"'" else json.dumps(v.strip(), ensure_ascii=False)
                  for v in items]
        value = f"[{', '.join(quoted)}]" if fd.is_repeated else quoted[0]
    elif fd.is_repeated and not value.startswith("["):
        value = f"[{value}]"
    backup = type(msg)()
    backup.CopyFrom(msg)
    msg.ClearField(fd.name)
    try:
        text_format.Merge(f"{fd.name}: {value}", msg)
    except text_format.ParseError as e:
        msg.CopyFrom(backup)
        raise ConfigError(label, key, parse_error_message(e)) from None

