"""Turning a library's exception into the tail of a one-line :class:`UserError` message."""


def brief(err: BaseException, limit: int = 200) -> str:
    """The exception's message on one line, whitespace collapsed, at most ``limit`` characters."""
    return shorten(str(err), limit) or type(err).__name__


def shorten(text: str, limit: int = 200) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
