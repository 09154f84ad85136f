"""Failures as one line for users; the full text stays available for debug logs.

Two sources: an exception that stops a command (:func:`error_line`, what ``fedwon`` prints
before exiting) and a client's error reply (:func:`failure_line`). Flower's simulation engine
puts the whole remote traceback (often thousands of lines) into an error reply's reason; a
user wants the exception that started it, once per failure, and the traceback only with
``-v`` / at debug level.
"""

from __future__ import annotations

import re

# "ValueError: msg" / "torch.OutOfMemoryError: msg" at the start of a traceback line
_EXCEPTION_LINE = re.compile(
    r"^\s*(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))(?::\s?(?P<msg>.*))?$"
)
# Flower's error reason: "<class 'module.Type'>:<'message'>"
_FLOWER_REASON = re.compile(r"^<class '(?P<type>[^']+)'>:<'(?P<msg>.*)'>$", re.DOTALL)
# Wrappers engines put around the exception a ClientApp raised
_WRAPPERS = ("ClientAppException", "RayTaskError", "RayActorError", "TaskError")
_CLIENT_APP_MESSAGE = "occurred. Message:"


def _short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _is_wrapper(type_name: str) -> bool:
    return any(w in type_name for w in _WRAPPERS)


def _squash(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_line(reason: str, limit: int = 300) -> str:
    """The root exception of a client's error reason, as ``Type: message`` on one line.

    The first non-wrapper exception line of a traceback is the root cause (Python prints
    chained exceptions cause first); without a traceback, Flower's ``<class 'T'>:<'msg'>``
    wording is unpacked, and ``ClientAppException``'s "occurred. Message:" preamble dropped.
    """
    for line in reason.splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match and not _is_wrapper(match["type"]):
            message = (match["msg"] or "").strip().strip("'")
            return _squash(f"{_short(match['type'])}: {message}".rstrip(": "), limit)
    text = reason.strip()
    wrapped = _FLOWER_REASON.match(text)
    if wrapped:
        text = wrapped["msg"].strip()
        if not _is_wrapper(wrapped["type"]):
            text = f"{_short(wrapped['type'])}: {text}"
    if _CLIENT_APP_MESSAGE in text:
        text = text.split(_CLIENT_APP_MESSAGE, 1)[1]
    return _squash(text, limit) or "no reason given"


def error_line(err: BaseException, *, with_type: bool = True) -> str:
    """An exception that ends a command, on one line. fedwon's own errors already say what is
    wrong (``with_type=False``); an unexpected one is named by its type too."""
    message = " ".join(str(err).split())
    if not with_type:
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
