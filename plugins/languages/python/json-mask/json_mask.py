"""json-mask, in Python: replaces the values of chosen keys in JSON text
messages, at any depth, with a mask. Non-JSON text, binary and control
messages pass unchanged.

Built into a component by componentize-py against the wsgate:plugin
`message-filter` world; `wit_world` is the package componentize-py generates
from wit/ at build time.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

_settings = {"fields": frozenset(), "mask": "***"}


def _config_error(field: str, message: str) -> Err:
    return Err(types.ConfigError(field=field, message=message))


def _mask(value) -> bool:
    """Mask matching keys in `value` in place; True when anything changed."""
    changed = False
    if isinstance(value, list):
        for item in value:
            changed = _mask(item) or changed
    elif isinstance(value, dict):
        for key in value:
            if key in _settings["fields"]:
                value[key] = _settings["mask"]
                changed = True
            else:
                changed = _mask(value[key]) or changed
    return changed


class Lifecycle(exports.Lifecycle):
    def configure(self, config: str) -> None:
        try:
            parsed = json.loads(config)
        except ValueError as error:
            raise _config_error("", f"the configuration is not JSON: {error}")
        if not isinstance(parsed, dict):
            raise _config_error("", "the configuration must be a table")
        for key in parsed:
            if key not in ("fields", "mask"):
                raise _config_error(f"/{key}", "unknown field; expected `fields` or `mask`")
        fields = parsed.get("fields")
        if (
            not isinstance(fields, list)
            or not fields
            or not all(isinstance(field, str) for field in fields)
        ):
            raise _config_error("/fields", "required: a non-empty list of key names")
        mask = parsed.get("mask", "***")
        if not isinstance(mask, str):
            raise _config_error("/mask", "the mask must be a string")
        _settings["fields"] = frozenset(fields)
        _settings["mask"] = mask
        log.write(types.LogLevel.DEBUG, f"json-mask (python) masks {len(fields)} keys")


class Message(exports.Message):
    def on_message(
        self, direction: types.Direction, message: types.Message
    ) -> types.MessageVerdict:
        if not isinstance(message, types.Message_Text):
            return types.MessageVerdict_Forward()
        try:
            document = json.loads(message.value)
        except ValueError:
            return types.MessageVerdict_Forward()
        if not _mask(document):
            return types.MessageVerdict_Forward()
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        return types.MessageVerdict_Replace([types.Message_Text(text)])
