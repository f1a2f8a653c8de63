"""One exception type for failures the user can act on; the CLI prints it as one line."""


class TowerliteError(Exception):
    """A failure with a message that says what went wrong and what to do about it."""
