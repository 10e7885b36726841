"""Job-config text: parsing with the line of every field, and errors that name file:line and field.

Errors are :class:`ConfigError` and name the place (``file:line``, or the ``--set`` item that
put the value there), the field (``model.layer[3].dense.output_dim``) and the problem.
"""
from __future__ import annotations

import codecs
import io
import os
import re
import stat
from dataclasses import dataclass, field

from google.protobuf import text_format

from ..layers.base import conf_layer_types
from ..proto import JobConf

#: Job configs larger than this are refused unread: a real one is a few kilobytes, and the
#: limit keeps ``nnkit show /dev/zero``-like mistakes from reading until memory runs out.
MAX_CONFIG_BYTES = 16 * 2**20


class ConfigError(ValueError):
    """A job config that cannot be used; the message names the place, the field and the problem.

    Attributes:
        location: ``file:line``, ``file``, or the ``--set key=value`` item responsible.
        field: the dotted field path, e.g. ``model.layer[2].dense.output_dim`` ('' for the job).
        problem: the bare message.
    """

    def __init__(self, location: str, field: str, problem: str) -> None:
        self.location, self.field, self.problem = location, field, problem
        super().__init__(f"{location}: {field + ': ' if field else ''}{problem}")


# A path to a value in a JobConf: ((field name, index), ...); index 0 for singular fields.
FieldPath = tuple[tuple[str, int], ...]


@dataclass
class Origins:
    """Where each field of a job came from: a line of a file, or a ``--set`` item."""

    source: str                                  # the file (or "<string>", "<checkpoint ...>")
    lines: dict[FieldPath, int] = field(default_factory=dict)
    overrides: dict[FieldPath, str] = field(default_factory=dict)

    def locate(self, path: FieldPath) -> str:
        """The most precise origin of ``path``: itself, else its nearest ancestor, else the file."""
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            if prefix in self.overrides:
                return self.overrides[prefix]
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}"
        return self.source


@dataclass(frozen=True)
class Where:
    """A position in the job being converted: makes errors that point at the right line."""

    origins: Origins
    path: FieldPath = ()
    label: str = ""

    def child(self, name: str, index: int | None = None) -> "Where":
        """The field ``name`` (element ``index`` of a repeated field) below this position."""
        label = f"{self.label}.{name}" if self.label else name
        if index is not None:
            label += f"[{index}]"
        return Where(self.origins, self.path + ((name, index or 0),), label)

    def error(self, problem: str, field_name: str | None = None) -> ConfigError:
        """A ConfigError at this position (or at its field ``field_name``)."""
        where = self.child(field_name) if field_name else self
        return ConfigError(self.origins.locate(where.path), where.label, problem)


# ============================================================================ reading files
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular_file(path: str | os.PathLike, what: str = "file") -> io.BufferedReader:
    """Opens ``path`` for reading in binary mode if it is a regular file; ConfigError otherwise.

    FIFOs, devices, sockets and directories are refused before opening (``os.stat``), since
    reading them may block forever (a FIFO) or never end (``/dev/zero``). The open itself
    uses ``O_NONBLOCK``, and the opened descriptor is checked again, so a file swapped for a
    FIFO between the two steps cannot block either. ``what`` names the file in messages
    ("job config", "checkpoint").
    """
    shown = os.fspath(path)
    try:
        kind = _not_regular(os.stat(shown).st_mode)
        if kind is None:
            fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            kind = _not_regular(os.fstat(fd).st_mode)
            if kind is None:
                os.set_blocking(fd, True)  # no effect on a regular file's reads; plain again
                return os.fdopen(fd, "rb")
            os.close(fd)
    except OSError as e:
        raise ConfigError(shown, "", f"cannot read the {what}: {e.strerror or e}") from None
    raise ConfigError(shown, "", f"cannot read the {what}: it is {kind}, not a regular file")


def decode_config(data: bytes, source: str) -> str:
    """Config bytes as text: UTF-8 (a leading byte-order mark is dropped); ConfigError naming
    the line and byte offset of the first byte that is not UTF-8."""
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")  # not "utf-8-sig": its offsets omit the mark
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise ConfigError(f"{source}:{line}", "", f"not UTF-8 text: byte 0x{data[offset]:02x} "
                          f"at byte offset {offset} ({e.reason})") from None


def read_config_file(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The text of a job config file: a regular file of at most ``max_bytes``, UTF-8.

    Raises ConfigError naming the file for anything else (missing, unreadable, not a regular
    file, too large, not UTF-8: then with the line and byte offset).
    """
    shown = os.fspath(path)
    with open_regular_file(shown, "job config") as f:
        try:
            data = f.read(max_bytes + 1)  # one byte more tells a file that grew past the limit
        except OSError as e:
            raise ConfigError(shown, "", f"cannot read the job config: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ConfigError(shown, "", f"the job config is larger than {max_bytes} bytes: "
                          "not a job config")
    return decode_config(data, shown)


# ====================================================================== text and locations
_TOKEN = re.compile(r"""\s+|\#[^\n]*|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[\w.+-]+|.""")


def _field_lines(text: str) -> dict[FieldPath, int]:
    """The line (1-based) of every field in a text-format message, keyed by field path.

    ``text_format`` keeps no locations, so this walks the (already validated) text again.
    Elements of repeated fields are numbered in order, ``[a, b]`` lists included.
    """
    tokens: list[tuple[str, int]] = []
    line = 1
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if not tok.isspace() and not tok.startswith("#"):
            tokens.append((tok, line))
        line += tok.count("\n")
    lines: dict[FieldPath, int] = {}
    pos = 0

    def peek() -> str:
        return tokens[pos][0] if pos < len(tokens) else ""

    def value(path: FieldPath, tok_line: int) -> None:
        """Consumes one value (scalar, adjacent strings, or a message) of the field at ``path``."""
        nonlocal pos
        lines.setdefault(path, tok_line)
        if peek() in ("{", "<"):
            close = "}" if peek() == "{" else ">"
            pos += 1
            body(path, close)
            pos += 1
        else:
            is_string = peek()[:1] in "\"'"
            pos += 1
            while is_string and peek()[:1] in ("\"", "'"):
                pos += 1

    def body(path: FieldPath, close: str) -> None:
        nonlocal pos
        counts: dict[str, int] = {}
        while pos < len(tokens) and peek() != close:
            name, name_line = tokens[pos]
            pos += 1
            if name == "[":  # an extension or Any type name: [a.b.c]
                parts = []
                while peek() not in ("]", ""):
                    parts.append(peek())
                    pos += 1
                pos += 1
                name = "".join(parts)
            if peek() == ":":
                pos += 1
            if peek() == "[":  # a list: each element is one index of the repeated field
                pos += 1
                while peek() not in ("]", ""):
                    if peek() == ",":
                        pos += 1
                        continue
                    index = counts.get(name, 0)
                    value(path + ((name, index),), tokens[pos][1])
                    counts[name] = index + 1
                pos += 1
            else:
                index = counts.get(name, 0)
                value(path + ((name, index),), name_line)
                counts[name] = index + 1
            if peek() in (";", ","):
                pos += 1

    try:
        body((), "")
    except IndexError:  # unreachable for text that parsed; keep what was found
        pass
    return lines


_PARSE_PREFIX = re.compile(r"^\d+:\d+ : (?:'[^\n]*?': )?")
_NO_FIELD = re.compile(r'Message type "nnkit\.(\w+)" has no field named "([^"]+)"')
_NO_ENUM_VALUE = re.compile(r'Enum type "(nnkit\.[\w.]+)" has no value named (\S+?)\.?$')


def parse_error_message(error: text_format.ParseError) -> str:
    """A ParseError's message without its ``line:col :`` prefix, with field suggestions."""
    message = _PARSE_PREFIX.sub("", str(error))
    missing = _NO_FIELD.search(message)
    if missing:
        type_name, name = missing.groups()
        descriptor = JobConf.DESCRIPTOR.file.message_types_by_name.get(type_name)
        fields = [f.name for f in descriptor.fields] if descriptor else []
        if type_name == "LayerConf":
            kinds = ", ".join(conf_layer_types())
            return f"unknown layer type or field {name!r}; layer types: {kinds}; other fields: name"
        return f"unknown field {name!r} in {type_name}; its fields: {', '.join(fields)}"
    bad_value = _NO_ENUM_VALUE.search(message)
    if bad_value:
        enum_name, value = bad_value.groups()
        enum = JobConf.DESCRIPTOR.file.pool.FindEnumTypeByName(enum_name)
        return f"unknown value {value!r}; valid: {', '.join(v.name for v in enum.values)}"
    return message


def parse_job(text: str, source: str = "<string>") -> tuple[JobConf, Origins]:
    """Parses text format into a JobConf; syntax errors become ConfigErrors with file:line:col."""
    job = JobConf()
    try:
        text_format.Parse(text, job)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        location = f"{source}:{line}:{column}" if line is not None else source
        raise ConfigError(location, "", parse_error_message(e)) from None
    return job, Origins(source, _field_lines(text))

