"""Turning a library's exception into the tail of a one-line :class:`UserError` message."""


def brief(err: BaseException, limit: int = 200) -> str:
    """The exception's message on one line, whitespace collapsed, at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
