"""ModelConfig in and out: protobuf text (config.pbtxt) and Triton's JSON form."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any, cast

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ..errors import RepositoryPollError
from .errors import ConfigError
from .model_config_pb2 import ModelConfig

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)

# protobuf < 5.26 spelled the option including_default_value_fields; >= 5.26 (and every
# version naiad supports) always_print_fields_with_no_presence.
_PRINT_DEFAULTS_OPTION = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence"
    in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields"
)


def parse_model_config(text: str, *, model_name: str) -> ModelConfig:
    """Parse config.pbtxt text into a :class:`ModelConfig`.

    Unknown fields, bad enum names, repeated singular fields and syntax errors raise
    :class:`ConfigError` naming the model and giving the parser's line and column.
    """
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ConfigError(_describe_parse_error(err, model_name)) from err
    return config


def _describe_parse_error(err: text_format.ParseError, model_name: str) -> str:
    line, column = err.GetLine(), err.GetColumn()
    detail = str(err)
    prefix = f"{line}:{column} : "
    if line is not None and detail.startswith(prefix):
        detail = detail[len(prefix) :]
    detail = detail.replace('"naiad.inference.', '"inference.')
    where = f" at line {line}, column {column}" if line is not None else ""
    return f"failed to parse the model configuration of model '{model_name}'{where}: {detail}"


def model_config_from_json(
    data: str | bytes | Mapping[str, Any], *, model_name: str | None = None
) -> ModelConfig:
    """Build a :class:`ModelConfig` from Triton's JSON form (the load API's ``config``).

    Accepts a JSON string or an already-decoded object; field names may be the proto names
    (``max_batch_size``) or their lowerCamelCase JSON names; 64-bit (and other) integers may be
    given as numbers or as strings (``{"max_batch_size": "16"}``); enums by name or number.
    Unknown fields are errors. Any problem raises :class:`ConfigError`.
    """
    what = f"model '{model_name}'" if model_name else "the model"
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise ConfigError(f"failed to parse the JSON configuration of {what}: {err}") from err
        except RecursionError as err:  # nested deeper than Python's stack: Triton's answer
            raise RepositoryPollError() from err
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the JSON configuration of {what} must be an object, got {type(data).__name__}"
        )
    config = ModelConfig()
    try:
        json_format.ParseDict(dict(data), config, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as err:
        detail = str(err).replace('"naiad.inference.', '"inference.')
        raise ConfigError(f"invalid JSON configuration for {what}: {detail}") from err
    except RecursionError as err:
        raise RepositoryPollError() from err
    return config


def model_config_to_json(config: ModelConfig) -> dict[str, Any]:
    """``config`` as Triton's ``GET /v2/models/{m}/config`` JSON object.

    Proto field names, enums as names, every field without presence printed even when it
    holds its default (scalars, ``[]`` for lists, ``{}`` for maps; unset sub-messages and oneof
    members stay absent), and every int64/uint64 field turned back into a JSON number (plain
    protobuf JSON quotes them). Map keys stay strings, as JSON requires.
    """
    options: dict[str, Any] = {
        "preserving_proto_field_name": True,
        _PRINT_DEFAULTS_OPTION: True,
    }
    as_dict = json_format.MessageToDict(config, **options)
    return _triton_json(as_dict, cast(Descriptor, config.DESCRIPTOR))


def _triton_json(obj: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """A message's JSON dict with fields in declaration order (as Triton's C++ printer puts
    them) and quoted 64-bit integers turned back into numbers."""
    result: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name in obj:
            result[field.name] = _field_json(obj[field.name], field)
    return result


def _field_json(value: Any, field: FieldDescriptor) -> Any:
    if _is_map(field):
        value_field = _message_type(field).fields_by_name["value"]
        return {key: _scalar_or_message(item, value_field) for key, item in value.items()}
    if isinstance(value, list):
        return [_scalar_or_message(item, field) for item in value]
    return _scalar_or_message(value, field)


def _scalar_or_message(value: Any, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _triton_json(value, _message_type(field))
    if field.type in _INT64_TYPES:
        return int(value)
    return value


def _message_type(field: FieldDescriptor) -> Descriptor:
    message_type = field.message_type
    assert message_type is not None, field.full_name
    return message_type


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def message_to_text(message: Message) -> str:
    """``message`` in protobuf text format (what a config.pbtxt holds)."""
    return text_format.MessageToString(message)
